"""Mount daemon lifecycle: checks, pyfuse3 session, readiness, read_ahead_kb, clean stop.

``lakefs-fuse mount`` (without ``-f``) starts this module's :func:`serve` in a child process
and returns once the child reports the mount live (or prints the child's reason and fails).
SIGTERM/SIGINT to the daemon flush every buffered write and unmount. The daemon is one trio run:
the lake is opened in an ``async with`` that owns its connections, and the VFS and FUSE session
start inside it.

The kernel sees the mount as mount(8) tools expect: its source is the lake (the data directory,
or ``meta:HOST:PORT,...``, as an fstab line names it), a read-only mount is ``ro``, and
:func:`remount` switches ``ro``/``rw`` of a live mount (a plain MS_REMOUNT keeps the FUSE session;
SIGUSR2 then tells the daemon to follow the kernel's flag). A read-only mount's ``.prefetch`` cannot
be opened for writing, so the daemon also takes read plans on a Unix socket (:func:`_plan_socket`).

While it runs, the daemon's state has owners: :class:`Readiness` (the one line on the ready pipe,
and /readyz), :class:`BackgroundRepair` (the repair passes and their tally). Where mounts are --
the kernel's mount table and the daemons' registry -- is :mod:`.mounttab`'s (its names stay
importable from here). Imports the rest of ``mount``, ``lake`` and the base layer.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import faulthandler
import functools
import hashlib
import json
import logging
import os
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pyfuse3
import trio

from ..config import (
    PEER_REFRESH_SECONDS,
    UMOUNT_BUSY_WAIT,
    LakeConfig,
    MountConfig,
    default_data_dir,
    runtime_dir,
)
from ..errors import LakeError, UserError
from ..lake.format import format_lake
from ..lake.identity import is_lake
from ..lake.lake import Lake, in_use
from ..lake.repair import Report, repair_pending
from ..metrics import Heartbeat, MetricsServer
from .mounttab import FSTYPE, holders_text, is_mounted, mount_options, read_registry, registry_file
from .mounttab import mounts as mounts  # re-exported: older callers find the mount table here
from .observe import MountObserver
from .operations import Operations
from .prefetch import Credentials
from .vfs import VFS, open_disk_cache

log = logging.getLogger(__name__)


def lake_source(cfg: MountConfig) -> str:
    """The mount's source in /proc/mounts: the lake, named as an fstab line names it, so
    ``findmnt -S DATA_DIR`` finds its mounts and two lakes' mounts can be told apart."""
    return "meta:" + ",".join(cfg.meta) if cfg.meta else str(_data_dir(cfg).resolve())


def _data_dir(cfg: MountConfig) -> Path:
    """The embedded lake's data directory (a mount without ``meta`` names one: see the CLI)."""
    assert cfg.data_dir is not None, "a mount names metadata servers or a data directory"
    return Path(cfg.data_dir)


def _escape_option(value: str) -> str:
    """A value inside libfuse's comma-separated -o list (it takes a backslash as an escape)."""
    return value.replace("\\", "\\\\").replace(",", "\\,")


def check_mountpoint(path: Path) -> Path:
    path = Path(path)
    try:
        path = path.resolve(strict=True)
    except (FileNotFoundError, RuntimeError):
        raise UserError(f"mountpoint {path} does not exist") from None
    except OSError as exc:
        if exc.errno == errno.ENOTCONN:  # a FUSE mount whose daemon is gone (or stuck)
            how = f"lakefs-fuse umount {path}" if is_mounted(path) == FSTYPE else f"fusermount3 -u {path}"
            raise UserError(f"mountpoint {path}: {exc.strerror} (a mount whose daemon is gone: unmount it "
                            f"with '{how}')") from None
        raise UserError(f"mountpoint {path}: {exc.strerror}") from None
    if is_mounted(path):
        raise UserError(f"{path} is already a mountpoint ({is_mounted(path)})")
    if not path.is_dir():
        raise UserError(f"mountpoint {path} is not a directory")
    if any(path.iterdir()):
        raise UserError(f"mountpoint {path} is not empty")
    return path


def _is_daemon(pid: int | str) -> bool:
    """``pid`` is a running lakefs-fuse process (not a zombie, not a reused pid)."""
    try:
        with open(f"/proc/{int(pid)}/cmdline", "rb") as f:
            return b"lakefs" in f.read()
    except (OSError, TypeError, ValueError):
        return False


