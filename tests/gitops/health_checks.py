"""How Argo CD and kstatus read a Sluice object: the Argo CD health scripts of the chart
(charts/sluice/files/argocd/<Kind>.lua) run by a real Lua 5.1 interpreter, and kstatus
(sigs.k8s.io/cli-utils, tests/gitops/kstatus) run as a small Go program. Shared by
tests/gitops/test_health.py (committed fixtures) and the end-to-end suite (live objects).

Neither tool is skipped when missing: lua5.1 comes from Debian (tests/run installs it), kstatus
is built by install-kstatus.sh when $SLUICE_KSTATUS is unset (Go and the module proxy needed).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
SCRIPTS = ROOT / "charts" / "sluice" / "files" / "argocd"
HARNESS = HERE / "harness.lua"
FIXTURES = HERE / "fixtures"
KINDS = ("FileTransferServer", "TransferUser")


@dataclass(frozen=True)
class Health:
    status: str
    message: str


def lua_binary() -> str:
    path = os.environ.get("SLUICE_LUA") or shutil.which("lua5.1")
    if not path or not os.access(path, os.X_OK):
        raise RuntimeError(f"lua5.1 not found ({path}): apt-get install lua5.1 (tests/run installs it)")
    return path


_kstatus: str | None = None


def kstatus_binary() -> str:
    """$SLUICE_KSTATUS, or the cached build of tests/gitops/kstatus (built on first use)."""
    global _kstatus
    if _kstatus is None:
        path = os.environ.get("SLUICE_KSTATUS")
        if not path:
            result = subprocess.run([str(HERE / "install-kstatus.sh")], capture_output=True, text=True,
                                    timeout=1200)
            if result.returncode != 0:
                raise RuntimeError(f"install-kstatus.sh failed:\n{result.stderr}")
            path = result.stdout.strip().splitlines()[-1]
        _kstatus = path
    return _kstatus


def _lua_string(text: str) -> str:
    # Decimal escapes for every byte outside printable ASCII, so any UTF-8 survives unchanged.
    out = []
    for byte in text.encode():
        char = chr(byte)
        if char in '"\\' or byte < 32 or byte > 126:
            out.append(f"\\{byte:03d}")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


def lua_literal(value) -> str:
    """A JSON value as a Lua 5.1 table constructor; null becomes nil, as Argo CD decodes it."""
    if value is None:
        return "nil"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{value} has no JSON form")
        return repr(value)
    if isinstance(value, str):
        return _lua_string(value)
    if isinstance(value, list):
        return "{" + ", ".join(lua_literal(v) for v in value) + "}"
    if isinstance(value, dict):
        return "{" + ", ".join(f"[{_lua_string(k)}] = {lua_literal(v)}"
                               for k, v in value.items() if v is not None) + "}"
    raise TypeError(f"not a JSON value: {value!r}")


def argocd(obj: dict) -> Health:
    """hs.status and hs.message of the chart's health script for obj's kind."""
    kind = obj["kind"]
    assert kind in KINDS, kind
    proc = subprocess.run([lua_binary(), str(HARNESS), str(SCRIPTS / f"{kind}.lua")],
                          input=lua_literal(obj), capture_output=True, text=True, timeout=30)
    if proc.returncode != 0:
        raise RuntimeError(f"{kind}.lua failed ({proc.returncode}): {proc.stderr}")
    status, _, message = proc.stdout.partition("\n")
    return Health(status, message)


def kstatus(obj: dict) -> Health:
    """kstatus' status.Compute(obj): Status and Message."""
    proc = subprocess.run([kstatus_binary()], input=json.dumps(obj), capture_output=True, text=True,
                          timeout=30)
    if proc.returncode != 0:
        raise RuntimeError(f"kstatus failed ({proc.returncode}): {proc.stderr}")
    out = json.loads(proc.stdout)
    return Health(out["status"], out["message"])


def record(obj: dict, name: str) -> None:
    """Writes obj to $SLUICE_GITOPS_FIXTURES/<name>.json when that variable is set (the e2e
    suite captures the live objects that tests/gitops/fixtures/ holds copies of)."""
    directory = os.environ.get("SLUICE_GITOPS_FIXTURES")
    if directory:
        Path(directory).mkdir(parents=True, exist_ok=True)
        (Path(directory) / f"{name}.json").write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def expect(obj: dict, name: str, argocd_status: str, kstatus_status: str) -> tuple[Health, Health]:
    """Records obj as fixture `name` (see record) and asserts what Argo CD's health script and
    kstatus make of it."""
    record(obj, name)
    by_argocd, by_kstatus = argocd(obj), kstatus(obj)
    assert (by_argocd.status, by_kstatus.status) == (argocd_status, kstatus_status), (
        f"{name}: Argo CD {by_argocd}, kstatus {by_kstatus}; "
        f"generation {obj['metadata'].get('generation')}, status {json.dumps(obj.get('status'))}")
    return by_argocd, by_kstatus
