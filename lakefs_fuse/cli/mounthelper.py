"""``mount.fuse.lakefs``: what mount(8) runs for ``mount -t fuse.lakefs`` and /etc/fstab entries.

    mount -t fuse.lakefs /var/lib/lakefs/lake /mnt/lake -o dataset,metrics=9100
    # /etc/fstab
    /var/lib/lakefs/lake   /mnt/lake  fuse.lakefs  _netdev,dataset,metrics=9100                    0 0
    meta:10.0.0.1:7200,10.0.0.2:7200,10.0.0.3:7200  /mnt/lake  fuse.lakefs  _netdev,secret_file=/etc/lf/secret  0 0

SOURCE is an embedded lake's data directory, ``meta:HOST:PORT,...`` for a cluster lake, or
``lakefs`` for the default lake; /proc/mounts then shows the lake as the mount's source (the data
directory's absolute path, or ``meta:...``). Options are the ``lakefs-fuse mount`` options with
``_`` or ``-`` (``cache_size=20G``, ``no_disk_cache``), plus ``ro`` (= ``read_only``) and ``rw``;
the kernel's flags (``noexec``, ``nosuid``, ``nodev``, ``noatime``, ``sync``... and their
opposites) are passed to the kernel; mount(8)'s and systemd's own options (``defaults``,
``default_permissions`` -- always on --, ``_netdev``, ``nofail``, ``noauto``, ``user``,
``x-systemd.*``...) are ignored. An unknown option stops the mount with one line naming it. The
mount is live when this returns 0; like every mount helper it prints nothing on success.

``mount -o remount,ro MNT`` and ``remount,rw`` switch a live mount (other options are ignored on
a remount: they cannot change while it is mounted); a dataset mount stays read-only.

``lakefs-fuse install-mount-helper`` links it into /sbin, where mount(8) looks for it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from ..config import split_list
from ..errors import UserError

#: The first lines of a helper this package installed (another file of that name is left alone).
INSTALLED_MARKER = "# installed by lakefs-fuse"


def install(directory: Path) -> Path:
    """Write ``DIRECTORY/mount.fuse.lakefs`` (atomically), running this interpreter's helper."""
    path = directory / "mount.fuse.lakefs"
    if path.exists() and INSTALLED_MARKER not in path.read_text(errors="replace"):
        raise UserError(f"{path} exists and was not installed by lakefs-fuse; leaving it")
    text = f'#!/bin/sh\n{INSTALLED_MARKER}\nexec {sys.executable} -m lakefs_fuse.cli.mounthelper "$@"\n'
    try:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text)
        tmp.chmod(0o755)
        os.replace(tmp, path)
    except OSError as exc:
        raise UserError(f"cannot write {path}: {exc.strerror or exc}") from None
    return path


def uninstall(directory: Path) -> Path:
    """Remove ``DIRECTORY/mount.fuse.lakefs`` if this package installed it."""
    path = directory / "mount.fuse.lakefs"
    if path.exists() and INSTALLED_MARKER not in path.read_text(errors="replace"):
        raise UserError(f"{path} was not installed by lakefs-fuse; leaving it")
    path.unlink(missing_ok=True)
    return path


#: Options mount(8) and systemd use for themselves, or that do not apply (default_permissions is
#: always on; libfuse knows no relatime or lazytime): ignored.
GENERIC = {"defaults", "auto", "noauto", "user", "nouser", "users", "owner", "group", "_netdev",
           "nofail", "relatime", "norelatime", "strictatime", "diratime", "nodiratime", "lazytime",
           "nolazytime", "silent", "loud", "nosymfollow", "symfollow", "default_permissions"}
GENERIC_PREFIXES = ("x-", "comment=", "fsname=", "subtype=", "user_id=", "group_id=")
#: The kernel's own mount flags: handed to it (``lakefs-fuse mount -o FLAG``).
KERNEL_FLAGS = {"dev", "nodev", "suid", "nosuid", "exec", "noexec", "atime", "noatime", "sync", "async",
                "dirsync"}


