"""Handlers of the namespace commands: names, inodes, attributes, extended attributes.

One function per command of :mod:`.commands` (mknod, symlink, link, unlink, rmdir, rename,
setattr, setxattr, removexattr, release), called by :meth:`~.state.StateMachine.apply` with the
command's fields by keyword and a :class:`~.txn.Txn` that becomes one RocksDB write batch if the
handler returns. A handler raises a :class:`~lakefs_fuse.errors.LakeError` (its errno is the
answer to the FUSE request) before anything is written, so a refused command changes nothing.
Handlers are deterministic -- the clock and the caller's uid/gid are fields of the command -- so
every Raft member that applies the same command gets the same state.

The POSIX rules that need the whole namespace live here (rename loops and RENAME_EXCHANGE, setgid
directories, link limits, an unlinked inode kept as an orphan until its last user releases it).
Permission checks are not made here: the kernel makes them (the mount always runs with
``default_permissions``), and the mount resolves what depends on the caller before it builds a
command (``Setattr``'s times, the owner of a new inode).

Imports: ``errors``, :mod:`.schema`, :mod:`.commands` (flags), :mod:`.txn`, :mod:`.data`.
"""

from __future__ import annotations

import stat as st
from typing import Any

from .. import errors as E
from . import schema as S
from .commands import RENAME_EXCHANGE, RENAME_NOREPLACE, XATTR_CREATE, XATTR_REPLACE, AttrChanges
from .data import truncate_extents
from .schema import Inode
from .txn import Txn, kind, touch

#: Longest name of a directory entry, in bytes.
NAME_MAX = 255
#: Largest extended attribute value, in bytes.
XATTR_SIZE_MAX = 65536
#: The extended attribute that sets a file's or directory's erasure-coding profile ("K+M").
EC_XATTR = b"user.lakefs.ec"


def _ec_text(ec: int) -> bytes:
    return b"%d+%d" % (ec >> 8, ec & 0xFF)


def check_name(name: bytes) -> None:
    if len(name) > NAME_MAX:
        raise E.NameTooLong()
    if not name or b"/" in name or name in (b".", b".."):
        raise E.Invalid(f"bad name {name!r}")


def mknod(txn: Txn, *, parent: int, name: bytes, mode: int, rdev: int, uid: int, gid: int,
          now: int) -> list[Any]:
    check_name(name)
    pdir = txn.dir(parent)
    if txn.dentry(parent, name) is not None:
        raise E.Exists()
    if kind(mode) not in (st.S_IFREG, st.S_IFDIR, st.S_IFIFO, st.S_IFSOCK, st.S_IFCHR, st.S_IFBLK):
        raise E.Invalid("unsupported file type")
    is_dir = st.S_ISDIR(mode)
    if pdir.mode & st.S_ISGID:  # BSD group semantics for setgid directories
        gid = pdir.gid
        if is_dir:
            mode |= st.S_ISGID
    ino = txn.next("ino")
    inode = Inode(ino, mode, 2 if is_dir else 1, uid, gid, 0, now, now, now,
                  rdev if kind(mode) in (st.S_IFCHR, st.S_IFBLK) else 0, parent if is_dir else 0)
    if pdir.ec and kind(mode) in (st.S_IFREG, st.S_IFDIR):  # a directory's EC profile is inherited
        inode.ec = pdir.ec
        txn.put(S.xattr_key(ino, EC_XATTR), _ec_text(pdir.ec))
    txn.put_inode(inode)
    txn.add_dentry(parent, name, ino, mode)
    if is_dir:
        pdir.nlink += 1
    touch(pdir, now)
    txn.put_inode(pdir)
    return [ino, inode.to_bytes()]


def symlink(txn: Txn, *, parent: int, name: bytes, target: bytes, uid: int, gid: int,
            now: int) -> list[Any]:
    check_name(name)
    if not target or len(target) > 4095:
        raise E.NameTooLong() if target else E.NotFound("empty symlink target")
    pdir = txn.dir(parent)
    if txn.dentry(parent, name) is not None:
        raise E.Exists()
    if pdir.mode & st.S_ISGID:
        gid = pdir.gid
    ino = txn.next("ino")
    inode = Inode(ino, st.S_IFLNK | 0o777, 1, uid, gid, len(target), now, now, now)
    txn.put_inode(inode)
    txn.put(S.symlink_key(ino), target)
    txn.add_dentry(parent, name, ino, inode.mode)
    touch(pdir, now)
    txn.put_inode(pdir)
    return [ino, inode.to_bytes()]


