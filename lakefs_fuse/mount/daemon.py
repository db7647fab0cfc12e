"""Mount daemon lifecycle: checks, pyfuse3 session, readiness, read_ahead_kb, clean stop.

``lakefs-fuse mount`` (without ``-f``) starts this module's :func:`serve` in a child process
and returns once the child reports the mount live (or prints the child's reason and fails).
SIGTERM/SIGINT to the daemon flush every buffered write and unmount.
"""

from __future__ import annotations

import faulthandler
import hashlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyfuse3
import trio

from ..config import MountConfig, runtime_dir
from ..errors import UserError
from ..metrics import Heartbeat, MetricsServer
from . import maintenance
from .lake import Lake
from .observe import MountObserver
from .operations import Operations
from .vfs import VFS

log = logging.getLogger(__name__)
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


def is_mounted(path: Path) -> str | None:
    """The fstype mounted at ``path``, if any."""
    p = str(Path(path).resolve())
    for _src, mnt, fstype in mounts():
        if mnt == p:
            return fstype
    return None


def lakefs_mount_of(path: Path) -> str | None:
    """The lakefs-fuse mountpoint that contains ``path``, if any."""
    p = str(Path(path).resolve())
    best = None
    for _src, mnt, fstype in mounts():
        if fstype == FSTYPE and (p == mnt or p.startswith(mnt.rstrip("/") + "/")):
            if best is None or len(mnt) > len(best):
                best = mnt
    return best


def check_mountpoint(path: Path) -> Path:
    path = Path(path)
    try:
        path = path.resolve(strict=True)
    except (FileNotFoundError, RuntimeError):
        raise UserError(f"mountpoint {path} does not exist") from None
    except OSError as exc:
        raise UserError(f"mountpoint {path}: {exc.strerror}") from None
    if is_mounted(path):
        raise UserError(f"{path} is already a mountpoint ({is_mounted(path)})")
    if not path.is_dir():
        raise UserError(f"mountpoint {path} is not a directory")
    if any(path.iterdir()):
        raise UserError(f"mountpoint {path} is not empty")
    return path


def registry_file(mountpoint: Path) -> Path:
    return runtime_dir() / (hashlib.sha1(str(mountpoint).encode()).hexdigest()[:16] + ".json")


def read_registry(mountpoint: Path) -> dict | None:
    try:
        return json.loads(registry_file(mountpoint).read_text())
    except (OSError, ValueError):
        return None


def set_read_ahead(mountpoint: Path, kb: int) -> int | None:
    """Raise the mount's bdi read_ahead_kb so buffered reads arrive as 1 MiB requests."""
    dev = os.stat(mountpoint).st_dev
    path = Path(f"/sys/class/bdi/{os.major(dev)}:{os.minor(dev)}/read_ahead_kb")
    try:
        path.write_text(str(kb))
        return int(path.read_text())
    except OSError as exc:
        log.warning("cannot set %s: %s (reads stay at 128 KiB requests)", path, exc)
        return None