class HelperError(Exception):
    pass


def translate(argv: list[str]) -> list[str] | None:
    """mount(8)'s helper arguments -> ``lakefs-fuse mount`` arguments (None: -f, a fake mount)."""
    from click import Option

    from .lake_cmds import mount as mount_cmd

    positional, opts, fake = parse(argv)
    source, mountpoint = positional
    args = [mountpoint]
    if source.startswith("meta:"):
        args += ["--meta", source[len("meta:"):]]
    elif source not in ("lakefs", "default", "none"):
        args += ["--data", source]

    by_name: dict[str, Option] = {}
    for p in mount_cmd.params:
        if isinstance(p, Option) and not p.hidden and p.name not in ("foreground", "data_dir", "meta", "options"):
            for opt in p.opts:
                if opt.startswith("--"):
                    by_name[opt[2:].replace("-", "_")] = p
    read_only = False
    for opt in (o.strip() for o in opts):
        if not opt or opt in GENERIC or opt.startswith(GENERIC_PREFIXES):
            continue
        if opt in ("ro", "rw"):
            read_only = opt == "ro"  # the last one given wins, as with mount(8)
            continue
        if opt in KERNEL_FLAGS:
            args += ["-o", opt]
            continue
        key, eq, value = opt.partition("=")
        key = key.replace("-", "_")
        param = by_name.get(key)
        if param is None:
            raise HelperError(f"unknown mount option {opt!r} (lakefs-fuse mount --help lists them; "
                              "write cache_size=20G for --cache-size 20G)")
        flag = max(param.opts, key=len)
        if param.is_flag:
            if eq:
                raise HelperError(f"mount option {key} takes no value")
            args.append(flag)
        else:
            if not eq:
                raise HelperError(f"mount option {key} needs a value ({key}=...)")
            args += [flag, value]
    if read_only:
        args.append("--read-only")
    return None if fake else args


def parse(argv: list[str]) -> tuple[list[str], list[str], bool]:
    """mount(8)'s helper arguments -> ([SOURCE, MOUNTPOINT], options, fake)."""
    positional, opts, fake = [], [], False
    i = 0
    while i < len(argv):
        a = argv[i]
        if a == "-o":
            if i + 1 >= len(argv):
                raise HelperError("-o needs a value")
            opts += split_list(argv[i + 1])
            i += 2
            continue
        if a.startswith("-o"):
            opts += split_list(a[2:])
        elif a == "-f":
            fake = True
        elif a in ("-n", "-s", "-v"):
            pass  # no mtab / sloppy / verbose: nothing to do for us
        elif a.startswith("-"):
            raise HelperError(f"unknown argument {a}")
        else:
            positional.append(a)
        i += 1
    if len(positional) != 2:
        raise HelperError("usage: mount.fuse.lakefs SOURCE MOUNTPOINT [-o OPTIONS]")
    return positional, [o.strip() for o in opts], fake


def remount(argv: list[str]) -> None:
    """``-o remount,...``: only ro/rw can change on a live mount; the other options are ignored."""
    from ..mount import daemon

    positional, opts, fake = parse(argv)
    wanted = [o for o in opts if o in ("ro", "rw")]
    if fake or not wanted:
        return
    daemon.remount(Path(positional[1]), read_only=wanted[-1] == "ro")


def main() -> None:
    try:
        if "remount" in parse(sys.argv[1:])[1]:
            remount(sys.argv[1:])
            sys.exit(0)
        args = translate(sys.argv[1:])
    except (HelperError, UserError) as exc:
        print(f"mount.fuse.lakefs: {exc}", file=sys.stderr)
        sys.exit(1)
    if args is None:
        sys.exit(0)
    # A mount helper prints nothing on success; errors still reach stderr.
    res = subprocess.run([sys.executable, "-m", "lakefs_fuse.cli", "mount", *args], stdout=subprocess.DEVNULL)
    sys.exit(res.returncode)


if __name__ == "__main__":
    main()