def _statfs_errno(path: Path, timeout: float = 5.0) -> int | None:
    """The errno of a statfs of ``path`` (0 if it answered), or None if no answer came in time.
    statfs always reaches a FUSE daemon (the kernel caches no answer), so a dead one shows here."""
    result: list[int] = []

    def probe() -> None:
        try:
            os.statvfs(path)
            result.append(0)
        except OSError as exc:
            result.append(exc.errno or errno.EIO)

    thread = threading.Thread(target=probe, name="statfs-probe", daemon=True)  # a stuck mount must not hang us
    thread.start()
    thread.join(timeout)
    return result[0] if result else None


def clear_dead_mount(path: Path) -> bool:
    """Unmount a lakefs-fuse mount at ``path`` whose daemon has exited (a crash, SIGKILL): every
    access to it fails with "Transport endpoint is not connected", and mounting there again would
    fail the same way. Nothing is lost by unmounting it: a dead mount holds no data. True if one
    was cleared."""
    try:
        mnt = Path(path).resolve()
    except OSError:
        mnt = Path(path).absolute()
    if is_mounted(mnt) != FSTYPE:
        return False
    reg = read_registry(mnt)
    if reg and _is_daemon(reg.get("pid", "")):
        return False  # its daemon runs: a live mount, or a stuck one that is not ours to drop
    if _statfs_errno(mnt) != errno.ENOTCONN:
        return False
    res = subprocess.run(["fusermount3", "-u", "-z", str(mnt)], capture_output=True, text=True)
    if res.returncode != 0:
        err = res.stderr.strip().splitlines()[-1] if res.stderr.strip() else f"status {res.returncode}"
        raise UserError(f"{mnt} is a mount whose daemon has exited and it cannot be unmounted ({err}); "
                        f"try 'lakefs-fuse umount --lazy {mnt}'")
    registry_file(mnt).unlink(missing_ok=True)
    log.info("unmounted the dead mount at %s (its daemon had exited)", mnt)
    return True


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


class Readiness:
    """Whether the mount is live, told once to whoever waits for it: the parent that spawned the
    daemon reads one line on the ready pipe (``ok``, or ``error: WHY``), and /readyz asks
    :meth:`is_live`. Only the first :meth:`report` reaches the pipe."""

    def __init__(self, ready_fd: int | None) -> None:
        self._pipe = os.fdopen(ready_fd, "w") if ready_fd is not None else None
        self._live = False

    def report(self, msg: str) -> None:
        if self._pipe is not None:
            try:
                self._pipe.write(msg + "\n")
                self._pipe.close()
            except OSError:
                pass
            self._pipe = None

    def mark_live(self) -> None:
        self._live = True
        self.report("ok")

    def is_live(self) -> bool:
        return self._live


def serve(cfg: MountConfig, ready_fd: int | None = None) -> int:
    """Run the mount in this process until unmounted or signalled. Returns an exit status."""
    readiness = Readiness(ready_fd)
    try:
        mountpoint = check_mountpoint(cfg.mountpoint)
    except UserError as exc:
        readiness.report(f"error: {exc}")
        raise
    return trio.run(_serve, cfg, mountpoint, readiness)


async def _serve(cfg: MountConfig, mountpoint: Path, readiness: Readiness) -> int:
    """The whole mount in one trio run: the lake is opened in an ``async with`` that owns its
    connections and closes it at the end. A refusal before the mount is live is a UserError,
    told on the ready pipe too."""
    try:
        async with _open_lake(cfg, mountpoint) as lake:
            return await _serve_lake(cfg, mountpoint, readiness, lake)
    except UserError as exc:
        readiness.report(f"error: {exc}")  # (only the first report reaches the pipe)
        raise


def _open_lake(cfg: MountConfig, mountpoint: Path) -> contextlib.AbstractAsyncContextManager[Lake]:
    if not cfg.meta:
        return Lake.open(_data_dir(cfg), io_threads=cfg.io_threads, lock=True).closing()
    snapshot = None
    if cfg.dataset:
        snapshot = runtime_dir() / "snapshots" / hashlib.sha1(str(mountpoint).encode()).hexdigest()[:16]
    return Lake.connect(list(cfg.meta), cfg.secret_file, tls_ca=cfg.tls_ca, io_threads=cfg.io_threads,
                        op_timeout=cfg.meta_timeout, snapshot_to=snapshot)