def serve(cfg: MountConfig, ready_fd: int | None = None) -> int:
    """Run the mount in this process until unmounted or signalled. Returns an exit status."""
    ready = os.fdopen(ready_fd, "w") if ready_fd is not None else None

    def report(msg: str) -> None:
        nonlocal ready
        if ready is not None:
            try:
                ready.write(msg + "\n")
                ready.close()
            except OSError:
                pass
            ready = None

    try:
        mountpoint = check_mountpoint(cfg.mountpoint)
        if cfg.meta:
            snapshot = None
            if cfg.dataset:
                snapshot = runtime_dir() / "snapshots" / hashlib.sha1(str(mountpoint).encode()).hexdigest()[:16]
            lake = Lake.open_remote(list(cfg.meta), cfg.secret_file, tls_ca=cfg.tls_ca, io_threads=cfg.io_threads,
                                    op_timeout=cfg.meta_timeout, snapshot_to=snapshot)
        else:
            lake = Lake.open(cfg.data_dir, io_threads=cfg.io_threads, lock=True)
    except UserError as exc:
        report(f"error: {exc}")
        raise
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    if cfg.dataset and lake.sm is not None:
        # Dataset mode reads its metadata locally and never changes it: read it once, in order,
        # before the mount goes live, so lookups in a big lake do not each wait on the disk.
        t = time.monotonic()
        got = lake.sm.preload()
        log.info("dataset mode: %d MiB of metadata read and cached in %.2f s", got >> 20, time.monotonic() - t)
    disk = _open_disk_cache(cfg, lake)
    vfs = VFS(lake.meta, lake.chunks, cfg, chunk_size=lake.config.chunk_size, shared=bool(cfg.meta),
              disk_cache=disk, page_store=pyfuse3.notify_store)
    observer = MountObserver(vfs, lake_info={
        "uuid": lake.uuid, "kind": "cluster" if cfg.meta else "embedded", "ec": f"{lake.config.ec_k}+{lake.config.ec_m}",
        "chunk_size": lake.config.chunk_size, "peers": len(lake.chunks.stores)})
    vfs.stats_source, vfs.config_source = observer.stats_text, observer.config_text
    vfs.on_read = observer.recorder.read_done
    ops = Operations(vfs, observer.recorder)
    heartbeat = Heartbeat()
    live = {"ok": False}
    metrics_server = None
    if cfg.metrics:
        try:
            metrics_server = MetricsServer(cfg.metrics, observer.registry, alive=heartbeat.alive,
                                           ready=lambda: live["ok"])
        except UserError as exc:
            lake.close()
            report(f"error: {exc}")
            raise
    options = set(pyfuse3.default_options) | {"fsname=lakefs", "subtype=lakefs"}
    if cfg.allow_other:
        options.add("allow_other")
    options.update(cfg.extra_fuse_options)
    try:
        pyfuse3.init(ops, str(mountpoint), options)
    except Exception as exc:
        lake.close()
        if metrics_server is not None:
            metrics_server.close()
        report(f"error: cannot mount {mountpoint}: {exc}")
        raise UserError(f"cannot mount {mountpoint}: {exc}") from None
    reg = registry_file(mountpoint)
    reg.parent.mkdir(parents=True, exist_ok=True)
    reg.write_text(json.dumps({"pid": os.getpid(), "mountpoint": str(mountpoint),
                               "data_dir": str(Path(cfg.data_dir).resolve()) if cfg.data_dir else None,
                               "meta": list(cfg.meta), "secret_file": str(cfg.secret_file or "")}))
    status = 0
    try:
        trio.run(_main, vfs, cfg, mountpoint, report, lake, heartbeat, live, observer.repair)
    except BaseException:
        log.exception("mount daemon failed")
        status = 1
    finally:
        if vfs.pusher is not None:
            vfs.pusher.close()  # no store may reach a closed FUSE session
        if metrics_server is not None:
            metrics_server.close()
        try:
            pyfuse3.close(unmount=True)
        except Exception:
            log.exception("unmount failed")
        lake.close()
        if disk is not None:
            disk.close()
        try:
            reg.unlink()
        except FileNotFoundError:
            pass
        report("error: mount daemon stopped before the mount was live (see its log)")
        log.info("mount daemon for %s stopped", mountpoint)
    return status


def _open_disk_cache(cfg: MountConfig, lake: Lake):
    """The mount's disk cache, in a directory of its own per lake; None when off or in use."""
    from ..chunks.diskcache import DiskCache
    from ..errors import Busy
    if cfg.cache_dir is None:
        return None
    directory = Path(cfg.cache_dir) / (lake.uuid or "lake")
    try:
        cache = DiskCache(directory, cfg.cache_size, free_floor=cfg.cache_free_floor)
    except Busy:
        log.warning("disk cache %s is used by another mount of this lake; this mount runs without one",
                    directory)
        return None
    except OSError as exc:
        log.warning("cannot open the disk cache %s (%s); running without one", directory, exc)
        return None
    log.info("disk cache %s: %d MiB of %d MiB used", directory, cache.stats()["used"] >> 20, cfg.cache_size >> 20)
    return cache


async def _main(vfs: VFS, cfg: MountConfig, mountpoint: Path, report, lake: Lake, heartbeat: Heartbeat,
                live: dict, repair_tally: dict) -> None:
    async with trio.open_nursery() as nursery:
        await vfs.start(nursery)
        nursery.start_soon(heartbeat.run)
        nursery.start_soon(_signals)
        nursery.start_soon(_repair_loop, lake, vfs, cfg.repair_delay, repair_tally)
        nursery.start_soon(_become_ready, cfg, mountpoint, report, live)
        await pyfuse3.main()
        log.info("FUSE session ended; flushing")
        await vfs.shutdown()
        nursery.cancel_scope.cancel()


