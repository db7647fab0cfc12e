"""Prometheus metrics, liveness and readiness for the mount daemon, peer servers and metadata servers.

Every process keeps its own ``CollectorRegistry``. Hot paths only bump plain integers they already
kept (VFS, cache, chunk client, plan stats); collectors turn them into metric families when scraped,
so a scrape costs nothing between scrapes. The one instrument on the request path is the FUSE
request histogram (``FuseRecorder``): one ``observe`` per request, about a microsecond.

``--metrics HOST:PORT`` (a bare ``PORT`` means 127.0.0.1) serves, from a thread:

* ``/metrics``: the registry in the Prometheus text format;
* ``/healthz``: 200 while the process's event loop is turning (a :class:`Heartbeat`), else 503;
* ``/readyz``: 200 when the process can do its job (the mount is live; a peer serves; a metadata
  member knows a leader), else 503.

Scrapes run in the server thread while the event loop changes the counters: collectors copy dicts
with ``list(...)`` (one C call under the GIL) before iterating, and read ints, which are atomic.
"""

from __future__ import annotations

import errno as errno_mod
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server
from wsgiref.types import StartResponse, WSGIApplication, WSGIEnvironment

import trio
from prometheus_client import CollectorRegistry, Counter, Histogram, PlatformCollector, ProcessCollector, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest

from .errors import UserError

log = logging.getLogger(__name__)

#: FUSE request latency buckets (seconds): from a cached getattr to a degraded read over the network.
LATENCY_BUCKETS = (25e-6, 50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3,
                   100e-3, 250e-3, 1.0, 5.0)


def new_registry() -> CollectorRegistry:
    """A registry with the process collectors (CPU, RSS, open fds, Python version)."""
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    return registry


def render(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)


# ---------------------------------------------------------------------------- collectors


class FamilyCollector:
    """A collector made of a function that yields metric families at scrape time."""

    def __init__(self, fn: Callable[[], Iterable[Metric]]):
        self._fn = fn

    def collect(self) -> Iterator[Metric]:
        try:
            yield from self._fn()
        except Exception:  # a scrape must never take the process down, nor hide the other metrics
            log.exception("metrics collector failed")

    def describe(self) -> list[Metric]:
        return []  # unchecked: families are only known at scrape time


def counter(name: str, doc: str, value: float, labels: dict[str, str] | None = None) -> CounterMetricFamily:
    fam = CounterMetricFamily(name, doc, labels=list(labels) if labels else None)
    fam.add_metric(list(labels.values()) if labels else [], value)
    return fam


def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


def labelled(kind: type[CounterMetricFamily | GaugeMetricFamily], name: str, doc: str, labels: list[str],
             rows: Iterable[tuple[list[str], float]]) -> Metric:
    fam = kind(name, doc, labels=labels)
    for values, value in rows:
        fam.add_metric(values, value)
    return fam


# ---------------------------------------------------------------------------- FUSE requests


@dataclass(slots=True)
class ProcStats:
    """What one process asked of the mount: requests, time they took, bytes it read."""

    requests: int = 0
    seconds: float = 0.0
    reads: int = 0
    read_bytes: int = 0
    cache_hits: int = 0      # extents its reads found in the memory or disk cache
    cache_misses: int = 0    # extents its reads had to fetch from the peers


