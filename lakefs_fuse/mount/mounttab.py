"""Where lakefs-fuse mounts are: the kernel's mount table and the daemons' registry.

Two sources, both read without asking any daemon (so they answer for a stuck or dead mount):

- the kernel's table, ``/proc/self/mounts`` and ``/proc/self/mountinfo`` (octal escapes such as
  ``\\040`` decoded). A lakefs-fuse mount has the fstype :data:`FSTYPE`;
- the registry: one JSON file per running daemon in :func:`~lakefs_fuse.config.runtime_dir`,
  named after a hash of its mountpoint, holding its pid and the lake it serves (``data_dir``, or
  ``meta`` and ``secret_file``). The daemon writes it once live and removes it when it stops.

Also who holds a mount busy (``/proc/PID/{cwd,root,fd}``). Imports only the base layer.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path
from typing import Any

from ..config import runtime_dir

#: The fstype of a lakefs-fuse mount in /proc/mounts (FUSE's ``fuse.`` + our subtype).
FSTYPE = "fuse.lakefs"


def mounts() -> list[tuple[str, str, str]]:
    """(source, mountpoint, fstype) of every mount, octal escapes decoded."""
    out = []
    with open("/proc/self/mounts") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 3:
                dec = [p.encode().decode("unicode_escape") for p in parts[:3]]
                out.append((dec[0], dec[1], dec[2]))
    return out


def mount_options(path: Path) -> list[str] | None:
    """The per-mount options (``ro``/``rw``, ``nosuid``...) of the mount at ``path``, from
    /proc/self/mountinfo; None if nothing is mounted there."""
    p, found = str(Path(path).resolve()), None
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            if len(fields) > 5 and fields[4].encode().decode("unicode_escape") == p:
                found = fields[5].split(",")  # the last one listed is the one on top
    return found


def is_mounted(path: Path) -> str | None:
    """The fstype mounted at ``path``, if any."""
    p = str(Path(path).resolve())
    for _src, mnt, fstype in mounts():
        if mnt == p:
            return fstype
    return None


def mount_containing(path: str) -> str | None:
    """The innermost lakefs-fuse mountpoint that contains the absolute path ``path`` (taken as
    given: the caller decides whether symbolic links are followed first), if any."""
    best = None
    for _src, mnt, fstype in mounts():
        inside = path == mnt or path.startswith(mnt.rstrip("/") + "/")
        if fstype == FSTYPE and inside and (best is None or len(mnt) > len(best)):
            best = mnt
    return best


def lakefs_mount_of(path: Path) -> str | None:
    """The lakefs-fuse mountpoint that contains ``path`` (symbolic links followed), if any."""
    return mount_containing(str(Path(path).resolve()))


def registry_file(mountpoint: Path) -> Path:
    """The registry entry of the daemon serving ``mountpoint`` (an absolute path)."""
    return runtime_dir() / (hashlib.sha1(str(mountpoint).encode()).hexdigest()[:16] + ".json")


def read_registry(mountpoint: Path) -> dict[str, Any] | None:
    """What the daemon serving ``mountpoint`` registered (pid, mountpoint, data_dir, meta,
    secret_file); None if no daemon is registered there (or its entry is not a JSON object)."""
    try:
        entry = json.loads(registry_file(mountpoint).read_text())
    except (OSError, ValueError):
        return None
    return entry if isinstance(entry, dict) else None


def mount_users(mnt: Path) -> list[str]:
    """``PID (COMMAND)`` of every process whose working directory, root or an open file is inside
    ``mnt`` (read from /proc, which asks nothing of the daemon)."""
    inside = str(mnt).rstrip("/")
    users = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        base = f"/proc/{entry.name}"
        links = [f"{base}/cwd", f"{base}/root"]
        with contextlib.suppress(OSError):  # gone, or not ours to look at
            links += [f"{base}/fd/{fd}" for fd in os.listdir(f"{base}/fd")]
        for link in links:
            try:
                target = os.readlink(link)
            except OSError:
                continue
            if target == inside or target.startswith(inside + "/"):
                try:
                    command = Path(f"{base}/comm").read_text().strip()
                except OSError:
                    command = "?"
                users.append(f"{entry.name} ({command})")
                break
    return users


def holders_text(mnt: Path) -> str:
    """Who keeps ``mnt`` busy, for an error message."""
    users = mount_users(mnt)
    if not users:
        return "no process holds it: the kernel is still releasing its files"
    return "held by pid " + ", ".join(users[:8]) + (" ..." if len(users) > 8 else "")
