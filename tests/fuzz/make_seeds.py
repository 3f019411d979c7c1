#!/usr/bin/env python3
"""Writes the committed seed corpora under fuzz/corpus/ (run again after changing it).

Seeds come from what the tests and docs use: FTP command lines the clients send, SFTP request
streams as OpenSSH's sftp sends them, authorized_keys lines, server.yaml/users.yaml from
docs/server-config.md and the demo, and the FileTransferServer/TransferUser examples.
"""

import hashlib
import pathlib
import re
import struct
import subprocess
import tempfile

ROOT = pathlib.Path(__file__).resolve().parents[2]
CORPUS = ROOT / "fuzz" / "corpus"


def put(target, data):
    if isinstance(data, str):
        data = data.encode()
    directory = CORPUS / target
    directory.mkdir(parents=True, exist_ok=True)
    (directory / hashlib.sha1(data).hexdigest()).write_bytes(data)


FTP_LINES = [
    "USER demo", "PASS secret pass", "AUTH TLS", "AUTH SSL", "PBSZ 0", "PROT P", "PROT C",
    "SYST", "FEAT", "OPTS UTF8 ON", "TYPE I", "TYPE A", "MODE S", "STRU F", "PWD", "NOOP",
    "CWD /reports/2026", "CWD ../../etc", "CDUP", "LIST", "LIST -la", "LIST -l -a dir",
    "NLST sub", "MLSD", "MLST file.txt", "STAT /", "SIZE file.txt", "MDTM file.txt",
    "RETR welcome.txt", "STOR my file.txt", "APPE log.txt", "REST 1024", "STOU",
    "DELE old.txt", "MKD new dir", "RMD new dir", "RNFR a.txt", "RNTO b.txt",
    "PASV", "EPSV", "EPSV ALL", "PORT 127,0,0,1,4,1", "EPRT |1|127.0.0.1|2000|",
    "EPRT |2|::1|2000|", "CCC", "HELP", "QUIT", "ABOR", "RETR /../../etc/passwd",
    "STOR ./a/./b/../c", "CWD %2e%2e/%2e%2e",
]


def ftp():
    for line in FTP_LINES:
        put("ftp_command", line)
    put("ftp_command", b"\xff\xf4\xff\xf2ABOR")
    put("ftp_command", b"RETR caf\xc3\xa9.txt")


def packet(kind, request_id, payload=b""):
    body = bytes([kind]) + struct.pack(">I", request_id) + payload
    return struct.pack(">I", len(body)) + body


def s(text):
    data = text.encode() if isinstance(text, str) else text
    return struct.pack(">I", len(data)) + data


def attrs(flags=0, *values):
    return struct.pack(">I", flags) + b"".join(values)


READ, WRITE, CREAT, TRUNC, EXCL, APPEND = 1, 2, 8, 16, 32, 4


def sftp():
    streams = {
        "upload": [
            packet(3, 1, s("up.bin") + struct.pack(">I", WRITE | CREAT | TRUNC) + attrs()),
            packet(6, 2, s("1") + struct.pack(">Q", 0) + s(b"hello world")),
            packet(6, 3, s("1") + struct.pack(">Q", 11) + s(b"!")),
            packet(8, 4, s("1")),
            packet(4, 5, s("1")),
        ],
        "download": [
            packet(3, 1, s("welcome.txt") + struct.pack(">I", READ) + attrs()),
            packet(8, 2, s("1")),
            packet(5, 3, s("1") + struct.pack(">Q", 0) + struct.pack(">I", 32768)),
            packet(5, 4, s("1") + struct.pack(">Q", 6) + struct.pack(">I", 32768)),
            packet(4, 5, s("1")),
        ],
        "listing": [
            packet(16, 1, s(".")),
            packet(11, 2, s("/")),
            packet(12, 3, s("1")),
            packet(12, 4, s("1")),
            packet(4, 5, s("1")),
        ],
        "tree": [
            packet(14, 1, s("new") + attrs(4, struct.pack(">I", 0o755))),
            packet(17, 2, s("new")),
            packet(7, 3, s("welcome.txt")),
            packet(9, 4, s("welcome.txt") + attrs(1 | 8, struct.pack(">Q", 3), struct.pack(">II", 1, 2))),
            packet(18, 5, s("welcome.txt") + s("moved.txt")),
            packet(13, 6, s("moved.txt")),
            packet(15, 7, s("new")),
            packet(19, 8, s("escape")),
            packet(20, 9, s("link") + s("welcome.txt")),
        ],
        "escape": [
            packet(11, 1, s("escape")),
            packet(3, 2, s("escape/secret.txt") + struct.pack(">I", READ | WRITE) + attrs()),
            packet(3, 3, s("../other/secret.txt") + struct.pack(">I", READ) + attrs()),
            packet(13, 4, s("/../../other/secret.txt")),
            packet(16, 5, s("../../../")),
        ],
        "extensions": [
            packet(200, 1, s("posix-rename@openssh.com") + s("welcome.txt") + s("w2.txt")),
            packet(200, 2, s("statvfs@openssh.com") + s("/")),
            packet(200, 3, s("limits@openssh.com")),
            packet(200, 4, s("expand-path@openssh.com") + s("~/dir")),
            packet(200, 5, s("check-file-name") + s("w2.txt") + s("sha256") + struct.pack(">QQI", 0, 0, 0)),
            packet(3, 6, s("w2.txt") + struct.pack(">I", READ | WRITE | APPEND) + attrs()),
            packet(200, 7, s("fsync@openssh.com") + s("1")),
            packet(200, 8, s("fstatvfs@openssh.com") + s("1")),
            packet(200, 9, s("unknown@example.com") + b"\x00\x01"),
        ],
        "malformed": [
            packet(3, 1, b"\x00\x00\x00"),
            packet(99, 2, b"junk"),
        ],
    }
    for packets in streams.values():
        put("sftp_packets", b"".join(packets))