async def _repair_loop(lake: Lake, vfs: VFS, delay: float, tally: dict) -> None:
    """Close redundancy gaps in the background: see :func:`maintenance.repair_pending`."""
    tick = max(0.5, min(30.0, delay / 2))
    while True:
        await trio.sleep(tick)
        try:
            report = await maintenance.repair_pending(lake, delay=delay, forget_layout=vfs.forget_layout)
        except Exception:  # repair is best effort; the next round tries again
            log.exception("background repair failed")
            continue
        r = tally
        r["passes"] += 1
        r["shards_rebuilt"] += report.repaired
        r["failed"] += len(report.failed)
        r["lost_chunks"] = len(report.lost)  # as of the last pass: more bad shards than parity


async def _signals() -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        async for signum in signals:
            log.info("signal %d: unmounting", signum)
            pyfuse3.terminate()
            return


async def _become_ready(cfg: MountConfig, mountpoint: Path, report, live: dict) -> None:
    # The first stat makes the kernel finish its FUSE handshake; read_ahead_kb written
    # before that is silently reset, so set it afterwards and read it back.
    await trio.to_thread.run_sync(os.stat, mountpoint)
    ra = await trio.to_thread.run_sync(set_read_ahead, mountpoint, cfg.read_ahead_kb)
    log.info("mounted %s (read_ahead_kb=%s)", mountpoint, ra)
    live["ok"] = True
    report("ok")


def spawn(cfg_args: list[str], mountpoint: Path, log_path: Path, timeout: float = 60.0) -> None:
    """Start ``lakefs-fuse mount -f`` as a daemon; return once it reports the mount live."""
    rfd, wfd = os.pipe()
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as logf:
        proc = subprocess.Popen(
            [sys.executable, "-m", "lakefs_fuse.cli", "mount", "-f", "--ready-fd", str(wfd), *cfg_args],
            stdin=subprocess.DEVNULL, stdout=logf, stderr=logf, pass_fds=(wfd,), start_new_session=True,
            env={**os.environ, "MALLOC_MMAP_THRESHOLD_": "67108864", "MALLOC_TRIM_THRESHOLD_": "268435456"})
    os.close(wfd)
    deadline = time.monotonic() + timeout
    buf = b""
    with os.fdopen(rfd, "rb", buffering=0) as r:
        os.set_blocking(r.fileno(), False)
        while time.monotonic() < deadline:
            try:
                chunk = r.read(4096)
            except BlockingIOError:
                chunk = None
            if chunk:
                buf += chunk
                if b"\n" in buf:
                    break
            elif chunk == b"":
                break
            if proc.poll() is not None and not chunk:
                break
            time.sleep(0.02)
    msg = buf.decode(errors="replace").strip()
    if msg == "ok":
        return
    if proc.poll() is None and not msg:
        proc.terminate()
        raise UserError(f"mount of {mountpoint} did not come up within {timeout:.0f}s (log: {log_path})")
    if msg.startswith("error: "):
        raise UserError(msg[len("error: "):])
    raise UserError(f"mount daemon exited (status {proc.poll()}); see {log_path}")


def unmount(mountpoint: Path, lazy: bool = False, timeout: float = 60.0) -> None:
    mnt = Path(mountpoint).absolute()
    try:
        mnt = mnt.resolve()
    except OSError:
        pass
    fstype = is_mounted(mnt)
    if fstype is None:
        raise UserError(f"{mnt} is not mounted")
    if fstype != FSTYPE:
        raise UserError(f"{mnt} is not a lakefs-fuse mount (it is {fstype})")
    reg = read_registry(mnt)
    res = subprocess.run(["fusermount3", "-u", *(["-z"] if lazy else []), str(mnt)],
                         capture_output=True, text=True)
    if res.returncode != 0:
        err = res.stderr.strip().splitlines()[-1] if res.stderr.strip() else f"status {res.returncode}"
        if "busy" in err.lower():
            raise UserError(f"{mnt} is busy (files open or a process inside it); close them or use --lazy")
        raise UserError(f"cannot unmount {mnt}: {err}")
    if reg and not lazy:
        pid, deadline = reg["pid"], time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            if not registry_file(mnt).exists():
                return
            time.sleep(0.05)
        raise UserError(f"unmounted {mnt}, but its daemon (pid {pid}) is still flushing after {timeout:.0f}s")
