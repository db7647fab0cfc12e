"""What ``stat``, ``ls`` and ``status`` show, computed: a file's attributes and extents with each
chunk's EC profile and shard health, a directory's rows, a lake's status with every metadata
server's Raft view (role, indexes, lag, health).

A path is found either inside a lake (``--data DIR`` and a path within it: looked up in its
metadata) or through a running mount (:func:`open_path`): the innermost lakefs-fuse mount holding
it names, in the daemons' registry, the lake to open read-only beside the mount -- after an fsync
of a directory in the mount, so buffered writes are committed and the metadata shows them.

Health of a shard is what the chunk client's ``verify`` says (``ok``, ``missing``, ``corrupt``,
``unreachable``...); a chunk with more bad shards than parity cannot be read. Raft lag is the
leader's view of each follower (entries not yet acknowledged); a member the leader does not list
is compared by its applied index; without a leader every row says ``no leader``.

Imports ``mount`` (the mount table), ``lake``, ``meta`` (types) and the base layer.
"""

from __future__ import annotations

import os
import stat as st
from contextlib import AbstractAsyncContextManager
from pathlib import Path

from ..errors import LakeError, UserError
from ..lake import repair
from ..lake.lake import Lake
from ..meta.schema import ChunkRecord
from ..mount.mounttab import mount_containing, read_registry

#: File types by their ``st_mode`` bits, as ``stat --json`` names them.
KINDS = {st.S_IFREG: "file", st.S_IFDIR: "dir", st.S_IFLNK: "symlink", st.S_IFIFO: "fifo",
         st.S_IFSOCK: "socket", st.S_IFCHR: "chardev", st.S_IFBLK: "blockdev"}

#: A follower whose last acknowledgement is older than this many seconds is ``lagging``.
RAFT_ACK_FRESH_S = 2


