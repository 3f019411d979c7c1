"""A real S3-compatible server for tests and benchmarks (tests/server/test_object_storage.py,
bench/objectstore/): SeaweedFS's `weed mini` (master, volume server, filer and S3 gateway in one
process), built from source by tests/server/install-seaweedfs.sh, on 127.0.0.1 with free ports
and credentials of its own; plus boto3 to look at the bucket directly, past sluice-server.

The binary: $SLUICE_SEAWEEDFS (set by tests/run), else the cached build. Without it the
object-storage tests skip, unless $SLUICE_S3_REQUIRED is set (tests/run sets it): then they fail.
"""

from __future__ import annotations

import glob
import json
import os
import random
import socket
import subprocess
import time
from pathlib import Path

import pytest

BUCKET = "sluice-homes"
ACCESS_KEY = "SLUICETESTACCESSKEY1"
SECRET_KEY = "sluice-test-secret-key-0123456789abcdefgh"
REGION = "us-east-1"


def weed_binary() -> str:
    """Path of `weed`; skips (or fails when $SLUICE_S3_REQUIRED is set) when there is none."""
    env = os.environ.get("SLUICE_SEAWEEDFS")
    candidates = [env] if env else sorted(glob.glob(os.path.expanduser("~/.cache/sluice/seaweedfs-*/weed")))
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    message = ("SeaweedFS (weed) is not built; tests/server/install-seaweedfs.sh builds it "
               "(tests/run does, and sets SLUICE_SEAWEEDFS)")
    if os.environ.get("SLUICE_S3_REQUIRED"):
        pytest.fail(message)
    pytest.skip(message)


def _free_ports(count: int) -> list[int]:
    """`count` distinct free ports below the ephemeral range, each with its +10000 twin free
    too (SeaweedFS derives gRPC ports that way unless told)."""
    chosen: list[int] = []
    while len(chosen) < count:
        port = random.randint(20000, 22000)
        if port in chosen:
            continue
        try:
            for p in (port, port + 10000):
                with socket.socket() as probe:
                    probe.bind(("127.0.0.1", p))
        except OSError:
            continue
        chosen.append(port)
    return chosen


class SeaweedFS:
    """`weed mini` on 127.0.0.1 with one bucket and one access key."""

    def __init__(self, directory: Path):
        self.dir = directory
        self.data = directory / "data"
        self.data.mkdir(parents=True, exist_ok=True)
        self.log = directory / "weed.log"
        (self.master, self.volume, self.filer, self.s3) = _free_ports(4)
        self.endpoint = f"http://127.0.0.1:{self.s3}"
        self.config = directory / "s3.json"
        self.config.write_text(json.dumps({"identities": [{
            "name": "sluice",
            "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
            "actions": ["Admin", "Read", "List", "Tagging", "Write"],
        }]}))
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 90) -> "SeaweedFS":
        args = [
            weed_binary(), "mini", f"-dir={self.data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            f"-master.port={self.master}", f"-master.port.grpc={self.master + 10000}",
            f"-volume.port={self.volume}", f"-volume.port.grpc={self.volume + 10000}",
            f"-filer.port={self.filer}", f"-filer.port.grpc={self.filer + 10000}",
            f"-s3.port={self.s3}", f"-s3.port.grpc={self.s3 + 10000}",
            "-s3.port.iceberg=0", "-s3.port.lance=0", "-webdav=false", "-admin.ui=false",
            f"-s3.config={self.config}", f"-bucket={BUCKET}",
        ]
        self._log = open(self.log, "ab")
        self.proc = subprocess.Popen(args, stdout=self._log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, cwd=self.dir)
        deadline = time.monotonic() + timeout
        last: object = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"weed mini exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                self.client().head_bucket(Bucket=BUCKET)
                return self
            except Exception as exc:  # noqa: BLE001 - not up yet
                last = exc
            time.sleep(0.5)
        self.stop()
        pytest.fail(f"weed mini not serving S3 within {timeout}s (last: {last}):\n{self.log_tail()}")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if getattr(self, "_log", None):
            self._log.close()

    def log_tail(self, size: int = 6000) -> str:
        try:
            return self.log.read_text(errors="replace")[-size:]
        except OSError:
            return ""

    # -- looking at the bucket directly ------------------------------------------------------
    def client(self):
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3", endpoint_url=self.endpoint, aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY, region_name=REGION,
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 2},
                          connect_timeout=5, read_timeout=30),
        )

    def keys(self, prefix: str = "") -> list[str]:
        """Every key in the bucket under `prefix`."""
        found: list[str] = []
        paginator = self.client().get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=BUCKET, Prefix=prefix):
            found.extend(item["Key"] for item in page.get("Contents", []))
        return found

    def get(self, key: str) -> bytes | None:
        client = self.client()
        try:
            return client.get_object(Bucket=BUCKET, Key=key)["Body"].read()
        except client.exceptions.NoSuchKey:
            return None

    def put(self, key: str, data: bytes) -> None:
        self.client().put_object(Bucket=BUCKET, Key=key, Body=data)

    def credential_files(self, directory: Path) -> tuple[Path, Path]:
        directory.mkdir(parents=True, exist_ok=True)
        key_id, secret = directory / "access-key-id", directory / "secret-access-key"
        key_id.write_text(ACCESS_KEY + "\n")
        secret.write_text(SECRET_KEY + "\n")
        return key_id, secret

    def storage_config(self, directory: Path, prefix: str) -> dict:
        """The server.yaml `storage` section for homes under `prefix` of the bucket."""
        key_id, secret = self.credential_files(directory)
        return {"objectStore": {
            "endpoint": self.endpoint, "bucket": BUCKET, "prefix": prefix, "region": REGION,
            "accessKeyIdFile": str(key_id), "secretAccessKeyFile": str(secret), "pathStyle": True,
        }}
