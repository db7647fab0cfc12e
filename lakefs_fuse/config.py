"""Configuration as data: frozen dataclasses with documented defaults and ``validate()``.

Every default lives here once: a dataclass field's default, or a named constant when the default
depends on another setting (:meth:`MountConfig.build` states those rules); the command line's
help text and shown defaults are read from here. The parsers of what users type -- sizes, EC
profiles, address lists (``HOST:PORT,...``) and member lists (``ID=HOST:PORT,...``) -- live here too,
so every command and server reads them alike.

Only the CLI and this module read flags and the environment. Base layer: imports ``errors``,
``wire`` (address syntax) and, inside ``validate``, ``metrics`` (listen syntax); no layer.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import wire
from .errors import UserError

MiB = 1 << 20
KiB = 1 << 10

#: Placement weight of a peer unless ``--weight`` says otherwise (format, ``peer add``): every
#: peer draws an equal share of new shards. A peer with twice the weight draws twice the share;
#: weight 0 takes no new shards (it still serves the ones it holds).
DEFAULT_PEER_WEIGHT = 1.0

#: How often a running cluster mount re-reads the peer records (``peer add/remove/weight`` made
#: elsewhere reach it within this many seconds).
PEER_REFRESH_SECONDS = 2.0

#: How long ``umount`` retries a busy mount before it gives up (what holds a mount is usually
#: about to let go: a job or shell ending, files the kernel is still releasing).
UMOUNT_BUSY_WAIT = 10.0

#: Seconds one request may wait for a metadata cluster, across all its calls and leader changes,
#: before it fails (a mount's ``--meta-timeout``; the operator commands' requests too).
META_TIMEOUT = 30.0

#: Seconds the kernel caches attributes and entries of a dataset mount unless ``--attr-timeout``
#: says otherwise (nothing changes under a dataset mount; see :meth:`MountConfig.build`).
DATASET_ATTR_TIMEOUT = 3600.0

#: ``pack_delay`` of a cluster lake's mounts unless told otherwise: 0, so a file closed on one
#: mount is committed at close and opens complete on every other mount (close-to-open between
#: mounts). An embedded lake has one mount and packs for ``MountConfig.pack_delay`` seconds.
CLUSTER_PACK_DELAY = 0.0

#: ``gc --grace`` unless told otherwise: an unmounted embedded lake has no writer mid-way, so an
#: orphan shard is garbage at once; a cluster lake's mounts may be writing the chunk a shard
#: belongs to while gc runs, so its orphans must stay orphans this long first.
GC_GRACE_EMBEDDED = 0.0
GC_GRACE_CLUSTER = 300.0

#: Worker threads for shard I/O on local peers (a mount's ``io_threads``; every opened lake's default).
IO_THREADS = 16

#: The disk cache stops adding entries when its filesystem has less free space than this
#: (``--cache-free-floor``; :class:`~lakefs_fuse.chunks.diskcache.DiskCache`'s own default too).
CACHE_FREE_FLOOR = 1024 * 1024 * 1024

#: Files ``import`` reads and writes at once unless ``--jobs`` says otherwise.
IMPORT_JOBS = 8

#: A metadata server snapshots its state and truncates its Raft log every this many applied
#: entries unless ``meta serve --snapshot-every`` says otherwise (RaftConfig's own default is
#: for in-process clusters in tests).
META_SNAPSHOT_EVERY = 20000


def default_data_dir() -> Path:
    """Where a zero-configuration embedded lake lives (``$LAKEFS_FUSE_DATA`` overrides)."""
    env = os.environ.get("LAKEFS_FUSE_DATA")
    if env:
        return Path(env)
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(base) / "lakefs-fuse" / "lake"


def default_cache_dir() -> Path:
    """Where a cluster mount keeps its disk cache unless told otherwise."""
    if os.geteuid() == 0:
        return Path("/var/cache/lakefs-fuse")
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "lakefs-fuse"


def runtime_dir() -> Path:
    """Where running mounts register themselves (pid, data dir) for ``umount``."""
    env = os.environ.get("LAKEFS_FUSE_RUNTIME")
    if env:
        return Path(env)
    if os.geteuid() == 0:
        return Path("/run/lakefs-fuse")
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    return Path(xdg) / "lakefs-fuse" if xdg else Path("/tmp") / f"lakefs-fuse-{os.geteuid()}"


_SIZE = re.compile(r"^\s*(\d+)\s*([KMGT]?)(i?B)?\s*$", re.IGNORECASE)


def parse_size(text: str) -> int:
    """'4M', '4MiB', '65536', '1G' -> bytes (binary units)."""
    m = _SIZE.match(text)
    if not m:
        raise UserError(f"not a size: {text!r} (use e.g. 4M, 64K, 1G)")
    unit = {"": 1, "K": KiB, "M": MiB, "G": 1 << 30, "T": 1 << 40}[m.group(2).upper()]
    return int(m.group(1)) * unit


def format_size(n: int) -> str:
    """Bytes as :func:`parse_size` reads them, in the largest exact unit: 268435456 -> '256M'."""
    for unit, scale in (("T", 1 << 40), ("G", 1 << 30), ("M", MiB), ("K", KiB)):
        if n and n % scale == 0:
            return f"{n // scale}{unit}"
    return str(n)


def split_list(text: str) -> list[str]:
    """A comma-separated list as typed: items stripped, empty ones dropped."""
    return [part.strip() for part in text.split(",") if part.strip()]


def parse_addresses(text: str, option: str = "--meta") -> list[str]:
    """'HOST:PORT,HOST:PORT,...' -> the addresses, each checked (``option`` names the flag in errors)."""
    addresses = split_list(text)
    if not addresses:
        raise UserError(f"{option} needs at least one HOST:PORT")
    for a in addresses:
        try:
            wire.parse_address(a)
        except ValueError as exc:
            raise UserError(f"{option} {a!r}: {exc}") from None
    return addresses


def parse_members(text: str, option: str = "--peers") -> dict[int, str]:
    """'1=HOST:PORT,2=HOST:PORT,...' (a metadata cluster's members) -> {1: 'HOST:PORT', ...}."""
    members: dict[int, str] = {}
    for part in split_list(text):
        ident, sep, address = part.partition("=")
        if not sep:
            raise UserError(f"{option} entry {part!r} is not ID=HOST:PORT")
        try:
            node_id = int(ident)
        except ValueError:
            raise UserError(f"{option} entry {part!r}: the id must be a number") from None
        if node_id < 1:
            raise UserError(f"{option} entry {part!r}: ids start at 1")
        try:
            wire.parse_address(address)
        except ValueError as exc:
            raise UserError(f"{option} entry {part!r}: {exc}") from None
        if node_id in members:
            raise UserError(f"{option} names member {node_id} twice")
        members[node_id] = address
    if not members:
        raise UserError(f"{option} is empty")
    if len(set(members.values())) != len(members):
        raise UserError(f"{option} gives two members the same address")
    return members


def parse_ec(text: str) -> tuple[int, int]:
    m = re.match(r"^\s*(\d+)\s*\+\s*(\d+)\s*$", text)
    if not m:
        raise UserError(f"not an erasure-coding profile: {text!r} (use K+M, e.g. 4+2)")
    return int(m.group(1)), int(m.group(2))


@dataclass(frozen=True)
class LakeConfig:
    """Fixed when a lake is formatted; stored in its metadata.

    ec_k + ec_m shards per chunk live on distinct peers, so a lake needs at least
    ec_k + ec_m peers. Chunks shorter than ec_k * min_shard use fewer data shards
    (same ec_m), so a 100 KB file costs 2 data-shard files, not ec_k.
    """

    ec_k: int = 4
    ec_m: int = 2
    chunk_size: int = 4 * MiB
    min_shard: int = 64 * KiB

    def validate(self, n_peers: int | None = None) -> None:
        if not 1 <= self.ec_k <= 32:
            raise UserError(f"EC data shards must be 1..32, got {self.ec_k}")
        if not 1 <= self.ec_m <= 16:
            raise UserError(f"EC parity shards must be 1..16, got {self.ec_m}")
        if self.ec_k + self.ec_m > 255:
            raise UserError("EC profile too wide")
        if not 64 * KiB <= self.chunk_size <= 64 * MiB or self.chunk_size % (64 * KiB):
            raise UserError("chunk size must be a multiple of 64K between 64K and 64M")
        if self.min_shard < 4 * KiB or self.min_shard > self.chunk_size:
            raise UserError("min shard size must be between 4K and the chunk size")
        if n_peers is not None and n_peers < self.ec_k + self.ec_m:
            raise UserError(
                f"EC {self.ec_k}+{self.ec_m} needs at least {self.ec_k + self.ec_m} peers, got {n_peers}"
            )


@dataclass(frozen=True)
class MountConfig:
    """How one mount behaves. Defaults follow close-to-open consistency."""

    mountpoint: Path
    #: The embedded lake's data directory (unused when ``meta`` names metadata servers).
    data_dir: Path | None
    #: Metadata servers (HOST:PORT) of a cluster lake; empty for an embedded lake.
    meta: tuple[str, ...] = ()
    #: The cluster secret (a cluster lake's mounts need it for metadata and peer servers).
    secret_file: Path | None = None
    #: CA/certificate to trust for TLS to peer servers (cluster lakes).
    tls_ca: Path | None = None
    #: Seconds one request may wait for the metadata service, across all its calls, before it fails
    #: with EIO (cluster lakes; see meta/budget.py).
    meta_timeout: float = META_TIMEOUT
    read_only: bool = False
    #: Dataset mode: read-only, long TTLs, negative lookups and listings cached (see the CLI help).
    dataset: bool = False
    allow_other: bool = False
    #: Seconds the kernel may cache attributes and entries (dataset mode raises them).
    attr_timeout: float = 1.0
    entry_timeout: float = 1.0
    #: Dirty (unsealed) bytes across all files before writers wait for seals.
    dirty_budget: int = 256 * MiB
    #: Seconds a closed file's data may wait to be packed with the next files closed
    #: (0 = seal and commit at every close). Bounds what a daemon crash can lose of
    #: closed-but-not-fsynced files. An embedded lake's default; a cluster lake's mounts use
    #: :data:`CLUSTER_PACK_DELAY` unless told otherwise (:meth:`build`).
    pack_delay: float = 2.0
    #: Seconds a peer must stay down before the daemon rebuilds its shards elsewhere
    #: (missing or corrupt shards on live peers are rebuilt at once).
    repair_delay: float = 300.0
    #: Seconds between compaction passes (copying the live bytes out of chunks whose files use
    #: at most half of them, so deleted data is reclaimed); 0 = off.
    compact_interval: float = 300.0
    #: In-memory cache of immutable chunk ranges.
    memory_cache: int = 512 * MiB
    #: Sequential read-ahead window cap (whole chunks fetched ahead).
    readahead_max: int = 32 * MiB
    #: Kernel read-ahead for the mount's bdi; 1024 KiB makes buffered reads arrive as 1 MiB requests.
    read_ahead_kb: int = 1024
    #: Parallel shard I/O threads (local peers).
    io_threads: int = IO_THREADS
    #: Local disk cache of chunk ranges (survives remounts); None = off.
    cache_dir: Path | None = None
    cache_size: int = 10 * 1024 * MiB
    #: The disk cache stops adding entries when its filesystem has less free space than this.
    cache_free_floor: int = CACHE_FREE_FLOOR
    #: Sampler-order prefetch (the .prefetch control file): files and bytes kept fetched ahead of
    #: the file the loader opened last.
    prefetch_files: int = 64
    prefetch_bytes: int = 64 * MiB
    #: Sequential read-ahead: bytes being fetched ahead at once, over all open files.
    readahead_budget: int = 256 * MiB
    extra_fuse_options: tuple[str, ...] = field(default_factory=tuple)
    #: HOST:PORT (or PORT, on loopback) for /metrics, /healthz and /readyz; None: not served.
    metrics: str | None = None

    @classmethod
    def build(cls, mountpoint: Path, *, data_dir: Path | None = None, meta: tuple[str, ...] | list[str] = (),
              secret_file: Path | None = None, tls_ca: Path | None = None, cache_dir: Path | None = None,
              dataset: bool = False, read_only: bool = False, disk_cache: bool = True,
              attr_timeout: float | None = None, pack_delay: float | None = None, **settings: Any) -> MountConfig:
        """A mount's config from what its user gave (``None``: not given). The defaults that depend
        on other settings are decided here, and only here:

        - ``attr_timeout`` and ``entry_timeout``: :data:`DATASET_ATTR_TIMEOUT` in dataset mode,
          else the field's default;
        - ``read_only``: always in dataset mode;
        - ``pack_delay``: :data:`CLUSTER_PACK_DELAY` with ``meta``, else the field's default;
        - ``cache_dir``: :func:`default_cache_dir` with ``meta`` (its peers are across the network),
          none for an embedded lake (its peers are local disks), none whenever ``disk_cache`` is off.

        The secret, CA and cache paths are made absolute (the daemon runs elsewhere). Any other
        field is passed through ``settings``; call :meth:`validate` on the result.
        """
        cluster = bool(meta)
        ttl = attr_timeout if attr_timeout is not None else (DATASET_ATTR_TIMEOUT if dataset else cls.attr_timeout)
        if not disk_cache:
            cache_dir = None
        elif cache_dir is None and cluster:
            cache_dir = default_cache_dir()
        if pack_delay is None:
            pack_delay = CLUSTER_PACK_DELAY if cluster else cls.pack_delay
        return cls(mountpoint=mountpoint, data_dir=data_dir, meta=tuple(meta),
                   secret_file=Path(secret_file).resolve() if secret_file else None,
                   tls_ca=Path(tls_ca).resolve() if tls_ca else None,
                   cache_dir=Path(cache_dir).resolve() if cache_dir else None,
                   read_only=read_only or dataset, dataset=dataset, attr_timeout=ttl, entry_timeout=ttl,
                   pack_delay=pack_delay, **settings)

    @classmethod
    def unmounted(cls, *, pack_delay: float) -> MountConfig:
        """The config of a VFS that a tool drives in its own process, with no kernel and no
        mountpoint (``import``, ``restripe``): a mount's defaults, and the tool's pack delay."""
        return cls(mountpoint=Path("/"), data_dir=None, pack_delay=pack_delay)

    def validate(self) -> None:
        if self.attr_timeout < 0 or self.entry_timeout < 0:
            raise UserError("timeouts must be >= 0")
        if self.dirty_budget < 8 * MiB:
            raise UserError("dirty budget must be at least 8M")
        if not 0 <= self.pack_delay <= 60:
            raise UserError("pack delay must be between 0 and 60 seconds")
        if self.cache_dir is not None and self.cache_size < 16 * MiB:
            raise UserError("cache size must be at least 16M")
        if self.compact_interval < 0:
            raise UserError("compact interval must be >= 0 (0 = off)")
        if not 1 <= self.meta_timeout <= 3600:
            raise UserError("metadata timeout must be between 1 and 3600 seconds")
        if self.metrics is not None:
            from .metrics import parse_listen
            parse_listen(self.metrics)
        if self.read_ahead_kb < 128:
            raise UserError("read_ahead_kb must be at least 128")