def keys():
    with tempfile.TemporaryDirectory() as tmp:
        for kind, bits in [("ed25519", None), ("ecdsa", "256"), ("ecdsa", "384"), ("rsa", "2048")]:
            path = pathlib.Path(tmp) / f"{kind}{bits or ''}"
            command = ["ssh-keygen", "-q", "-t", kind, "-N", "", "-C", f"fuzz@{kind}", "-f", str(path)]
            if bits:
                command[4:4] = ["-b", bits]
            subprocess.run(command, check=True)
            line = path.with_suffix(".pub").read_text().strip()
            put("authorized_keys", line)
            put("authorized_keys", " ".join(line.split()[:2]))
            put("authorized_keys", 'from="10.0.0.0/8",no-pty ' + line)


def examples_yaml(text):
    return [block for block in re.split(r"(?m)^---\s*$", text) if block.strip()]


def yaml():
    doc = (ROOT / "docs" / "server-config.md").read_text()
    for block in re.findall(r"```yaml\n(.*?)```", doc, re.S):
        prefix = b"\x00" if "kind: ServerConfig" in block else b"\x01"
        if "kind: ServerConfig" in block or "kind: UserList" in block:
            put("config_yaml", prefix + block.encode())
    put("config_yaml", b"\x01apiVersion: sluice.dev/v1alpha1\nkind: UserList\nusers:\n"
        b"  - username: demo\n    passwordHash: \"$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA\"\n"
        b"    home: demo\n    permissions: [list, download, upload]\n"
        b"    allowedCidrs: [192.0.2.0/24, \"2001:db8::/32\"]\n    protocols: [sftp]\n"
        b"    expiresAt: \"2030-01-01T00:00:00Z\"\n"
        b"    sshAuthorizedKeys: [\"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl\"]\n")
    for path in sorted((ROOT / "examples").glob("*.yaml")):
        for block in examples_yaml(path.read_text()):
            if "kind: FileTransferServer" in block:
                put("operator_specs", b"\x00" + block.encode())
            elif "kind: TransferUser" in block:
                put("operator_specs", b"\x01" + block.encode() + b"\x00Correct-Horse-Battery-9")


def proxy():
    """PROXY protocol headers as HAProxy and load balancers send them, followed by the first
    bytes of what they carry (the reader must stop exactly at the header's end)."""
    sig = b"\r\n\r\n\x00\r\nQUIT\n"
    v4 = bytes([127, 0, 0, 5, 127, 0, 0, 1]) + (40000).to_bytes(2, "big") + (2121).to_bytes(2, "big")
    v6 = bytes(15) + b"\x01" + bytes(15) + b"\x02" + (40000).to_bytes(2, "big") + (22).to_bytes(2, "big")
    noop_tlv = b"\x04\x00\x01\x00"
    for data in [
        b"PROXY TCP4 127.0.0.5 127.0.0.1 40000 2121\r\nSSH-2.0-OpenSSH_9.2\r\n",
        b"PROXY TCP6 2001:db8::1 2001:db8::2 40000 22\r\n",
        b"PROXY UNKNOWN\r\n",
        b"PROXY UNKNOWN ffff:f...f:ffff ffff:f...f:ffff 65535 65535\r\n",
        sig + b"\x21\x11" + len(v4).to_bytes(2, "big") + v4 + b"\x16\x03\x01",
        sig + b"\x21\x21" + len(v6).to_bytes(2, "big") + v6,
        sig + b"\x21\x11" + (len(v4) + 4).to_bytes(2, "big") + v4 + noop_tlv,
        sig + b"\x20\x00\x00\x00",
    ]:
        put("proxy_header", data)


if __name__ == "__main__":
    proxy()
    ftp()
    sftp()
    keys()
    yaml()