def open_path(path: Path, data_dir: Path | None) -> tuple[AbstractAsyncContextManager[Lake], int]:
    """(the lake, read-only, to enter with ``async with`` in the caller's trio run; the inode
    number) of a path in a mount or, with ``data_dir``, a path inside that lake. An embedded lake
    is opened here (a refusal comes at once) and closed when the ``async with`` ends; a cluster
    lake is reached from inside it (``Lake.connect``)."""
    if data_dir is not None:
        lake = Lake.open(data_dir, read_only=True)
        ino = 1
        try:
            assert lake.sm is not None  # an embedded lake's metadata is its own
            for part in [p for p in str(path).split("/") if p and p != "."]:
                ino = lake.sm.lookup(ino, os.fsencode(part)).ino
        except LakeError as exc:
            lake.close()
            raise UserError(f"{path}: {str(exc) or os.strerror(exc.errno)} (in the lake in {data_dir})") from None
        return lake.closing(), ino
    p = Path(path).absolute()  # not resolved: stat of a link shows the link
    try:
        s = os.lstat(p)
    except OSError as exc:
        raise UserError(f"{path}: {exc.strerror}") from None
    best = mount_containing(str(p))
    if best is None:
        raise UserError(f"{path} is not inside a lakefs-fuse mount (give --data DIR and a path in the lake)")
    reg = read_registry(Path(best))
    if not reg:
        raise UserError(f"no running daemon is registered for {best}")
    # fsync of a directory in the mount commits every buffered write, so the read-only
    # view of the metadata opened next shows what the user just wrote.
    barrier = p if st.S_ISDIR(s.st_mode) else p.parent
    try:
        fd = os.open(barrier, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        raise UserError(f"{path}: cannot sync the mount: {exc.strerror}") from None
    if reg.get("meta"):  # a cluster lake: ask its metadata servers
        return Lake.connect(reg["meta"], Path(reg["secret_file"])), s.st_ino
    return Lake.open(Path(reg["data_dir"]), read_only=True).closing(), s.st_ino


async def file_info(lake: Lake, ino: int, *, shards: bool) -> dict:
    """An inode's attributes (times as ``*_ns`` integers) and EC profile; for a regular file also
    its extents, each with its chunk's profile and, with ``shards``, every shard's peer, address
    and health, and the file's overall ``health``."""
    inode = await lake.meta.getattr(ino)
    info = {"inode": ino, "type": KINDS.get(st.S_IFMT(inode.mode), "?"), "mode": f"{st.S_IMODE(inode.mode):04o}",
            "size": inode.size, "nlink": inode.nlink, "uid": inode.uid, "gid": inode.gid,
            "atime_ns": inode.atime_ns, "mtime_ns": inode.mtime_ns, "ctime_ns": inode.ctime_ns}
    # the profile new data is written with (user.lakefs.ec, inherited from the directory)
    k, m = inode.profile or (lake.config.ec_k, lake.config.ec_m)
    info["ec_profile"] = f"{k}+{m}" + ("" if inode.profile else " (lake default)")
    if not inode.is_reg:
        return info
    peers = {p.peer_id: p for p in lake.peer_records}
    extents = await lake.meta.extents(ino, 0, 1 << 62)
    chunk_ids = sorted({e.chunk_id for e in extents})
    health: dict[int, list[str]] = {}
    records: dict[int, ChunkRecord] = {}
    for cid in chunk_ids:
        try:
            records[cid] = await lake.meta.chunk(cid)
        except LakeError:
            continue
    if shards:
        for cid, record in records.items():
            health[cid] = await lake.chunks.verify(lake.layout_of(record))
    info["extents"] = []
    for e in extents:
        rec = records.get(e.chunk_id)
        item = {"file_offset": e.file_off, "length": e.length, "chunk": e.chunk_id, "chunk_offset": e.chunk_off}
        if rec:
            item["ec"] = f"{rec.k}+{rec.m}"
            item["chunk_length"] = rec.length
            if shards:
                item["shards"] = [{"index": i, "peer": pid,
                                   "address": lake.peer_address(peers[pid]) if pid in peers else "?",
                                   "health": health[e.chunk_id][i]} for i, pid in enumerate(rec.peers)]
        else:
            item["ec"] = "missing chunk record"
        info["extents"].append(item)
    info["chunks"] = len(chunk_ids)
    if shards:
        bad = sum(1 for cid in chunk_ids for h in health.get(cid, []) if h != "ok")
        info["health"] = "ok" if not bad else f"{bad} bad shard(s)"
        lost = [cid for cid in chunk_ids if cid in records and
                sum(1 for h in health[cid] if h != "ok") > records[cid].m]
        if lost:
            info["health"] += f"; {len(lost)} chunk(s) unreadable"
    return info


async def list_dir(lake: Lake, ino: int, *, shards: bool, path: Path | str) -> list[dict]:
    """One row per entry of the directory ``ino`` (``path`` names it in errors): its
    :func:`file_info` without the extents, plus ``name`` and ``ec`` (the chunks' profiles)."""
    if not (await lake.meta.getattr(ino)).is_dir:
        raise UserError(f"{path} is not a directory")
    rows = []
    after = 0
    while True:
        batch = await lake.meta.readdir(ino, after, 1000)
        if not batch:
            break
        for name, child, cookie in batch:
            info = await file_info(lake, child.ino, shards=shards)
            info["name"] = name.decode(errors="surrogateescape")
            info["ec"] = ",".join(sorted({e.get("ec", "") for e in info.get("extents", [])}))
            info.pop("extents", None)
            rows.append(info)
            after = cookie
    return rows


async def raft_status(service) -> list[dict]:
    """Every member's Raft view, one row each (by address): ask the given servers, then the
    members they name. ``service`` is a :class:`~..meta.remote.MetaService`."""
    seen = await service.call_each("status")
    for res in list(seen.values()):
        if isinstance(res, dict):
            for address in res.get("members", {}).values():
                if address not in service.addresses:
                    service.addresses.append(address)
    seen.update(await service.call_each("status"))
    rows, leader_last = [], None
    for res in seen.values():
        if isinstance(res, dict) and res.get("role") == "leader":
            leader_last = res
    for address, res in sorted(seen.items()):
        if not isinstance(res, dict):
            rows.append({"address": address, "health": res})
            continue
        row = {k: res.get(k) for k in ("id", "address", "role", "term", "leader", "commit_index", "last_applied",
                                       "last_index", "snapshot_index", "voters")}
        if leader_last is not None:
            follower = leader_last.get("followers", {}).get(str(res.get("id")))
            row["lag"] = 0 if res is leader_last else (
                follower["lag"] if follower else leader_last["last_index"] - res["last_applied"])
            fresh = res is leader_last or (follower and follower["last_ack_s"] < RAFT_ACK_FRESH_S)
            row["health"] = "ok" if fresh else "lagging"
        else:
            row["health"] = "no leader"
        rows.append(row)
    return rows


def has_leader(rows: list[dict]) -> bool:
    """Whether any row of :func:`raft_status` is the leader's."""
    return any(r.get("role") == "leader" for r in rows)


async def lake_status(lake: Lake) -> dict:
    """:func:`..lake.repair.status` (peers, degraded and unreadable chunks, space), and for a
    cluster lake every metadata server's Raft row under ``meta``."""
    info = await repair.status(lake)
    if lake.meta_addresses:
        info["meta"] = await raft_status(lake.meta.service)
    return info


def needs_attention(info: dict) -> bool:
    """A :func:`lake_status` that wants an operator: a peer that does not answer (down, or
    refusing our secret), or chunks below full redundancy."""
    return bool(any(not r.get("reachable") for r in info["peers"]) or info["degraded"] or info["unreadable"])