async def _serve_lake(cfg: MountConfig, mountpoint: Path, readiness: Readiness, lake: Lake) -> int:
    if not cfg.read_only:  # a lake never writes into storage that holds another lake's shards
        await lake.check_remote_owners()
    if lake.sm is not None and not cfg.meta:
        # An embedded lake's metadata is read whole once (~0.2 s per million keys): a damaged
        # block refuses the mount here, instead of failing lookups with EIO once it is live.
        t = time.monotonic()
        try:
            keys = lake.sm.verify()
        except LakeError as exc:
            raise UserError(str(exc)) from None
        log.info("metadata checked: %d keys in %.2f s", keys, time.monotonic() - t)
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    if cfg.dataset and lake.sm is not None:
        # Dataset mode reads its metadata locally and never changes it: read it once, in order,
        # before the mount goes live, so lookups in a big lake do not each wait on the disk.
        t = time.monotonic()
        got = lake.sm.preload()
        log.info("dataset mode: %d MiB of metadata read and cached in %.2f s", got >> 20, time.monotonic() - t)
    disk = open_disk_cache(cfg, lake.uuid)
    vfs = VFS(lake.meta, lake.chunks, cfg, chunk_size=lake.config.chunk_size, shared=bool(cfg.meta),
              disk_cache=disk, page_store=pyfuse3.notify_store)
    observer = MountObserver(vfs, lake_info={
        "uuid": lake.uuid, "kind": "cluster" if cfg.meta else "embedded",
        "ec": f"{lake.config.ec_k}+{lake.config.ec_m}",
        "chunk_size": lake.config.chunk_size, "peers": len(lake.chunks.stores)})
    vfs.stats_source, vfs.config_source = observer.stats_text, observer.config_text
    vfs.on_read = observer.recorder.read_done
    ops = Operations(vfs, observer.recorder)
    heartbeat = Heartbeat()
    metrics_server = None
    if cfg.metrics:
        metrics_server = MetricsServer(cfg.metrics, observer.registry, alive=heartbeat.alive,
                                       ready=readiness.is_live)
    options = set(pyfuse3.default_options) | {"fsname=" + _escape_option(lake_source(cfg)), "subtype=lakefs"}
    if cfg.allow_other:
        options.add("allow_other")
    if cfg.read_only:
        options.add("ro")  # the kernel refuses changes itself, and /proc/mounts says ro
    options.update(cfg.extra_fuse_options)
    failure = _fuse_init(ops, mountpoint, options)
    if failure is not None:
        if metrics_server is not None:
            metrics_server.close()
        raise UserError(f"cannot mount {mountpoint}: {failure}")
    reg = registry_file(mountpoint)
    reg.parent.mkdir(parents=True, exist_ok=True)
    reg.write_text(json.dumps({"pid": os.getpid(), "mountpoint": str(mountpoint),
                               "data_dir": str(Path(cfg.data_dir).resolve()) if cfg.data_dir else None,
                               "meta": list(cfg.meta), "secret_file": str(cfg.secret_file or "")}))
    status = 0
    try:
        repair = BackgroundRepair(lake, vfs, cfg.repair_delay, observer.count_repair)
        await _main(vfs, cfg, mountpoint, readiness, lake, heartbeat, repair)
    except trio.Cancelled:
        raise
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
        with contextlib.suppress(FileNotFoundError):
            reg.unlink()
        readiness.report("error: mount daemon stopped before the mount was live (see its log)")
        log.info("mount daemon for %s stopped", mountpoint)
    return status


def _fuse_init(ops: Operations, mountpoint: Path, options: set[str]) -> str | None:
    """``pyfuse3.init``; None once mounted, else why not. pyfuse3's exception says only
    "fuse_session_mount failed": the cause is what libfuse (or the fusermount3 it runs) prints on
    stderr, e.g. "fuse: failed to open /dev/fuse: Permission denied". That is captured here, copied
    to our stderr (the log) and returned."""
    failure: Exception | None = None
    with tempfile.TemporaryFile() as said:
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(said.fileno(), 2)
        try:
            pyfuse3.init(ops, str(mountpoint), options)
        except Exception as exc:
            failure = exc
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        said.seek(0)
        text = said.read().decode(errors="replace")
    if text:
        sys.stderr.write(text)
        sys.stderr.flush()
    if failure is None:
        return None
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    cause = lines[-1].removeprefix("fuse: ") if lines else str(failure) or type(failure).__name__
    if "/dev/fuse" in cause and "Permission denied" in cause:
        cause += " (mount as root, or give this user read-write access to /dev/fuse)"
    return cause


