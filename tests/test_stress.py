"""Stress tests on a live mount: fio with data verification and stress-ng file-system stressors.

fio writes blocks carrying checksums (``--verify``) and reads them back; the random-write
workload is verified twice: by fio right after writing (served largely by the daemon's
write buffers and the page cache) and again, after an unmount and a fresh mount, with
``--verify_only`` (every block now comes from the erasure-coded shards). After every run the
daemon must still be alive, the mount must answer, and the daemon log must hold no
unexpected-error traceback.
"""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from conftest import LiveLake, _alive, needs_fuse

FIO = "/usr/bin/fio"
STRESS_NG = "/usr/bin/stress-ng"


def run(cmd: list[str], timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd="/")


def fio(lake: LiveLake, *args: str, timeout: float = 100) -> dict:
    """Run fio in the mount; require exit 0, no job error and no verify complaint."""
    # --verify_state_save=0: fio would otherwise leave *-verify.state files in its cwd
    res = run([FIO, f"--directory={lake.mnt}", "--output-format=json", "--verify_state_save=0", *args], timeout)
    where = f"fio {' '.join(args)}\nstderr: {res.stderr[-3000:]}\ndaemon log: {lake.log()}"
    assert res.returncode == 0, f"exit status {res.returncode}: {where}"
    assert "verify" not in res.stderr.lower() and "bad magic" not in res.stderr.lower(), where
    report = json.loads(res.stdout[res.stdout.index("{"):])
    for job in report["jobs"]:
        assert job["error"] == 0, f"job {job['jobname']}: error {job['error']}: {where}"
    return report


def assert_daemon_healthy(lake: LiveLake) -> None:
    pid = lake.pid()
    assert pid and _alive(pid), f"mount daemon is gone; log:\n{lake.log()}"
    os.stat(lake.mnt)
    os.listdir(lake.mnt)
    log = (lake.data / "mount.log").read_text()
    assert "unexpected error" not in log and "Traceback" not in log, log[-6000:]


def io_bytes(report: dict, kind: str) -> int:
    return sum(job[kind]["io_bytes"] for job in report["jobs"])


RANDOM_JOB = ("--name=rand", "--rw=randwrite", "--bsrange=4k-1m", "--size=64m", "--numjobs=2",
              "--verify=crc32c", "--randrepeat=1", "--fsync_on_close=1")


@needs_fuse
@pytest.mark.timeout(120)
def test_fio_random_write_verify_then_verify_after_remount(live):
    report = fio(live, *RANDOM_JOB, "--do_verify=1", "--verify_fatal=1")
    assert io_bytes(report, "write") == 2 * 64 * 2**20
    assert io_bytes(report, "read") == 2 * 64 * 2**20  # the verify pass read everything back
    assert_daemon_healthy(live)
    files = sorted(p.name for p in live.mnt.iterdir())
    assert len(files) == 2 and all((live.mnt / f).stat().st_size == 64 * 2**20 for f in files), files

    live.remount()  # nothing cached any more: verify what the shards hold
    report = fio(live, *RANDOM_JOB, "--verify_only", "--verify_fatal=1")
    assert io_bytes(report, "read") == 2 * 64 * 2**20
    assert_daemon_healthy(live)


@needs_fuse
@pytest.mark.timeout(120)
def test_fio_sequential_write_read_verify(live):
    # buffered 1 MiB sequential writes with sha256 verification, then an O_DIRECT job
    # (direct_io through FUSE: no page cache on either side) with odd-sized blocks
    report = fio(live, "--name=seq", "--rw=write", "--bs=1m", "--size=64m", "--verify=sha256",
                 "--do_verify=1", "--verify_fatal=1", "--fsync_on_close=1")
    assert io_bytes(report, "write") == 64 * 2**20 and io_bytes(report, "read") == 64 * 2**20
    report = fio(live, "--name=direct", "--rw=write", "--bs=192k", "--size=48m", "--direct=1",
                 "--verify=md5", "--do_verify=1", "--verify_fatal=1")
    assert io_bytes(report, "read") == io_bytes(report, "write") > 0
    assert_daemon_healthy(live)
    live.remount()
    report = fio(live, "--name=seq", "--rw=write", "--bs=1m", "--size=64m", "--verify=sha256",
                 "--verify_only", "--verify_fatal=1")
    assert io_bytes(report, "read") == 64 * 2**20
    assert_daemon_healthy(live)


@needs_fuse
@pytest.mark.timeout(120)
def test_stress_ng_hdd_verify(live):
    res = run([STRESS_NG, "--hdd", "2", "--hdd-bytes", "32m", "--timeout", "15s", "--verify",
               "--temp-path", str(live.mnt), "--metrics-brief"], 100)
    out = res.stdout + res.stderr
    assert res.returncode == 0, f"stress-ng exit {res.returncode}:\n{out[-4000:]}\n{live.log()}"
    assert "fail" not in out.lower() and "successful run completed" in out, out[-4000:]
    assert_daemon_healthy(live)
    assert os.listdir(live.mnt) == [], "stress-ng left files behind (unlink failed?)"


@needs_fuse
@pytest.mark.timeout(120)
def test_stress_ng_namespace(live):
    # directory churn, renames, dentry create/lookup/unlink and seeks, concurrently
    res = run([STRESS_NG, "--dir", "1", "--rename", "1", "--dentry", "1", "--seek", "1",
               "--timeout", "8s", "--verify", "--temp-path", str(live.mnt), "--metrics-brief"], 100)
    out = res.stdout + res.stderr
    assert res.returncode == 0, f"stress-ng exit {res.returncode}:\n{out[-4000:]}\n{live.log()}"
    assert "fail" not in out.lower() and "successful run completed" in out, out[-4000:]
    assert_daemon_healthy(live)
    assert os.listdir(live.mnt) == [], "stress-ng left files behind"
    # and the lake still works for ordinary I/O afterwards
    (live.mnt / "after").write_bytes(b"x" * 100_000)
    live.remount()
    assert (live.mnt / "after").read_bytes() == b"x" * 100_000
