"""The client matrix, declared once: which real client runs which protocol and mode, with which
pinned version, which non-default setting it needs, and what it must do. The test
(tests/server/test_client_matrix.py) runs every row and asserts the declared outcome; the
generator (tests/clients/gen_docs.py) renders the same rows into docs/clients.md, and a test
fails when the committed table differs, so the docs say what was run."""

from __future__ import annotations

from dataclasses import dataclass

# Settings a row may need, as the docs name them.
LEGACY_BINDING = "user `ftpsDataBinding: addressAndLease`"
COMPAT_PROFILE = "server `ssh.profile: compatibility`"

PASS = "pass"
FAIL_425 = "425"


@dataclass(frozen=True)
class Case:
    id: str
    client: str
    version: str
    protocol: str  # FTPS | SFTP
    mode: str  # explicit | implicit | password | key | ...
    runner: str  # how the test drives it (a key of RUNNERS in the test)
    setting: str | None = None  # non-default server or user setting the row uses
    expect: str = PASS
    resume: bool = True  # a resumed (offset) download is part of the row
    note: str = ""


COMMONS_NET = "3.11.1"
JSCH = "2.28.8"
JLAFFAYE_FTP = "v0.2.4"
PKG_SFTP = "v1.13.12"
BASIC_FTP = "6.2.3"
SSH2_SFTP_CLIENT = "12.1.1"
PARAMIKO = "5.1.0"
PYTHON = "3.11"
CURL = "7.88.1"
LFTP = "4.9.2"
OPENSSH = "9.2p1"

CASES: list[Case] = [
    # --- Java ----------------------------------------------------------------------------------
    Case("commons-net-explicit", "Apache Commons Net `FTPSClient`", COMMONS_NET, "FTPS", "explicit",
         "java", LEGACY_BINDING,
         note="Commons Net does not resume the control connection's TLS session on data connections"),
    Case("commons-net-implicit", "Apache Commons Net `FTPSClient`", COMMONS_NET, "FTPS", "implicit",
         "java", LEGACY_BINDING),
    Case("commons-net-explicit-default", "Apache Commons Net `FTPSClient`", COMMONS_NET, "FTPS", "explicit",
         "java", expect=FAIL_425),
    Case("commons-net-implicit-default", "Apache Commons Net `FTPSClient`", COMMONS_NET, "FTPS", "implicit",
         "java", expect=FAIL_425),
    Case("jsch-password", "JSch (`com.github.mwiede:jsch`)", JSCH, "SFTP", "password", "java"),
    Case("jsch-key", "JSch (`com.github.mwiede:jsch`)", JSCH, "SFTP", "key", "java"),
    # --- Python --------------------------------------------------------------------------------
    Case("paramiko-scripts", "paramiko `SSHClient.connect`", PARAMIKO, "SFTP", "unknown key_filename, then password",
         "paramiko"),
    Case("paramiko-key", "paramiko `SSHClient.connect`", PARAMIKO, "SFTP", "key (`look_for_keys`/agent off)",
         "paramiko"),
    Case("ftplib-resuming", "Python `ftplib.FTP_TLS`, data socket with `session=`", PYTHON, "FTPS", "explicit",
         "ftplib"),
    Case("ftplib-stock", "Python `ftplib.FTP_TLS` as shipped", PYTHON, "FTPS", "explicit", "ftplib",
         LEGACY_BINDING, note="stock FTP_TLS does not resume TLS sessions on data connections"),
    Case("ftplib-stock-default", "Python `ftplib.FTP_TLS` as shipped", PYTHON, "FTPS", "explicit", "ftplib",
         expect=FAIL_425),
    # --- Go ------------------------------------------------------------------------------------
    Case("go-ftp", "Go `github.com/jlaffaye/ftp` (`tls.Config.ClientSessionCache` set)", JLAFFAYE_FTP, "FTPS",
         "explicit", "go"),
    Case("go-sftp-password", "Go `github.com/pkg/sftp`", PKG_SFTP, "SFTP", "password", "go"),
    Case("go-sftp-key", "Go `github.com/pkg/sftp`", PKG_SFTP, "SFTP", "key", "go"),
    # --- Node ----------------------------------------------------------------------------------
    Case("basic-ftp-explicit", "Node `basic-ftp`", BASIC_FTP, "FTPS", "explicit", "node"),
    Case("basic-ftp-implicit", "Node `basic-ftp`", BASIC_FTP, "FTPS", "implicit", "node"),
    Case("ssh2-sftp-password", "Node `ssh2-sftp-client`", SSH2_SFTP_CLIENT, "SFTP", "password", "node"),
    Case("ssh2-sftp-key", "Node `ssh2-sftp-client`", SSH2_SFTP_CLIENT, "SFTP", "key", "node"),
    # --- command-line clients (Debian 12) ------------------------------------------------------
    Case("curl-explicit", "curl (OpenSSL)", CURL, "FTPS", "explicit", "curl"),
    Case("curl-implicit", "curl (OpenSSL)", CURL, "FTPS", "implicit", "curl"),
    Case("curl-sftp", "curl `sftp://` (libssh2 1.10)", CURL, "SFTP", "password", "curl", COMPAT_PROFILE,
         note="libssh2 1.10 has no AEAD cipher or ETM MAC"),
    Case("lftp-explicit", "lftp (GnuTLS)", LFTP, "FTPS", "explicit", "lftp"),
    Case("lftp-implicit", "lftp (GnuTLS)", LFTP, "FTPS", "implicit", "lftp"),
    Case("openssh-key", "OpenSSH `sftp`", OPENSSH, "SFTP", "key", "openssh"),
    Case("openssh-password", "OpenSSH `sftp`", OPENSSH, "SFTP", "password (SSH_ASKPASS)", "openssh"),
]


def result_text(case: Case) -> str:
    if case.expect == PASS:
        steps = "login, upload 3 MiB, list, download (SHA-256 equal)"
        return f"pass: {steps}" + (", resumed download" if case.resume else "")
    return "fails as asserted: `425 ... did not resume the control connection's session`"