class FuseRecorder:
    """Per-op FUSE request latency and errors, and per-process time spent in the filesystem."""

    #: Processes remembered at most; beyond it, ended ones are dropped.
    MAX_PROCS = 4096

    def __init__(self, registry: CollectorRegistry):
        self.latency = Histogram("lakefs_fuse_request_seconds", "FUSE requests handled by the daemon, by op",
                                 ["op"], buckets=LATENCY_BUCKETS, registry=registry)
        self.errors = Counter("lakefs_fuse_request_errors", "FUSE requests answered with an error, by op and errno",
                              ["op", "errno"], registry=registry)
        self._by_op: dict[str, Histogram] = {}
        self.procs: dict[int, ProcStats] = {}

    def record(self, op: str, seconds: float, err: int, pid: int) -> None:
        child = self._by_op.get(op)
        if child is None:
            child = self._by_op[op] = self.latency.labels(op)
        child.observe(seconds)
        if err:
            self.errors.labels(op, errno_mod.errorcode.get(err, str(err))).inc()
        if pid:
            proc = self._proc(pid)
            proc.requests += 1
            proc.seconds += seconds

    def read_done(self, pid: int, nbytes: int, hits: int, misses: int) -> None:
        """A read of ``nbytes`` by ``pid`` whose extents were ``hits`` from a cache, ``misses`` fetched."""
        if pid:
            proc = self._proc(pid)
            proc.reads += 1
            proc.read_bytes += nbytes
            proc.cache_hits += hits
            proc.cache_misses += misses

    def _proc(self, pid: int) -> ProcStats:
        proc = self.procs.get(pid)
        if proc is None:
            if len(self.procs) >= self.MAX_PROCS:
                self.prune()
            proc = self.procs[pid] = ProcStats()
        return proc

    def prune(self) -> None:
        for pid in [p for p in list(self.procs) if not os.path.exists(f"/proc/{p}")]:
            self.procs.pop(pid, None)
        while len(self.procs) >= self.MAX_PROCS:  # all alive: forget the oldest
            self.procs.pop(next(iter(self.procs)))

    def process_families(self) -> Iterator[Metric]:
        """Per-process metrics for ``.stats`` and ``lakefs-fuse top`` (live processes only; not on
        /metrics, where process ids would make unbounded series)."""
        self.prune()
        # FUSE names the calling thread; a process is its thread group (DataLoader workers are
        # processes of their own, the threads of one are summed).
        by_process: dict[int, ProcStats] = {}
        for tid, p in list(self.procs.items()):
            total = by_process.setdefault(_tgid(tid), ProcStats())
            total.requests += p.requests
            total.seconds += p.seconds
            total.reads += p.reads
            total.read_bytes += p.read_bytes
            total.cache_hits += p.cache_hits
            total.cache_misses += p.cache_misses
        rows = [([str(pid), _comm(pid)], p) for pid, p in by_process.items()]
        labels = ["pid", "comm"]
        yield labelled(CounterMetricFamily, "lakefs_process_fs_seconds",
                       "Seconds this process waited on the mount's request handlers", labels,
                       [(lv, p.seconds) for lv, p in rows])
        yield labelled(CounterMetricFamily, "lakefs_process_requests", "FUSE requests of this process",
                       labels, [(lv, p.requests) for lv, p in rows])
        yield labelled(CounterMetricFamily, "lakefs_process_read_bytes", "Bytes this process read through the daemon",
                       labels, [(lv, p.read_bytes) for lv, p in rows])
        yield labelled(CounterMetricFamily, "lakefs_process_cache_hits", "Extents its reads found in a cache",
                       labels, [(lv, p.cache_hits) for lv, p in rows])
        yield labelled(CounterMetricFamily, "lakefs_process_cache_misses", "Extents its reads fetched from peers",
                       labels, [(lv, p.cache_misses) for lv, p in rows])


def _tgid(tid: int) -> int:
    try:
        with open(f"/proc/{tid}/status") as f:
            for line in f:
                if line.startswith("Tgid:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return tid


def _comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return "?"


# ---------------------------------------------------------------------------- liveness


class Heartbeat:
    """Liveness: the event loop stamps the time every second; a stalled loop stops stamping."""

    def __init__(self, stale_after: float = 10.0):
        self.stale_after = stale_after
        self.last = time.monotonic()

    async def run(self) -> None:
        while True:
            self.last = time.monotonic()
            await trio.sleep(1.0)

    def alive(self) -> bool:
        return time.monotonic() - self.last < self.stale_after


# ---------------------------------------------------------------------------- HTTP


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    allow_reuse_address = True


class _Server6(_Server):
    address_family = socket.AF_INET6


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


def parse_listen(address: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``PORT`` (loopback); a clear UserError for anything else."""
    host, sep, port = address.rpartition(":")
    if not sep:
        host = "127.0.0.1"
    host = host.strip("[]") or "127.0.0.1"
    try:
        number = int(port)
    except ValueError:
        raise UserError(f"--metrics {address!r}: expected HOST:PORT or PORT") from None
    if not 0 <= number <= 65535:
        raise UserError(f"--metrics {address!r}: port out of range")
    return host, number


class MetricsServer:
    """The HTTP endpoint of one process, served by a daemon thread."""

    def __init__(self, address: str, registry: CollectorRegistry, *, alive: Callable[[], bool],
                 ready: Callable[[], bool]):
        host, port = parse_listen(address)
        metrics_app: WSGIApplication = make_wsgi_app(registry)  # prometheus_client types it as a bare Callable

        def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
            path = environ.get("PATH_INFO", "")
            if path in ("/metrics", "/"):
                return metrics_app(environ, start_response)
            if path in ("/healthz", "/readyz"):
                ok = alive() if path == "/healthz" else (alive() and ready())
                start_response("200 OK" if ok else "503 Service Unavailable", [("Content-Type", "text/plain")])
                return [b"ok\n" if ok else b"not ok\n"]
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"not found: try /metrics, /healthz or /readyz\n"]

        server_class = _Server6 if ":" in host else _Server
        try:
            self.httpd = make_server(host, port, app, server_class=server_class, handler_class=_QuietHandler)
        except OSError as exc:
            raise UserError(f"cannot serve metrics on {host}:{port}: {exc.strerror or exc}") from None
        self.address = f"{host}:{self.httpd.server_port}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="metrics-http", daemon=True)
        self._thread.start()
        log.info("metrics on http://%s/metrics", self.address)

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def start_endpoint(address: str, families: Callable[[], Iterable[Metric]],
                   ready: Callable[[], bool]) -> tuple[MetricsServer, Heartbeat]:
    """A server process's endpoint: its families plus the process collectors, and the heartbeat
    its event loop must run (``nursery.start_soon(heartbeat.run)``) for /healthz to say alive."""
    registry = new_registry()
    registry.register(FamilyCollector(families))
    heartbeat = Heartbeat()
    return MetricsServer(address, registry, alive=heartbeat.alive, ready=ready), heartbeat