def link(txn: Txn, *, ino: int, parent: int, name: bytes, now: int) -> list[Any]:
    check_name(name)
    inode = txn.inode(ino)
    if inode.is_dir:
        raise E.NotPermitted("hard link to a directory")
    if inode.nlink == 0:
        raise E.NotFound("file was removed")
    if inode.nlink >= 65000:
        raise E.TooManyLinks()
    pdir = txn.dir(parent)
    if txn.dentry(parent, name) is not None:
        raise E.Exists()
    txn.add_dentry(parent, name, ino, inode.mode)
    inode.nlink += 1
    inode.ctime_ns = now
    txn.put_inode(inode)
    touch(pdir, now)
    txn.put_inode(pdir)
    return [ino, inode.to_bytes()]


def unlink(txn: Txn, *, parent: int, name: bytes, now: int) -> list[Any]:
    pdir = txn.dir(parent)
    entry = txn.dentry(parent, name)
    if entry is None:
        raise E.NotFound()
    inode = txn.inode(entry[0])
    if inode.is_dir:
        raise E.IsADir()
    txn.del_dentry(parent, name, entry)
    txn.drop_link(inode, now)
    touch(pdir, now)
    txn.put_inode(pdir)
    return [inode.ino, inode.nlink]


def rmdir(txn: Txn, *, parent: int, name: bytes, now: int) -> list[Any]:
    pdir = txn.dir(parent)
    entry = txn.dentry(parent, name)
    if entry is None:
        raise E.NotFound()
    inode = txn.inode(entry[0])
    if not inode.is_dir:
        raise E.NotADir()
    if not txn.is_empty_dir(inode.ino):
        raise E.NotEmpty()
    txn.del_dentry(parent, name, entry)
    txn.drop_link(inode, now)
    pdir.nlink -= 1
    touch(pdir, now)
    txn.put_inode(pdir)
    return [inode.ino, 0]


def _is_ancestor(txn: Txn, anc: int, ino: int) -> bool:
    """Is directory ``anc`` equal to ``ino`` or above it?"""
    seen = 0
    while True:
        if ino == anc:
            return True
        if ino == S.ROOT_INO or seen > 4096:
            return False
        ino = txn.inode(ino).parent
        seen += 1


def rename(txn: Txn, *, parent: int, name: bytes, newparent: int, newname: bytes, flags: int,
           now: int) -> list[Any]:
    """Returns [moved ino, replaced ino or 0, replaced nlink]."""
    if flags & ~(RENAME_NOREPLACE | RENAME_EXCHANGE) or flags == RENAME_NOREPLACE | RENAME_EXCHANGE:
        raise E.Invalid("bad rename flags")
    check_name(newname)
    src_dir = txn.dir(parent)
    dst_dir = src_dir if newparent == parent else txn.dir(newparent)
    src = txn.dentry(parent, name)
    if src is None:
        raise E.NotFound()
    dst = txn.dentry(newparent, newname)
    moved = txn.inode(src[0])
    if flags & RENAME_EXCHANGE:
        if dst is None:
            raise E.NotFound()
        other = txn.inode(dst[0])
        if moved.is_dir and _is_ancestor(txn, moved.ino, newparent):
            raise E.Invalid("cannot move a directory into itself")
        if other.is_dir and _is_ancestor(txn, other.ino, parent):
            raise E.Invalid("cannot move a directory into itself")
        txn.put(S.dentry_key(parent, name), S.pack([other.ino, kind(other.mode), src[2]]))
        txn.put(S.dentry_key(newparent, newname), S.pack([moved.ino, kind(moved.mode), dst[2]]))
        if parent != newparent:
            if moved.is_dir != other.is_dir:
                delta = 1 if moved.is_dir else -1
                src_dir.nlink -= delta
                dst_dir.nlink += delta
            if moved.is_dir:
                moved.parent = newparent
            if other.is_dir:
                other.parent = parent
        moved.ctime_ns = other.ctime_ns = now
        txn.put_inode(moved)
        txn.put_inode(other)
        touch(src_dir, now)
        touch(dst_dir, now)
        txn.put_inode(src_dir)
        if dst_dir is not src_dir:
            txn.put_inode(dst_dir)
        return [moved.ino, 0, 0]
    replaced, replaced_nlink = 0, 0
    if dst is not None:
        if flags & RENAME_NOREPLACE:
            raise E.Exists()
        if dst[0] == src[0]:
            return [moved.ino, 0, 0]  # two names of one inode: POSIX says do nothing
        target = txn.inode(dst[0])
        if moved.is_dir and not target.is_dir:
            raise E.NotADir()
        if not moved.is_dir and target.is_dir:
            raise E.IsADir()
        if target.is_dir and not txn.is_empty_dir(target.ino):
            raise E.NotEmpty()
    if moved.is_dir and newparent != parent and _is_ancestor(txn, moved.ino, newparent):
        raise E.Invalid("cannot move a directory into itself")
    if dst is not None:
        txn.del_dentry(newparent, newname, dst)
        txn.drop_link(target, now)
        if target.is_dir:
            dst_dir.nlink -= 1
        replaced, replaced_nlink = target.ino, target.nlink
    txn.del_dentry(parent, name, src)
    txn.add_dentry(newparent, newname, moved.ino, moved.mode)
    if moved.is_dir and newparent != parent:
        src_dir.nlink -= 1
        dst_dir.nlink += 1
        moved.parent = newparent
    moved.ctime_ns = now
    txn.put_inode(moved)
    touch(src_dir, now)
    touch(dst_dir, now)
    txn.put_inode(src_dir)
    if dst_dir is not src_dir:
        txn.put_inode(dst_dir)
    return [moved.ino, replaced, replaced_nlink]


