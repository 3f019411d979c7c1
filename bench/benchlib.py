"""What the single-purpose benchmarks (bench/hostile, bench/scanning, bench/objectstore) share:
which sluice-server binary to measure, sizes given as 64M or 1G, and a random payload file."""

from __future__ import annotations

import os
import re
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
