"""Pushing prefetched files into the kernel's page cache (dataset mode).

When the read plan has fetched a small file ahead of the loader, the daemon hands its bytes to the
kernel with FUSE's store notification (``pyfuse3.notify_store``). The loader's next ``open`` is
answered with ``keep_cache``, and its reads are served by the kernel without a READ request ever
reaching the daemon: no request dispatch, no copy through /dev/fuse at read time, and no wait.

Only safe where a file's bytes cannot change under the mount: dataset mode (read-only, metadata
frozen at mount). A store is refused by the kernel (ENOENT) for an inode it does not currently
know; then the file is read the ordinary way from the memory cache.

The notification runs in a thread of its own. The kernel locks the page cache pages it fills; if
a READ of the same file is in flight those pages are locked until the event loop answers it, so a
store must never run on the event loop.

Also owns :class:`KernelPages`, this mount's record of what the kernel's page cache holds (the
``keep_cache`` decision at open, and the files dataset mode gave it whole). Imports nothing of
the package: the daemon hands in ``pyfuse3.notify_store``.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass(slots=True)
class PushStats:
    pushed: int = 0          # files stored in the kernel's page cache
    pushed_bytes: int = 0
    refused: int = 0         # stores the kernel refused (inode not cached) or that failed
    dropped: int = 0         # files not pushed because the queue was full


class PageCachePusher:
    """A bounded queue of (inode, bytes) and the thread that stores them in the kernel."""

    def __init__(self, store: Callable[[int, int, object], None], *, max_queued_bytes: int = 64 << 20):
        self._store = store  # pyfuse3.notify_store(inode, offset, data)
        self._queue: queue.SimpleQueue[tuple[int, bytes | bytearray | memoryview] | None] = queue.SimpleQueue()
        self._queued_bytes = 0
        self._lock = threading.Lock()
        self.max_queued_bytes = max_queued_bytes
        self.stats = PushStats()
        self._thread: threading.Thread | None = None
        self._closed = False

    def push(self, ino: int, data: bytes | bytearray | memoryview) -> bool:
        """Queue a whole file for the kernel; False (and nothing queued) when over the bound."""
        n = len(data)
        with self._lock:
            if self._closed or self._queued_bytes + n > self.max_queued_bytes:
                self.stats.dropped += 1
                return False
            self._queued_bytes += n
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="page-cache-push", daemon=True)
                self._thread.start()
        self._queue.put((ino, data))
        return True

    def close(self, timeout: float = 10.0) -> None:
        """Stop the thread (before the FUSE session goes away: a store after that would crash)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            thread = self._thread
        if thread is not None:
            self._queue.put(None)
            thread.join(timeout)
            if thread.is_alive():
                log.warning("page cache pusher did not stop within %.0f s", timeout)

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            ino, data = item
            try:
                self._store(ino, 0, data)
                self.stats.pushed += 1
                self.stats.pushed_bytes += len(data)
            except OSError as exc:  # ENOENT: the kernel does not hold the inode now
                self.stats.refused += 1
                log.debug("page cache store of inode %d refused: %s", ino, exc)
            except Exception:  # never let the thread die: later pushes would queue forever
                self.stats.refused += 1
                log.exception("page cache store of inode %d failed", ino)
            finally:
                with self._lock:
                    self._queued_bytes -= len(data)


class KernelPages:
    """What the kernel's page cache holds of each file, as far as this mount can tell.

    ``attrs``: the (size, mtime) of a file when the kernel last took its pages (a read through an
    open handle, a push); an ``open`` that sees the same pair lets the kernel keep them
    (``keep_cache``). ``whole``: dataset mode -- files the kernel was given whole (read or
    pushed) and has not forgotten; the read plan does not fetch them again (a second epoch runs
    from the page cache). The VFS and the reader share one instance.
    """

    def __init__(self) -> None:
        self._attrs: dict[int, tuple[int, int]] = {}
        self._whole: set[int] = set()

    def keep_on_open(self, ino: int, size: int, mtime_ns: int) -> bool:
        """An open saw ``ino`` at (size, mtime): may the kernel keep its cached pages?"""
        seen = (size, mtime_ns)
        keep = self._attrs.get(ino) == seen
        self._attrs[ino] = seen
        return keep

    def remember(self, ino: int, size: int, mtime_ns: int) -> None:
        """The kernel now holds ``ino``'s pages as of (size, mtime)."""
        self._attrs[ino] = (size, mtime_ns)

    def changed(self, ino: int) -> None:
        """``ino``'s size changed (or it is gone): cached pages must not be kept at the next open."""
        self._attrs.pop(ino, None)

    def forgotten(self, ino: int) -> None:
        """The kernel dropped the inode, and with it every cached page of the file."""
        self._attrs.pop(ino, None)
        self._whole.discard(ino)

    def has_whole(self, ino: int) -> bool:
        return ino in self._whole

    def got_whole(self, ino: int) -> None:
        self._whole.add(ino)