async def _main(vfs: VFS, cfg: MountConfig, mountpoint: Path, readiness: Readiness, lake: Lake,
                heartbeat: Heartbeat, repair: BackgroundRepair) -> None:
    async with trio.open_nursery() as nursery:
        await vfs.start(nursery)
        nursery.start_soon(heartbeat.run)
        nursery.start_soon(_signals)
        nursery.start_soon(_follow_remounts, vfs, mountpoint)
        await nursery.start(_plan_socket, vfs, registry_file(mountpoint).with_suffix(".sock"), cfg.allow_other)
        nursery.start_soon(repair.run)
        if cfg.meta and not cfg.dataset:  # an embedded lake's peers change only while unmounted
            nursery.start_soon(_follow_peers, lake)
        nursery.start_soon(_become_ready, cfg, mountpoint, readiness)
        await pyfuse3.main()
        log.info("FUSE session ended; flushing")
        await vfs.shutdown()
        nursery.cancel_scope.cancel()


class BackgroundRepair:
    """Closes redundancy gaps while the mount runs (see :func:`..lake.repair.repair_pending`),
    a pass every ``delay / 2`` seconds (0.5 to 30); each pass's report goes to ``on_pass`` (the
    observer's :meth:`~.observe.MountObserver.count_repair`, which the metrics publish)."""

    def __init__(self, lake: Lake, vfs: VFS, delay: float, on_pass: Callable[[Report], None]) -> None:
        self.lake, self.vfs, self.delay, self.on_pass = lake, vfs, delay, on_pass

    async def run(self) -> None:
        tick = max(0.5, min(30.0, self.delay / 2))
        while True:
            await trio.sleep(tick)
            try:
                report = await repair_pending(self.lake, delay=self.delay, forget_layout=self.vfs.forget_layout)
            except LakeError as exc:  # e.g. no metadata majority: one line, the next round tries again
                log.warning("background repair failed: %s", exc)
                continue
            except Exception:  # repair is best effort; the next round tries again
                log.exception("background repair failed")
                continue
            self.on_pass(report)


async def _follow_peers(lake: Lake) -> None:
    """Re-read a cluster lake's peer records every few seconds, so ``peer add``, ``peer remove``
    and ``peer weight`` run elsewhere reach this mount's placement without a remount."""
    warned = -1e9
    while True:
        await trio.sleep(PEER_REFRESH_SECONDS)
        try:
            await lake.refresh_peers()
        except LakeError as exc:  # e.g. no metadata majority: the next round tries again
            if trio.current_time() - warned >= 60:
                warned = trio.current_time()
                log.warning("cannot re-read the peer records: %s", exc)


async def _signals() -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        async for signum in signals:
            log.info("signal %d: unmounting", signum)
            pyfuse3.terminate()
            return


async def _follow_remounts(vfs: VFS, mountpoint: Path) -> None:
    """SIGUSR2 (sent by :func:`remount`): take the kernel's read-only flag as the daemon's own."""
    with trio.open_signal_receiver(signal.SIGUSR2) as signals:
        async for _ in signals:
            options = mount_options(mountpoint)
            if options is not None:
                now = vfs.set_read_only("ro" in options)
                log.info("remounted %s", "read-only" if now else "read-write")


#: A plan client that says nothing for this long is dropped.
PLAN_CLIENT_TIMEOUT = 60.0


async def _plan_socket(vfs: VFS, path: Path, allow_other: bool, task_status=trio.TASK_STATUS_IGNORED) -> None:
    """Take read plans on a Unix socket: the way in on a read-only mount, where the kernel refuses
    to open ``.prefetch`` for writing. A client sends the same lines it would write to the file,
    closes its side, and gets its plan's report back. The peer's credentials (SO_PEERCRED) stand in
    for a FUSE request's; without --allow-other only root and the daemon's user may send, as only
    they may use the mount. A path too long for a socket address only costs read-only mounts their
    plans (logged)."""
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        path.unlink(missing_ok=True)
        await sock.bind(str(path))
        os.chmod(path, 0o666 if allow_other else 0o600)
        sock.listen(16)
    except OSError as exc:
        sock.close()
        log.warning("no plan socket at %s (%s): a read-only mount takes no read plans", path, exc)
        task_status.started()
        return
    vfs.plan_socket = str(path)
    task_status.started()
    try:
        await trio.serve_listeners(functools.partial(_take_plan, vfs, allow_other), [trio.SocketListener(sock)])
    finally:
        path.unlink(missing_ok=True)


