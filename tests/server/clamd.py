"""A real clamd for tests and benchmarks (tests/server/test_scanning.py,
bench/scanning/scan_bench.py): Debian's clamd in the foreground on 127.0.0.1 and a Unix
socket, with a signature database written here (no freshclam, no network) or one given.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

# The EICAR test file: harmless, and every scanner's agreed test signature.
EICAR = b"X5O!P%@AP[4\\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"
# clamd appends ".UNOFFICIAL" to signatures from databases it has no digital signature for.
SIGNATURE = "Sluice-Test-EICAR.UNOFFICIAL"


def clamd_binary() -> str:
    found = shutil.which("clamd") or ("/usr/sbin/clamd" if Path("/usr/sbin/clamd").exists() else None)
    if found is None:
        # Not a skip: without clamd nothing here is tested. tests/run installs it.
        pytest.fail("clamd is not installed; tests/run installs it (apt-get install clamav-daemon)")
    return found


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Clamd:
    """A real clamd in the foreground with a one-signature database written here."""

    def __init__(self, directory: Path, database: Path | None = None, limit_bytes: int = 64 << 20):
        """`database`: a directory of signatures to use instead of the one-signature test
        database; `limit_bytes`: clamd's StreamMaxLength, MaxFileSize and MaxScanSize (above
        MaxFileSize clamd answers OK without scanning)."""
        self.dir = directory
        self.db = database or directory / "db"
        if database is None:
            self.db.mkdir(parents=True, exist_ok=True)
            # An .ndb body signature: any target type, any offset, the EICAR bytes in hex.
            (self.db / "sluice-test.ndb").write_text(f"Sluice-Test-EICAR:0:*:{EICAR.hex()}\n")
        self.port = free_port()
        self.socket_path = directory / "clamd.sock"
        self.log = directory / "clamd.log"
        self.conf = directory / "clamd.conf"
        self.conf.write_text(
            "\n".join([
                f"DatabaseDirectory {self.db}",
                "TCPAddr 127.0.0.1",
                f"TCPSocket {self.port}",
                f"LocalSocket {self.socket_path}",
                "Foreground yes",
                f"LogFile {self.log}",
                f"TemporaryDirectory {directory}",
                f"StreamMaxLength {limit_bytes}",
                f"MaxFileSize {limit_bytes}",
                f"MaxScanSize {limit_bytes}",
                "SelfCheck 3600",
                "",
            ])
        )
        self.proc: subprocess.Popen | None = None

    @property
    def tcp(self) -> str:
        return f"tcp://127.0.0.1:{self.port}"

    @property
    def unix(self) -> str:
        return f"unix:{self.socket_path}"

    def start(self, timeout: float = 60) -> "Clamd":
        self.proc = subprocess.Popen(
            [clamd_binary(), "-c", str(self.conf)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                log = self.log.read_text(errors="replace") if self.log.exists() else ""
                pytest.fail(f"clamd exited with {self.proc.returncode}:\n{log[-3000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    s.sendall(b"zPING\0")
                    if s.recv(16).startswith(b"PONG"):
                        return self
            except OSError:
                pass
            time.sleep(0.1)
        self.stop()
        pytest.fail("clamd did not answer PING in time")

    def instream(self, path: Path, chunk: int = 256 * 1024) -> tuple[bytes, float]:
        """clamd's reply to an INSTREAM of the file at `path`, and the seconds it took."""
        import struct

        started = time.monotonic()
        with socket.create_connection(("127.0.0.1", self.port), timeout=600) as s, open(path, "rb") as f:
            s.sendall(b"zINSTREAM\0")
            while block := f.read(chunk):
                s.sendall(struct.pack(">I", len(block)) + block)
            s.sendall(struct.pack(">I", 0))
            reply = b""
            while part := s.recv(4096):
                reply += part
        return reply, time.monotonic() - started

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


