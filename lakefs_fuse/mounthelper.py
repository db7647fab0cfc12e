"""``mount.fuse.lakefs``: what mount(8) runs for ``mount -t fuse.lakefs`` and /etc/fstab entries.

    mount -t fuse.lakefs /var/lib/lakefs/lake /mnt/lake -o dataset,metrics=9100
    # /etc/fstab
    /var/lib/lakefs/lake   /mnt/lake  fuse.lakefs  _netdev,dataset,metrics=9100                    0 0
    meta:10.0.0.1:7200,10.0.0.2:7200,10.0.0.3:7200  /mnt/lake  fuse.lakefs  _netdev,secret_file=/etc/lakefs-fuse/secret  0 0

SOURCE is an embedded lake's data directory, ``meta:HOST:PORT,...`` for a cluster lake, or
``lakefs`` for the default lake. Options are the ``lakefs-fuse mount`` options with ``_`` or ``-``
(``cache_size=20G``, ``no_disk_cache``), plus ``ro`` (= ``read_only``); mount(8)'s generic options
(``defaults``, ``rw``, ``_netdev``, ``nofail``, ``noauto``, ``x-systemd.*``...) are ignored. An
unknown option stops the mount with one line naming it. The mount is live when this returns 0.

``lakefs-fuse install-mount-helper`` links it into /sbin, where mount(8) looks for it.
"""

from __future__ import annotations

import subprocess
import sys

#: Options mount(8) and systemd use for themselves; meaningless to the filesystem.
GENERIC = {"defaults", "rw", "auto", "noauto", "user", "nouser", "users", "owner", "group", "_netdev",
           "nofail", "dev", "nodev", "suid", "nosuid", "exec", "noexec", "atime", "noatime", "relatime",
           "norelatime", "strictatime", "diratime", "nodiratime", "async", "lazytime", "nolazytime",
           "silent", "loud", "nosymfollow"}
GENERIC_PREFIXES = ("x-", "comment=", "fsname=", "subtype=")


class HelperError(Exception):
    pass


def translate(argv: list[str]) -> list[str] | None:
    """mount(8)'s helper arguments -> ``lakefs-fuse mount`` arguments (None: -f, a fake mount)."""
    from click import Option

    from .cli import mount as mount_cmd

    positional, opts, fake = [], [], False
    i = 0
    while i < len(argv):
        a = argv[i]
        if a == "-o":
            if i + 1 >= len(argv):
                raise HelperError("-o needs a value")
            opts += argv[i + 1].split(",")
            i += 2
            continue
        if a.startswith("-o"):
            opts += a[2:].split(",")
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
    for opt in (o.strip() for o in opts):
        if not opt or opt in GENERIC or opt.startswith(GENERIC_PREFIXES):
            continue
        key, eq, value = opt.partition("=")
        key = key.replace("-", "_")
        if key == "ro" and not eq:
            args.append("--read-only")
            continue
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
    return None if fake else args


def main() -> None:
    try:
        args = translate(sys.argv[1:])
    except HelperError as exc:
        print(f"mount.fuse.lakefs: {exc}", file=sys.stderr)
        sys.exit(1)
    if args is None:
        sys.exit(0)
    res = subprocess.run([sys.executable, "-m", "lakefs_fuse.cli", "mount", *args])
    sys.exit(res.returncode)


if __name__ == "__main__":
    main()