async def _take_plan(vfs: VFS, allow_other: bool, stream: trio.SocketStream) -> None:
    try:
        with trio.move_on_after(PLAN_CLIENT_TIMEOUT):
            creds = stream.socket.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
            pid, uid, gid = struct.unpack("3i", creds)
            if not allow_other and uid not in (0, os.geteuid()):
                return
            cred = Credentials.of_process(uid, gid, pid)
            pending = b""
            while data := await stream.receive_some(1 << 16):
                complete, _, pending = (pending + data).rpartition(b"\n")
                if complete:
                    vfs.take_plan(cred, complete.decode("utf-8", errors="surrogateescape"))
            if pending:
                vfs.take_plan(cred, pending.decode("utf-8", errors="surrogateescape"))
            await stream.send_all(vfs.plan_report(cred))
    except (OSError, trio.BrokenResourceError) as exc:  # one client's trouble is its own
        log.debug("plan socket client: %s", exc)
    except Exception:  # a plan is advice: nothing a client sends may stop the daemon
        log.exception("plan socket client failed")
    finally:
        await trio.aclose_forcefully(stream)


async def _become_ready(cfg: MountConfig, mountpoint: Path, readiness: Readiness) -> None:
    # The first stat makes the kernel finish its FUSE handshake; read_ahead_kb written
    # before that is silently reset, so set it afterwards and read it back.
    await trio.to_thread.run_sync(os.stat, mountpoint)
    ra = await trio.to_thread.run_sync(set_read_ahead, mountpoint, cfg.read_ahead_kb)
    log.info("mounted %s (read_ahead_kb=%s)", mountpoint, ra)
    readiness.mark_live()


def default_lake() -> Path:
    """The zero-configuration embedded lake (:func:`~..config.default_data_dir`), formatted with
    the default :class:`LakeConfig` on first use (never over a directory that holds anything)."""
    data_dir = default_data_dir()
    if not is_lake(data_dir) and not (data_dir.exists() and any(data_dir.iterdir())):
        format_lake(data_dir, LakeConfig())
    return data_dir


def start(cfg: MountConfig, options: list[str]) -> Path:
    """Mount in the background: check the mountpoint, and that the lake opens (so a refusal comes
    here, with its reason, not from the daemon's log), then run ``lakefs-fuse mount -f MOUNTPOINT
    OPTIONS`` as a daemon and return its log's path once the mount is live."""
    check_mountpoint(cfg.mountpoint)
    mnt = Path(cfg.mountpoint).resolve()
    if cfg.meta:
        trio.run(_check_cluster_lake, cfg)
        log_path = runtime_dir() / ("mount-" + str(mnt).strip("/").replace("/", "_") + ".log")
    else:
        if in_use(_data_dir(cfg)):
            raise UserError(f"{cfg.data_dir} is already mounted by another lakefs-fuse process")
        Lake.open(_data_dir(cfg), read_only=True).close()
        log_path = _data_dir(cfg) / "mount.log"
    spawn([str(mnt), *options], mnt, log_path)
    return log_path


async def _check_cluster_lake(cfg: MountConfig) -> None:
    """The cluster lake opens: its servers answer, hold a lake, and know our secret."""
    async with Lake.connect(list(cfg.meta), cfg.secret_file, tls_ca=cfg.tls_ca):
        pass


def spawn(cfg_args: list[str], mountpoint: Path, log_path: Path, timeout: float = 60.0) -> None:
    """Start ``lakefs-fuse mount -f`` as a daemon; return once it reports the mount live."""
    rfd, wfd = os.pipe()
    log_path.parent.mkdir(parents=True, exist_ok=True)
    # The log names files and paths: owner-only, like the lake's metadata.
    with os.fdopen(os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600), "ab") as logf:
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


def _sync_before_unmount(mnt: Path) -> None:
    """Store every buffered write first (fsync of the root commits them all): bytes that cannot
    be stored (full peers, too many down) keep the mount up instead of being lost with it."""
    try:
        fd = os.open(mnt, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return  # e.g. a dead mount: nothing of it can be flushed any more
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EIO, errno.EDQUOT):
            raise UserError(f"{mnt}: written data cannot be stored yet ({exc.strerror}); it is kept and "
                            "retried: make room on the lake's peers (or bring them back) and unmount "
                            "again, or 'lakefs-fuse umount --force' to unmount and lose it") from None
    finally:
        os.close(fd)


