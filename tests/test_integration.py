"""System integration: ``mount -t fuse.lakefs`` and fstab lines, the configuration file with
environment overrides, and the systemd unit templates."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

from conftest import REPO, LiveLake, cli, is_mountpoint, needs_fuse, take_down


def config_of(mnt: Path) -> dict:
    return json.loads((mnt / ".config").read_text())


@needs_fuse
@pytest.mark.timeout(180)
@pytest.mark.skipif(shutil.which("mount") is None, reason="needs mount(8)")
def test_mount_t_fuse_lakefs_and_an_fstab_line(helper, tmp_path):
    lake = LiveLake(tmp_path / "lake")
    env = {**os.environ, **lake.env}
    try:
        lake.mount()
        (lake.mnt / "hello").write_bytes(b"from fstab\n")
        lake.umount()

        res = subprocess.run(["mount", "-t", "fuse.lakefs", str(lake.data), str(lake.mnt),
                              "-o", "defaults,_netdev,dataset,memory_cache=64M,attr-timeout=30"],
                             env=env, capture_output=True, text=True, timeout=90)
        assert res.returncode == 0, res.stderr
        assert is_mountpoint(lake.mnt) and (lake.mnt / "hello").read_bytes() == b"from fstab\n"
        cfg = config_of(lake.mnt)
        assert cfg["dataset"] and cfg["read_only"] and cfg["memory_cache"] == 64 << 20 and cfg["attr_timeout"] == 30
        lake.umount()

        fstab = tmp_path / "fstab"
        fstab.write_text(f"# a test fstab\n"
                         f"{lake.data}  {lake.mnt}  fuse.lakefs  _netdev,nofail,ro,x-systemd.automount  0 0\n")
        res = subprocess.run(["mount", "-T", str(fstab), str(lake.mnt)], env=env, capture_output=True, text=True,
                             timeout=90)
        assert res.returncode == 0, res.stderr
        assert is_mountpoint(lake.mnt) and config_of(lake.mnt)["read_only"] and not config_of(lake.mnt)["dataset"]
        with pytest.raises(OSError):
            (lake.mnt / "new").write_bytes(b"x")
        lake.umount()

        for opts, message in (("bogus=1", "unknown mount option 'bogus=1'"), ("dataset=yes", "takes no value"),
                              ("cache_size", "needs a value")):
            res = subprocess.run(["mount", "-t", "fuse.lakefs", str(lake.data), str(lake.mnt), "-o", opts],
                                 env=env, capture_output=True, text=True, timeout=60)
            assert res.returncode != 0 and message in res.stderr, (opts, res.stderr)
            assert not is_mountpoint(lake.mnt)
    finally:
        take_down(lake.mnt, lake.pid())


@needs_fuse
@pytest.mark.timeout(180)
def test_config_file_then_environment_then_command_line(tmp_path):
    lake = LiveLake(tmp_path / "lake")
    conf = tmp_path / "config.toml"
    conf.write_text(f'[mount]\ndata = "{lake.data}"\nmemory-cache = "64M"\nattr_timeout = 7\n')
    try:
        cli("--config", str(conf), "mount", str(lake.mnt), env=lake.env, check=True)
        cfg = config_of(lake.mnt)
        assert cfg["memory_cache"] == 64 << 20 and cfg["attr_timeout"] == 7 and cfg["data_dir"] == str(lake.data)
        lake.umount()
        env = {**lake.env, "LAKEFS_FUSE_CONFIG": str(conf), "LAKEFS_FUSE_MOUNT_MEMORY_CACHE": "128M"}
        cli("mount", str(lake.mnt), env=env, check=True)  # the file found through the environment
        cfg = config_of(lake.mnt)
        assert cfg["memory_cache"] == 128 << 20 and cfg["attr_timeout"] == 7  # env beats the file
        lake.umount()
        cli("mount", str(lake.mnt), "--memory-cache", "96M", env=env, check=True)
        assert config_of(lake.mnt)["memory_cache"] == 96 << 20  # the command line beats both
        lake.umount()
    finally:
        take_down(lake.mnt, lake.pid())


@pytest.mark.parametrize("text, message", [
    ('[mount]\ncache_sise = "1G"\n', "[mount] has no option 'cache_sise'"),
    ('[mountt]\nx = 1\n', "[mountt] is not a command"),
    ('[peer.serve]\nlisten = ["a", "b"]\n', "listen takes one value"),
    ('[status]\njson = "maybe"\n', "[status] json:"),
    ('[mount\n', "not valid TOML"),
    ('mount = 3\n', "mount must be a table"),
])
def test_bad_config_is_one_line_naming_the_key(tmp_path, text, message):
    conf = tmp_path / "bad.toml"
    conf.write_text(text)
    res = cli("--config", str(conf), "status", "--data", str(tmp_path / "nolake"))
    assert res.returncode == 1 and message in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert "nolake" not in res.stderr  # stopped at the file, before the command ran
    res = cli("--config", str(tmp_path / "missing.toml"), "status")
    assert res.returncode == 1 and "does not exist" in res.stderr


def test_example_config_lists_every_key_and_is_the_documented_one():
    import re
    text = cli("config", "example", check=True).stdout
    keys = [line[2:] for line in text.splitlines() if re.match(r"^# [a-z0-9-]+ = ", line)]
    tables = [line for line in text.splitlines() if line.startswith("[")]
    body = []
    for line in text.splitlines():  # uncomment every key: the file must then be valid TOML
        if line.startswith("[") or re.match(r"^# [a-z0-9-]+ = ", line):
            body.append(line[2:] if line.startswith("# ") else line.split("  #")[0])
    full = tomllib.loads("\n".join(body))
    assert set(full) >= {"mount", "peer", "meta", "format", "status"}
    assert {"cache-size", "memory-cache", "dataset", "metrics", "meta-timeout"} <= set(full["mount"])
    assert {"listen", "data", "secret-file", "metrics"} <= set(full["peer"]["serve"])
    assert {"id", "listen", "peers", "snapshot-every"} <= set(full["meta"]["serve"])
    assert len(keys) > 60 and len(tables) > 15
    documented = (REPO / "docs" / "configuration.md").read_text()
    assert text.strip() in documented, "docs/configuration.md is stale: paste `lakefs-fuse config example`"


def test_systemd_units_verify(tmp_path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("needs systemd-analyze")
    units = sorted((REPO / "contrib" / "systemd").glob("*.service"))
    assert {u.name for u in units} == {"lakefs-peer@.service", "lakefs-meta@.service", "lakefs-mount@.service"}
    lakefs = shutil.which("lakefs-fuse") or str(Path(os.sys.executable).parent / "lakefs-fuse")
    for unit in units:
        text = unit.read_text().replace("/opt/lakefs-fuse/.venv/bin/lakefs-fuse", lakefs)
        target = tmp_path / unit.name.replace("@.", "@x.")
        target.write_text(text)
        res = subprocess.run([analyze, "verify", "--man=no", str(target)], capture_output=True, text=True, timeout=60)
        assert res.returncode == 0, res.stderr
        # the command it starts exists and parses its options
        start = next(line for line in text.splitlines() if line.startswith("ExecStart="))
        words = start.split("=", 1)[1].split()
        cmd = [w for w in words[3:] if not w.startswith("$")]  # after: lakefs-fuse --config FILE
        res = cli(*cmd, "--help")
        assert res.returncode == 0, (unit.name, res.stderr)