def set_attr(txn: Txn, *, ino: int, changes: AttrChanges, now: int) -> bytes:
    """changes: any of mode, uid, gid, size, atime_ns, mtime_ns (values already resolved)."""
    inode = txn.inode(ino)
    if "mode" in changes:
        inode.mode = kind(inode.mode) | (changes["mode"] & 0o7777)
    if "uid" in changes:
        inode.uid = changes["uid"]
    if "gid" in changes:
        inode.gid = changes["gid"]
    if "size" in changes:
        size = changes["size"]
        if inode.is_dir:
            raise E.IsADir()
        if not inode.is_reg:
            raise E.Invalid("truncate of a special file")
        if size < 0:
            raise E.Invalid("negative size")
        if size < inode.size:
            txn.count_stored(inode)
            inode.stored -= truncate_extents(txn, ino, size, now)
        if size != inode.size:
            inode.mtime_ns = now
        inode.size = size
    if "atime_ns" in changes:
        inode.atime_ns = changes["atime_ns"]
    if "mtime_ns" in changes:
        inode.mtime_ns = changes["mtime_ns"]
    inode.ctime_ns = now
    txn.put_inode(inode)
    return inode.to_bytes()


def setxattr(txn: Txn, *, ino: int, name: bytes, value: bytes, flags: int, now: int) -> None:
    inode = txn.inode(ino)
    if not name or len(name) > 255:
        raise E.RangeError() if name else E.Invalid("empty xattr name")
    if len(value) > XATTR_SIZE_MAX:
        raise E.TooBig()
    key = S.xattr_key(ino, name)
    exists = txn.get(key) is not None
    if flags & XATTR_CREATE and exists:
        raise E.Exists()
    if flags & XATTR_REPLACE and not exists:
        raise E.NoData()
    if name == EC_XATTR:
        inode.ec = _parse_ec(txn, inode, value)
        value = _ec_text(inode.ec)
    txn.put(key, value)
    inode.ctime_ns = now
    txn.put_inode(inode)


def _parse_ec(txn: Txn, inode: Inode, value: bytes) -> int:
    """``user.lakefs.ec`` = "K+M": the profile new data is written with (1 <= K, K+M <= peers)."""
    if not (inode.is_dir or inode.is_reg):
        raise E.Invalid("an EC profile applies to files and directories")
    try:
        k, m = (int(x) for x in value.decode().strip().split("+"))
    except ValueError:
        raise E.Invalid(f"{EC_XATTR.decode()}: expected K+M, e.g. 6+3 or 1+2 (3 replicas)") from None
    peers = sum(1 for _ in txn.scan(S.PEER_PREFIX))
    if k < 1 or m < 1 or k + m > min(peers, 255):
        raise E.Invalid(f"{EC_XATTR.decode()}: {k}+{m} needs K >= 1, M >= 1 and K+M <= {peers} peers")
    return k << 8 | m


def removexattr(txn: Txn, *, ino: int, name: bytes, now: int) -> None:
    inode = txn.inode(ino)
    key = S.xattr_key(ino, name)
    if txn.get(key) is None:
        raise E.NoData()
    txn.delete(key)
    if name == EC_XATTR:
        inode.ec = 0  # back to the lake's default
    inode.ctime_ns = now
    txn.put_inode(inode)


def release(txn: Txn, *, ino: int, now: int) -> bool:
    """Free an orphan (nlink 0, no longer open anywhere): its extents, xattrs and inode."""
    if txn.get(S.orphan_key(ino)) is None:
        return False
    inode = txn.inode(ino)
    if inode.nlink > 0:
        txn.delete(S.orphan_key(ino))
        return False
    deltas: dict[int, int] = {}
    for key, value in list(txn.scan(S.extent_prefix(ino))):
        for ext in S.unpack_extents(value):
            deltas[ext.chunk_id] = deltas.get(ext.chunk_id, 0) - 1
        txn.delete(key)
    for key, _ in list(txn.scan(S.xattr_prefix(ino))):
        txn.delete(key)
    txn.delete(S.symlink_key(ino))
    txn.delete(S.inode_key(ino))
    txn.delete(S.orphan_key(ino))
    txn.chunk_refs(deltas, now)
    return True
