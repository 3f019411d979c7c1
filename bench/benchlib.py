"""What the benchmarks share: which sluice-server binary to measure, sizes given as 64M or 1G,
a random payload file, and the client's CPU with what a target rate leaves for the server."""

from __future__ import annotations

import os
import re
import resource
import sys
from pathlib import Path


def pick_binary(explicit: str | None) -> Path:
    """`explicit`, else the release build under $CARGO_TARGET_DIR, else the debug build."""
    if explicit:
        return Path(explicit)
    target = Path(os.environ.get("CARGO_TARGET_DIR", "/root/.cache/sluice/target"))
    for profile in ("release", "debug"):
        path = target / profile / "sluice-server"
        if path.is_file():
            return path
    sys.exit(f"no sluice-server under {target}/release or {target}/debug; build it or pass --server-bin")


def parse_size(text: str) -> int:
    """Bytes from `123`, `64K`, `64M` or `1G`; exits naming --size otherwise."""
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    match = re.fullmatch(r"(\d+)([KMG]?)", text.upper())
    if not match:
        sys.exit(f"--size {text!r}: a number with K, M or G")
    return int(match.group(1)) * units.get(match.group(2), 1)


def write_payload(path: Path, size: int) -> Path:
    """`size` random bytes at `path`, written 8 MiB at a time."""
    with open(path, "wb") as f:
        left = size
        while left:
            block = os.urandom(min(left, 8 << 20))
            f.write(block)
            left -= len(block)
    return path


def children_cpu_seconds() -> float:
    """CPU of every reaped child of this process: around one client run, that client's CPU."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def server_cpu_allowed(mb_per_s: float, client_cpu_s_per_gib: float) -> tuple[int, float, float]:
    """(cores, GiB/s, server CPU s/GiB at most) for moving `mb_per_s` on this machine.

    Client and server share the cores, so R GiB/s takes at least R x (server + client CPU
    s/GiB) cores, however well the server overlaps its work.
    """
    cores = os.cpu_count() or 1
    gib_per_s = mb_per_s * 1e6 / (1 << 30)
    return cores, gib_per_s, cores / gib_per_s - client_cpu_s_per_gib
