"""H3 checked by an outside tool: testssl.sh finds no weak protocol, cipher or HIGH/CRITICAL
finding on either FTPS listener."""

import json
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor

import pytest

TESTSSL = shutil.which("testssl") or shutil.which("testssl.sh")

# Protocols that must not be offered.
OLD_PROTOCOLS = ("SSLv2", "SSLv3", "TLS1", "TLS1_1")
# Findings about the self-signed test certificate itself (not about the server's TLS settings).
CERT_FINDING_PREFIXES = ("cert_", "intermediate_cert", "chain_of_trust", "OCSP", "DNS_CAArecord",
                         "certificate", "cert")


def run_testssl(server, tmp_path, implicit: bool) -> list[dict]:
    name = "implicit" if implicit else "explicit"
    out = tmp_path / f"testssl-{name}.json"
    port = server.implicit_port if implicit else server.explicit_port
    args = [
        TESTSSL, "--quiet", "--warnings", "off", "--color", "0", "--fast",
        "--openssl-timeout", "5", "--connect-timeout", "5",
        "--protocols", "--std", "--fs", "--server-defaults", "--vulnerable",
        "--add-ca", str(server.cafile),
        "--jsonfile", str(out), "--nodns", "none",
    ]
    if not implicit:
        args += ["--starttls", "ftp"]
    args.append(f"127.0.0.1:{port}")
    proc = subprocess.run(args, capture_output=True, text=True, timeout=400)
    assert out.exists(), f"testssl produced no JSON (exit {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    findings = json.loads(out.read_text())
    assert isinstance(findings, list) and findings, proc.stdout[-3000:]
    (tmp_path / f"testssl-{name}.txt").write_text(proc.stdout)
    return findings


def check(findings: list[dict]) -> list[str]:
    problems = []
    by_id = {f["id"]: f for f in findings}
    for proto in OLD_PROTOCOLS:
        f = by_id.get(proto)
        if f is None:
            problems.append(f"{proto}: not reported")
        elif "not offered" not in f["finding"].lower():
            problems.append(f"{proto}: {f['finding']}")
    for proto in ("TLS1_2", "TLS1_3"):
        f = by_id.get(proto)
        if f is None or not f["finding"].lower().startswith("offered"):
            problems.append(f"{proto} should be offered: {f}")
    # Cipher categories from --std: everything weaker than "strong" must be absent.
    for cid in ("cipherlist_NULL", "cipherlist_aNULL", "cipherlist_EXPORT", "cipherlist_LOW",
                "cipherlist_3DES_IDEA", "cipherlist_AVERAGE", "cipherlist_OBSOLETED"):
        f = by_id.get(cid)
        if f is not None and "not offered" not in f["finding"].lower():
            problems.append(f"{cid}: {f['finding']}")
    for f in findings:
        fid, finding, severity = f["id"], f["finding"], f.get("severity", "")
        # Every offered cipher must be forward secret (ECDHE) and AEAD (GCM/CHACHA20).
        if fid.startswith("cipher-") or fid.startswith("cipher_order") or fid.startswith("cipher_x"):
            text = finding.upper()
            if any(bad in text for bad in ("CBC", "SHA1 ", "RC4", "3DES", "DES-", "NULL", "EXPORT")) or (
                "TLS_" in text and "TLS13" not in text and "TLS_AES" not in text and "TLS_CHACHA" not in text
                and "ECDHE" not in text
            ):
                problems.append(f"{fid}: {finding}")
        if fid in ("FS_ciphers", "PFS_ciphers"):
            weak = [c for c in finding.split() if "GCM" not in c and "CHACHA20" not in c]
            if weak:
                problems.append(f"{fid}: non-AEAD suites {weak}")
        if fid in ("FS", "PFS") and "not offered" in finding.lower():
            problems.append(f"FS: {finding}")
        if severity in ("HIGH", "CRITICAL"):
            if fid.startswith(CERT_FINDING_PREFIXES) and fid not in ("cert_keySize",):
                # The test certificate is self-signed and short-lived by design; trust is given
                # with --add-ca. Anything about the TLS configuration itself still counts.
                continue
            problems.append(f"{severity} {fid}: {finding}")
    return problems


@pytest.mark.timeout(600)
def test_testssl_finds_nothing_weak(server, tmp_path):
    if TESTSSL is None:
        pytest.skip("testssl.sh is not installed (tests/run installs it)")
    with ThreadPoolExecutor(2) as pool:
        explicit = pool.submit(run_testssl, server, tmp_path, False)
        implicit = pool.submit(run_testssl, server, tmp_path, True)
        results = {"explicit": explicit.result(), "implicit": implicit.result()}
    problems = {name: check(findings) for name, findings in results.items()}
    assert problems == {"explicit": [], "implicit": []}, json.dumps(problems, indent=1)