def unmount(mountpoint: Path, lazy: bool = False, timeout: float = 60.0, force: bool = False,
            busy_wait: float = UMOUNT_BUSY_WAIT, notify: Callable[[str], None] | None = None) -> None:
    """Unmount and wait for the daemon to finish. A busy mount is retried for ``busy_wait``
    seconds first (``notify`` is told who holds it): what holds a mount is usually about to let go
    -- a job or shell ending, or (kernels before 4.x pinned the mount for each release still in
    flight) files whose RELEASE the daemon has not answered yet, e.g. right after deleting many."""
    mnt = Path(mountpoint).absolute()
    with contextlib.suppress(OSError):
        mnt = mnt.resolve()
    fstype = is_mounted(mnt)
    if fstype is None:
        raise UserError(f"{mnt} is not mounted")
    if fstype != FSTYPE:
        raise UserError(f"{mnt} is not a lakefs-fuse mount (it is {fstype})")
    reg = read_registry(mnt)
    if not force:
        _sync_before_unmount(mnt)
    def fusermount() -> str | None:  # the error, or None once unmounted
        res = subprocess.run(["fusermount3", "-u", *(["-z"] if lazy else []), str(mnt)],
                             capture_output=True, text=True)
        if res.returncode == 0:
            return None
        return res.stderr.strip().splitlines()[-1] if res.stderr.strip() else f"status {res.returncode}"

    err = fusermount()
    if err is not None and "busy" in err.lower() and busy_wait > 0:
        if notify is not None:
            notify(f"{mnt} is busy ({holders_text(mnt)}); waiting up to {busy_wait:.0f}s for it")
        deadline = time.monotonic() + busy_wait
        while err is not None and "busy" in err.lower() and time.monotonic() < deadline:
            time.sleep(0.1)  # polling a deadline: the kernel has no "mount released" event
            err = fusermount()
    if err is not None:
        if "busy" in err.lower():
            raise UserError(f"{mnt} is busy ({holders_text(mnt)}); close them or use --lazy")
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


#: Per-mount flags a remount must give again, or the kernel clears them (mount(2)'s MS_* values).
_KEPT_FLAGS = {"nosuid": 2, "nodev": 4, "noexec": 8, "noatime": 1024, "nodiratime": 2048, "relatime": 1 << 21}
_MS_RDONLY, _MS_REMOUNT = 1, 32


def remount(mountpoint: Path, read_only: bool, timeout: float = 10.0) -> None:
    """``mount -o remount,ro|rw`` of a live mount: switch the kernel's read-only flag with a plain
    MS_REMOUNT (FUSE keeps its session and every open file; the kernel then refuses or allows
    changes itself), tell the daemon (SIGUSR2) and wait until it follows. Going read-only fails
    while files are open for writing; a dataset mount stays read-only (its caches assume that
    nothing changes)."""
    mnt = Path(mountpoint).resolve()
    if is_mounted(mnt) != FSTYPE:
        raise UserError(f"{mnt} is not a lakefs-fuse mount")

    def daemon_view() -> dict:  # the daemon's own settings, live
        try:
            return json.loads((mnt / ".config").read_text())
        except (OSError, ValueError) as exc:
            raise UserError(f"{mnt}: cannot read its .config: {exc}") from None

    if not read_only and daemon_view().get("dataset"):
        raise UserError(f"{mnt} is a dataset mount, which stays read-only: unmount it and mount it without dataset")
    reg = read_registry(mnt)
    if reg is None:
        raise UserError(f"no lakefs-fuse daemon is registered for {mnt} (in {runtime_dir()})")
    flags = _MS_REMOUNT | (_MS_RDONLY if read_only else 0)
    for option in mount_options(mnt) or ():
        flags |= _KEPT_FLAGS.get(option, 0)
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_void_p]
    if libc.mount(None, str(mnt).encode(), None, flags, None) != 0:
        err = ctypes.get_errno()
        if err == errno.EBUSY and read_only:
            raise UserError(f"cannot remount {mnt} read-only: files are open for writing")
        raise UserError(f"cannot remount {mnt}: {os.strerror(err)}")
    try:
        os.kill(reg["pid"], signal.SIGUSR2)
    except ProcessLookupError:
        raise UserError(f"remounted {mnt}, but its daemon (pid {reg['pid']}) is gone") from None
    deadline = time.monotonic() + timeout
    while daemon_view().get("read_only") != read_only:
        if time.monotonic() > deadline:
            raise UserError(f"remounted {mnt}, but its daemon (pid {reg['pid']}) did not follow within "
                            f"{timeout:.0f}s")
        time.sleep(0.05)  # polling a deadline: the daemon answers the signal on its own schedule
