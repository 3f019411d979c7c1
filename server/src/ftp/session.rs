//! One FTPS session: the command state machine from banner to QUIT, enforcing the hardened
//! order (TLS, then login, then PROT P before data), permissions on every verb, timeouts,
//! hot-reloaded users and permissions, and an audit event for everything.

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use serde_json::json;
use sluice_config::{FtpsAuth, Permission, Protocol, User, canonical_ip};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::{Instant, timeout_at};
use tokio_rustls::TlsAcceptor;

use super::ListenerKind;
use super::command::{self, CommandLine};
use super::control::{Control, ControlIo, Incoming};
use super::data::{self, DataContext, DataError, DataStream, TransferError};
use super::listing;
use crate::audit::SessionTag;
use crate::client_cert::{self, PeerCertificate};
use crate::context::Context;
use crate::events::{Detail, Kind};
use crate::limits::{ConnectionGuard, UserGuard};
use crate::metrics::Metrics;
use crate::snapshot::Snapshot;
use crate::tls;
use crate::totp::{self, TotpOutcome};
use crate::userfs::{self, EntryKind, FsError, Replace, UserFs, WriteMode};

/// Directory entries read, formatted and sent per step of a streamed listing.
const LIST_BATCH: usize = 512;
use crate::vpath::{PathError, VirtualPath};

/// Verbs counted by name in metrics; anything else is counted as `other`.
const KNOWN_VERBS: &[&str] = &[
    "ABOR", "ALLO", "APPE", "AUTH", "CCC", "CDUP", "CWD", "DELE", "EPRT", "EPSV", "FEAT", "HASH",
    "HELP", "LIST", "MDTM", "MKD", "MLSD", "MLST", "MODE", "NLST", "NOOP", "OPTS", "PASS", "PASV",
    "PBSZ", "PORT", "PROT", "PWD", "QUIT", "REST", "RETR", "RMD", "RNFR", "RNTO", "SITE", "SIZE",
    "STAT", "STOR", "STRU", "SYST", "TYPE", "USER", "XSHA256", "XCWD", "XPWD", "XMKD", "XRMD",
];

enum Flow {
    Continue,
    Close(&'static str),
}

enum DataSource {
    Passive(JoinHandle<Result<DataStream, DataError>>),
    Active(SocketAddr),
}

struct LoggedIn {
    user: Arc<User>,
    fs: UserFs,
    _guard: UserGuard,
}

struct Session {
    context: Arc<Context>,
    snapshot_rx: watch::Receiver<Arc<Snapshot>>,
    snapshot: Arc<Snapshot>,
    tag: SessionTag,
    peer: SocketAddr,
    local: SocketAddr,
    client_ip: IpAddr,
    control: Control,
    tls: tls::SessionTls,
    protected: bool,
    pending_user: Option<String>,
    /// The verified client certificate of the control connection, if one was presented.
    peer_cert: Option<Arc<PeerCertificate>>,
    logged_in: Option<LoggedIn>,
    failures: u32,
    cwd: VirtualPath,
    restart: u64,
    rename_from: Option<VirtualPath>,
    data: Option<DataSource>,
    epsv_all: bool,
    queued: VecDeque<Incoming>,
    login_deadline: Instant,
    /// The factors of the login being attempted, for its audit event.
    login_method: String,
    drain: watch::Receiver<bool>,
}

/// Runs a session to its end; never panics the process, whatever the client sends.
pub async fn run(
    context: Arc<Context>,
    stream: TcpStream,
    origin: crate::proxy::Origin,
    local: SocketAddr,
    kind: ListenerKind,
    guard: ConnectionGuard,
) {
    let peer = origin.client;
    let started = std::time::Instant::now();
    let number = context.session_counter.fetch_add(1, Ordering::Relaxed);
    let client_ip = canonical_ip(peer.ip());
    let tag = SessionTag {
        session: format!("{}-{number}", context.session_prefix),
        protocol: "ftps",
        ip: client_ip.to_string(),
        user: None,
    };
    let snapshot_rx = context.snapshot.clone();
    let snapshot = snapshot_rx.borrow().clone();
    let mut connect = origin.audit_fields();
    connect.insert("listener".into(), kind.as_str().into());
    connect.insert("port".into(), peer.port().into());
    connect.insert("local".into(), local.to_string().into());
    context
        .audit
        .event(&tag, "connect", serde_json::Value::Object(connect));
    Metrics::inc(
        &context.metrics.sessions_total,
        &[("listener", kind.as_str())],
    );
    context.metrics.sessions_active.inc();
    let tls = match tls::per_session(&snapshot.tls) {
        Ok(tls) => tls,
        Err(error) => {
            tracing::error!(%error, "cannot create the session's TLS config");
            context.metrics.sessions_active.dec();
            return;
        }
    };
    let limits = &snapshot.config.limits;
    let login_deadline =
        Instant::now() + Duration::from_secs(snapshot.config.timeouts.login_seconds);
    let mut session = Session {
        context: context.clone(),
        snapshot_rx,
        control: Control::new(ControlIo::Plain(stream), limits.max_command_length as usize),
        snapshot,
        tag,
        peer,
        local,
        client_ip,
        tls,
        protected: false,
        pending_user: None,
        peer_cert: None,
        logged_in: None,
        failures: 0,
        cwd: VirtualPath::root(),
        restart: 0,
        rename_from: None,
        data: None,
        epsv_all: false,
        queued: VecDeque::new(),
        login_deadline,
        login_method: String::new(),
        drain: context.drain.subscribe(),
    };
    let reason = session.serve(kind).await;
    session.drop_data();
    session.control.shutdown().await;
    context.audit.event(
        &session.tag,
        "disconnect",
        json!({"reason": reason, "duration_ms": started.elapsed().as_millis() as u64}),
    );
    context.metrics.sessions_active.dec();
    drop(guard);
}

/// How a complete upload ended.
enum Published {
    /// Under its final name; `scan` says how it passed the scanner, when scanning is on.
    Ok {
        sha256: String,
        written: u64,
        scan: Option<crate::scan::ScanNote>,
    },
    /// Refused by the scanner: already quarantined or deleted, never published.
    Refused {
        refusal: crate::scan::Refusal,
        sha256: String,
        written: u64,
    },
    /// Storage failed (the write, the fsync or the rename).
    Failed(FsError),
}

fn fs_reply(error: &FsError) -> (u16, String) {
    match error {
        FsError::NoSpace(_) => (452, error.to_string()),
        // RFC 959: 552 "requested file action aborted, exceeded storage allocation".
        FsError::Quota { .. } => (552, error.to_string()),
        FsError::ListingTooLarge { .. } => (451, error.to_string()),
        FsError::Io { .. } => (451, error.to_string()),
        _ => (550, error.to_string()),
    }
}

fn quote_path(path: &VirtualPath) -> String {
    format!("\"{}\"", path.to_string().replace('"', "\"\""))
}

impl Session {
    async fn reply(&mut self, code: u16, text: &str) -> bool {
        self.control.reply(code, text).await.is_ok()
    }

    fn audit(&self, event: &str, fields: serde_json::Value) {
        self.context.audit.event(&self.tag, event, fields);
    }

    fn config(&self) -> &sluice_config::ServerConfig {
        &self.snapshot.config
    }

    /// A file event (`crate::events`), durable when this returns.
    async fn event(&self, kind: Kind, path: &VirtualPath, detail: Detail<'_>) {
        let home = self.user().map_or("", |u| u.home.as_str());
        let events = &self.context.events;
        events.emit(kind, &self.tag, home, path, detail).await;
    }

    fn drop_data(&mut self) {
        if let Some(DataSource::Passive(task)) = self.data.take() {
            task.abort();
        }
    }

    async fn serve(&mut self, kind: ListenerKind) -> &'static str {
        // The TLS handshake and the command handlers (transfers, listings) are boxed: their
        // state lives on the heap only while they run, so the session's task, which waits
        // idle in `next_incoming` most of its life, stays ~1 KiB instead of ~6 KiB.
        if kind == ListenerKind::Implicit && !Box::pin(self.start_tls()).await {
            return "tls handshake failed";
        }
        let banner = match kind {
            ListenerKind::Explicit => "Sluice FTPS ready; AUTH TLS required",
            ListenerKind::Implicit => "Sluice FTPS ready",
        };
        if !self.reply(220, banner).await {
            return "connection lost";
        }
        loop {
            // Between commands (never inside a transfer): a draining server closes the session.
            if *self.drain.borrow() {
                self.reply(421, crate::drain::FTPS_MESSAGE).await;
                return crate::drain::REASON;
            }
            let incoming = match self.queued.pop_front() {
                Some(incoming) => incoming,
                None => match self.next_incoming().await {
                    Ok(incoming) => incoming,
                    Err(reason) => return reason,
                },
            };
            let line = match incoming {
                Incoming::Eof => return "client closed the connection",
                Incoming::TooLong => {
                    self.audit(
                        "command",
                        json!({"command": null, "code": 500, "error": "command line too long"}),
                    );
                    if !self.reply(500, "command line too long").await {
                        return "connection lost";
                    }
                    continue;
                }
                Incoming::Line(line) => line,
            };
            match self.refresh() {
                Ok(()) => {}
                Err(reason) => {
                    self.reply(421, reason).await;
                    return reason;
                }
            }
            let parsed = match command::parse(&line) {
                Ok(parsed) => parsed,
                Err(error) => {
                    self.audit(
                        "command",
                        json!({"command": null, "code": 500, "error": error.to_string()}),
                    );
                    if !self.reply(500, &error.to_string()).await {
                        return "connection lost";
                    }
                    continue;
                }
            };
            let flow = Box::pin(self.dispatch(&parsed)).await;
            let verb = if KNOWN_VERBS.contains(&parsed.verb.as_str()) {
                parsed.verb.as_str()
            } else {
                "other"
            };
            Metrics::inc(&self.context.metrics.commands, &[("command", verb)]);
            let mut fields = json!({"command": parsed.verb, "code": self.control.last_code});
            if parsed.verb != "PASS" && !parsed.argument.is_empty() {
                let shown: String = parsed.argument.chars().take(512).collect();
                fields["arg"] = shown.into();
            }
            self.audit("command", fields);
            if let Flow::Close(reason) = flow {
                return reason;
            }
        }
    }

    /// Waits for the next line, ending the session on the login or idle timeout and noticing
    /// reloads (a removed or disabled user is logged out at once, not at its next command).
    async fn next_incoming(&mut self) -> Result<Incoming, &'static str> {
        loop {
            let deadline = if self.logged_in.is_some() {
                Instant::now() + Duration::from_secs(self.config().timeouts.idle_seconds)
            } else {
                self.login_deadline
            };
            // The end of the user's current login window, if it has windows.
            let edge = self
                .logged_in
                .as_ref()
                .and_then(|l| crate::windows::until_edge(&l.user, crate::windows::now()))
                .map(|wait| Instant::now() + wait);
            tokio::select! {
                _ = async {
                    match edge {
                        Some(at) => tokio::time::sleep_until(at).await,
                        None => std::future::pending().await,
                    }
                } => {
                    if let Err(reason) = self.refresh() {
                        self.reply(421, reason).await;
                        return Err(reason);
                    }
                }
                read = timeout_at(deadline, self.control.next()) => {
                    return match read {
                        Ok(Ok(incoming)) => Ok(incoming),
                        Ok(Err(_)) => Err("connection lost"),
                        Err(_) => {
                            let reason = if self.logged_in.is_some() { "idle timeout" } else { "login timeout" };
                            self.reply(421, &format!("{reason}; closing control connection")).await;
                            Err(reason)
                        }
                    };
                }
                _ = crate::drain::started(&mut self.drain) => {
                    self.reply(421, crate::drain::FTPS_MESSAGE).await;
                    return Err(crate::drain::REASON);
                }
                changed = self.snapshot_rx.changed() => {
                    if changed.is_err() {
                        // The reloader is gone (shutdown); keep serving with what we have.
                        std::future::pending::<()>().await;
                    }
                    if let Err(reason) = self.refresh() {
                        self.reply(421, reason).await;
                        return Err(reason);
                    }
                }
            }
        }
    }

    /// Adopts the newest snapshot; ends the session if its user is gone or no longer allowed.
    fn refresh(&mut self) -> Result<(), &'static str> {
        // Always look at the latest value: `changed()` in the idle wait has already marked it
        // seen, so `has_changed()` would say false here.
        let latest = self.snapshot_rx.borrow_and_update().clone();
        if !Arc::ptr_eq(&latest, &self.snapshot) {
            self.snapshot = latest;
        }
        let Some(logged_in) = &self.logged_in else {
            return Ok(());
        };
        let name = logged_in.user.username.clone();
        let Some(user) = self.snapshot.user(&name).cloned() else {
            self.audit("session_ended", json!({"reason": "user removed"}));
            return Err("account removed; closing control connection");
        };
        if user.disabled
            || user.is_expired_at(jiff::Timestamp::now())
            || !user.allows_ip(self.client_ip)
            || !user.allows_protocol(Protocol::Ftps)
        {
            self.audit(
                "session_ended",
                json!({"reason": "user disabled, expired or restricted"}),
            );
            return Err("account disabled, expired or restricted; closing control connection");
        }
        if crate::windows::outside_window(&user, crate::windows::now()) {
            self.audit("session_ended", json!({"reason": "login window closed"}));
            return Err(crate::windows::WINDOW_CLOSED);
        }
        if user.home != logged_in.user.home {
            // The session's confined view was opened on the old home; it must not keep
            // writing there (e.g. a home moved away from a directory now given to another).
            self.audit("session_ended", json!({"reason": "home directory changed"}));
            return Err("home directory changed; closing control connection, log in again");
        }
        if let Some(logged_in) = &mut self.logged_in {
            logged_in.user = user;
        }
        Ok(())
    }

    async fn start_tls(&mut self) -> bool {
        let Some(tcp) = self.control.take_plain() else {
            return false;
        };
        let acceptor = TlsAcceptor::from(self.tls.control.clone());
        let handshake = timeout_at(self.login_deadline, acceptor.accept(tcp)).await;
        let stream = match handshake {
            Ok(Ok(stream)) => stream,
            Ok(Err(error)) => {
                Metrics::inc(
                    &self.context.metrics.tls_failures,
                    &[("channel", "control")],
                );
                self.audit(
                    "tls",
                    json!({"channel": "control", "result": "failure", "error": error.to_string()}),
                );
                return false;
            }
            Err(_) => {
                self.audit("tls", json!({"channel": "control", "result": "failure", "error": "handshake timeout"}));
                return false;
            }
        };
        let connection = stream.get_ref().1;
        self.peer_cert = connection
            .peer_certificates()
            .and_then(|certs| certs.first())
            .map(|cert| Arc::new(PeerCertificate::from_der(cert)));
        let fingerprint = self.peer_cert.as_ref().map(|c| c.sha256.clone());
        let fields = json!({
            "channel": "control",
            "result": "success",
            "version": connection.protocol_version().map(|v| format!("{v:?}")),
            "cipher": connection.negotiated_cipher_suite().map(|s| format!("{:?}", s.suite())),
            "kx_group": crate::tls::kx_group(connection),
            "resumed": connection.handshake_kind() == Some(rustls::HandshakeKind::Resumed),
            "client_cert_sha256": fingerprint,
        });
        self.control.io = ControlIo::Tls(Box::new(stream));
        self.audit("tls", fields);
        true
    }

    fn user(&self) -> Option<&Arc<User>> {
        self.logged_in.as_ref().map(|l| &l.user)
    }

    fn fs(&self) -> Option<UserFs> {
        self.logged_in.as_ref().map(|l| l.fs.clone())
    }

    async fn dispatch(&mut self, command: &CommandLine) -> Flow {
        let verb = command.verb.as_str();
        let argument = command.argument.as_str();
        // Commands allowed at any time.
        match verb {
            "QUIT" => {
                self.reply(221, "goodbye").await;
                return Flow::Close("quit");
            }
            "NOOP" => return self.done(200, "ok").await,
            "FEAT" => return self.feat().await,
            "HELP" => return self.help().await,
            "SYST" => return self.done(215, "UNIX Type: L8").await,
            "AUTH" => return self.auth(argument).await,
            "CCC" => {
                return self
                    .done(
                        534,
                        "CCC is refused: the control connection stays encrypted",
                    )
                    .await;
            }
            _ => {}
        }
        if !self.control.is_tls() {
            return match verb {
                "USER" | "PASS" => {
                    self.done(530, "AUTH TLS is required before USER and PASS")
                        .await
                }
                _ => {
                    self.done(530, "AUTH TLS, USER and PASS are required first")
                        .await
                }
            };
        }
        match verb {
            "PBSZ" => return self.done(200, "PBSZ=0").await,
            "PROT" => return self.prot(argument).await,
            "USER" => return self.user_command(argument).await,
            "PASS" => return self.pass(argument).await,
            "OPTS" => return self.opts(argument).await,
            _ => {}
        }
        if self.logged_in.is_none() {
            return self.done(530, "log in with USER and PASS first").await;
        }
        match verb {
            "PWD" | "XPWD" => {
                let text = format!("{} is the current directory", quote_path(&self.cwd));
                self.done(257, &text).await
            }
            "CWD" | "XCWD" => self.cwd(argument).await,
            "CDUP" => self.cwd("..").await,
            "TYPE" => match argument.to_ascii_uppercase().as_str() {
                "I" | "L 8" | "A" | "A N" => self.done(200, "type set").await,
                _ => self.done(504, "only TYPE I and A are supported").await,
            },
            "MODE" => match argument.to_ascii_uppercase().as_str() {
                "S" => self.done(200, "mode S").await,
                _ => self.done(504, "only MODE S is supported").await,
            },
            "STRU" => match argument.to_ascii_uppercase().as_str() {
                "F" => self.done(200, "structure F").await,
                _ => self.done(504, "only STRU F is supported").await,
            },
            "ALLO" => self.done(202, "no storage allocation necessary").await,
            "PASV" => self.pasv(false).await,
            "EPSV" => self.epsv(argument).await,
            "PORT" | "EPRT" => self.active(verb, argument).await,
            "REST" => match argument.trim().parse::<u64>() {
                Ok(offset) => {
                    self.restart = offset;
                    let text = format!("restarting at {offset}; send STOR or RETR");
                    self.done(350, &text).await
                }
                Err(_) => self.done(501, "REST needs a byte offset").await,
            },
            "LIST" | "NLST" | "MLSD" => self.listing(verb, argument).await,
            "MLST" => self.mlst(argument).await,
            "STAT" => self.stat(argument).await,
            "SIZE" | "MDTM" => self.size_or_mdtm(verb, argument).await,
            "RETR" => self.retr(argument).await,
            "STOR" => self.store(argument, false).await,
            "APPE" => self.store(argument, true).await,
            "DELE" => self.dele(argument).await,
            "MKD" | "XMKD" => self.mkd(argument).await,
            "RMD" | "XRMD" => self.rmd(argument).await,
            "RNFR" => self.rnfr(argument).await,
            "RNTO" => self.rnto(argument).await,
            "ABOR" => {
                self.drop_data();
                self.done(225, "no transfer in progress").await
            }
            "HASH" | "XSHA256" => self.hash(verb, argument).await,
            "SITE" | "STOU" | "SMNT" | "REIN" | "ACCT" | "ADAT" | "MIC" | "CONF" | "ENC" => {
                let text = format!("{verb} is not implemented");
                self.done(502, &text).await
            }
            _ => {
                let text = format!("unknown command {verb:?}");
                self.done(500, &text).await
            }
        }
    }

    async fn done_lines(&mut self, code: u16, first: &str, lines: &[String], last: &str) -> Flow {
        if self
            .control
            .reply_lines(code, first, lines, last)
            .await
            .is_ok()
        {
            Flow::Continue
        } else {
            Flow::Close("connection lost")
        }
    }

    async fn done(&mut self, code: u16, text: &str) -> Flow {
        if self.reply(code, text).await {
            Flow::Continue
        } else {
            Flow::Close("connection lost")
        }
    }

    async fn feat(&mut self) -> Flow {
        let mut features: Vec<String> = [
            "AUTH TLS",
            "PBSZ",
            "PROT",
            "UTF8",
            "EPSV",
            "MLST type*;size*;modify*;perm*;",
            "SIZE",
            "MDTM",
            "REST STREAM",
            "TVFS",
            "HASH SHA-256*",
            "XSHA256",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        if self.config().active_mode.enabled {
            features.push("EPRT".into());
        }
        self.done_lines(211, "Features:", &features, "End").await
    }

    async fn help(&mut self) -> Flow {
        let lines = vec![
            "ABOR APPE AUTH CCC CDUP CWD DELE EPRT EPSV FEAT HASH HELP LIST MDTM MKD".to_string(),
            "MLSD MLST MODE NLST NOOP OPTS PASS PASV PBSZ PORT PROT PWD QUIT REST RETR".to_string(),
            "RMD RNFR RNTO SIZE STAT STOR STRU SYST TYPE USER XSHA256".to_string(),
        ];
        self.done_lines(
            214,
            "The following commands are recognized:",
            &lines,
            "Help OK",
        )
        .await
    }

    async fn auth(&mut self, argument: &str) -> Flow {
        if self.control.is_tls() {
            return self.done(503, "TLS is already active").await;
        }
        match argument.trim().to_ascii_uppercase().as_str() {
            "TLS" | "TLS-C" | "SSL" => {}
            _ => return self.done(504, "only AUTH TLS is supported").await,
        }
        if self.control.has_buffered_input() {
            self.reply(421, "commands pipelined after AUTH TLS are refused")
                .await;
            return Flow::Close("input injected before tls");
        }
        if !self
            .reply(234, "AUTH TLS ok; proceed with the TLS handshake")
            .await
        {
            return Flow::Close("connection lost");
        }
        if self.start_tls().await {
            Flow::Continue
        } else {
            Flow::Close("tls handshake failed")
        }
    }

    async fn prot(&mut self, argument: &str) -> Flow {
        match argument.trim().to_ascii_uppercase().as_str() {
            "P" => {
                self.protected = true;
                self.done(200, "protection level set to Private").await
            }
            "C" => {
                self.done(536, "PROT C is refused: data connections must be encrypted")
                    .await
            }
            _ => self.done(504, "only PROT P is supported").await,
        }
    }

    async fn opts(&mut self, argument: &str) -> Flow {
        let upper = argument.trim().to_ascii_uppercase();
        if upper == "UTF8 ON" || upper == "UTF8" {
            return self.done(200, "UTF8 is always on").await;
        }
        if upper == "HASH" || upper == "HASH SHA-256" {
            return self.done(200, "SHA-256").await;
        }
        if upper.starts_with("HASH ") {
            return self.done(501, "only SHA-256 is supported").await;
        }
        if upper.starts_with("MLST") {
            return self.done(200, "MLST OPTS type;size;modify;perm;").await;
        }
        let text = format!("unsupported option {:?}", argument.trim());
        self.done(501, &text).await
    }

    async fn user_command(&mut self, argument: &str) -> Flow {
        if self.logged_in.is_some() {
            return self.done(503, "already logged in").await;
        }
        let name = argument.trim();
        if name.is_empty() {
            return self.done(501, "USER needs a name").await;
        }
        self.pending_user = Some(name.chars().take(128).collect());
        // Certificate-only users whose certificate maps to them need no PASS (RFC 2228 232);
        // everyone else, including certificate-only users with TOTP, gets 331.
        let certificate_only = self.snapshot.user(name).is_some_and(|user| {
            user.ftps_auth == FtpsAuth::Certificate
                && user.totp.is_none()
                && self.peer_cert.as_ref().is_some_and(|c| c.maps_to(user))
        });
        if certificate_only {
            return self.pass("").await;
        }
        self.done(331, "password required").await
    }

    /// The factors `user` logs in with over FTPS, for the audit log.
    fn login_method(user: Option<&User>) -> String {
        let Some(user) = user else {
            return "password".into();
        };
        let mut factors = Vec::new();
        if user.ftps_auth.needs_certificate() {
            factors.push("certificate");
        }
        if user.ftps_auth.needs_password() {
            factors.push("password");
        }
        if user.totp.is_some() {
            factors.push("totp");
        }
        factors.join("+")
    }

    /// The client certificate's audit fields (`null` when none was presented).
    fn cert_fields(&self) -> serde_json::Value {
        match &self.peer_cert {
            Some(cert) => {
                json!({"client_cert_sha256": cert.sha256, "client_cert_subject": cert.subject})
            }
            None => json!({}),
        }
    }

    /// The certificate and TOTP checks after the password (if any) was verified; the audit
    /// reason of a refusal. Never logs the code.
    fn second_factors(&self, user: &User, code: Option<&str>) -> Option<&'static str> {
        let users = self.snapshot.users.values().map(|u| u.as_ref());
        if let Some(reason) = client_cert::refusal(user, self.peer_cert.as_deref(), users) {
            return Some(reason);
        }
        let totp = user.totp.as_ref()?;
        let outcome = self
            .context
            .totp
            .verify_now(&user.username, totp, code.unwrap_or_default());
        (outcome != TotpOutcome::Accepted).then(|| outcome.reason())
    }

    async fn pass(&mut self, password: &str) -> Flow {
        if self.logged_in.is_some() {
            return self.done(503, "already logged in").await;
        }
        let Some(name) = self.pending_user.take() else {
            return self.done(503, "send USER first").await;
        };
        self.tag.user = Some(name.clone());
        if crate::admission::user_banned(&self.context, &name, self.client_ip) {
            return self
                .login_failed(
                    "user banned after repeated failed logins",
                    "login refused: too many failed logins; try again later",
                )
                .await;
        }
        let user = self.snapshot.user(&name).cloned();
        self.login_method = Self::login_method(user.as_deref());
        // `PASS <password><code>` for TOTP users; certificate-only users send only the code.
        let mode = user.as_ref().map(|u| u.ftps_auth).unwrap_or_default();
        let digits = user
            .as_ref()
            .and_then(|u| u.totp.as_ref())
            .map(|t| t.digits);
        let (password, code) = match (mode.needs_password(), digits) {
            (true, Some(digits)) => match totp::split_password_and_code(password, digits) {
                Some((password, code)) => (password, Some(code)),
                None => (password, None),
            },
            (true, None) => (password, None),
            (false, Some(_)) => ("", Some(password)),
            (false, None) => ("", None),
        };
        let hash = if mode.needs_password() {
            user.as_ref().and_then(|u| u.password_hash.clone())
        } else {
            // Certificate-only: the dummy verification keeps the timing of every PASS alike.
            None
        };
        let verified = crate::admission::verify_password(
            &self.context,
            &self.snapshot,
            self.client_ip,
            password,
            hash,
        )
        .await
            || !mode.needs_password();
        let Some(user) = user.filter(|_| verified) else {
            return self
                .login_failed("invalid credentials", "login incorrect")
                .await;
        };
        if let Some(reason) = self.second_factors(&user, code) {
            return self.login_failed(reason, "login incorrect").await;
        }
        let now = jiff::Timestamp::now();
        let refusal = user.login_refusal(Protocol::Ftps, self.client_ip, now);
        if let Some(reason) = refusal {
            let text = format!("login refused: {reason}");
            return self.login_failed(reason, &text).await;
        }
        if let Some(refusal) = crate::windows::login_refusal(
            &user,
            &self.config().passwords,
            user.ftps_auth.needs_password(),
            crate::windows::now(),
        ) {
            return self.login_refused(refusal).await;
        }
        let limits = self.config().limits.clone();
        if let Err(reason) =
            crate::admission::pace_new_session(&self.context, &limits, &self.tag, &user.username)
                .await
        {
            // Not a guessing attempt (the credentials were right): audited, not counted for
            // bans, and the connection is closed so that the client backs off.
            self.audit_login_failure(crate::admission::PACE_REFUSAL_REASON);
            self.reply(421, &reason).await;
            return Flow::Close(crate::admission::PACE_REFUSAL_REASON);
        }
        let guard = match self
            .context
            .limits
            .login(&user.username, limits.max_sessions_per_user)
        {
            Ok(guard) => guard,
            Err(limit) => {
                let text = format!("login refused: {limit}");
                return self
                    .login_failed("too many sessions for this user", &text)
                    .await;
            }
        };
        let data_root = self.snapshot.data_root.display().to_string();
        let fs = match UserFs::open(
            data_root,
            user.home.clone(),
            self.context.user_work(&user.username),
        )
        .await
        {
            Ok(fs) => {
                let fs = fs.with_object_store(self.snapshot.object_store.as_deref());
                crate::quota::attach(&self.context, &user, &self.tag, fs).await
            }
            Err(error) => {
                tracing::error!(user = %user.username, %error, "cannot open home directory");
                self.audit("login", json!({"result": "failure", "method": "password", "reason": format!("home directory unavailable: {error}")}));
                self.reply(421, "home directory unavailable; closing").await;
                return Flow::Close("home directory unavailable");
            }
        };
        Metrics::inc(
            &self.context.metrics.logins,
            &[("protocol", "ftps"), ("result", "success")],
        );
        let mut fields = self.cert_fields();
        fields["result"] = "success".into();
        fields["method"] = self.login_method.clone().into();
        self.audit("login", fields);
        self.logged_in = Some(LoggedIn {
            user,
            fs,
            _guard: guard,
        });
        self.cwd = VirtualPath::root();
        if mode == FtpsAuth::Certificate && digits.is_none() {
            return self
                .done(232, "User logged in, authorized by security data exchange")
                .await;
        }
        self.done(230, "logged in").await
    }

    /// Counts, meters and audits a failed login attempt.
    fn audit_login_failure(&mut self, reason: &str) {
        self.failures += 1;
        Metrics::inc(
            &self.context.metrics.logins,
            &[("protocol", "ftps"), ("result", "failure")],
        );
        let mut fields = self.cert_fields();
        fields["result"] = "failure".into();
        let method = std::mem::take(&mut self.login_method);
        fields["method"] = if method.is_empty() {
            "password".into()
        } else {
            method.into()
        };
        fields["reason"] = reason.into();
        fields["attempt"] = self.failures.into();
        self.audit("login", fields);
    }

    async fn login_failed(&mut self, reason: &str, reply: &str) -> Flow {
        crate::admission::record_login_failure(
            &self.context,
            self.client_ip,
            self.tag.user.as_deref(),
        );
        self.audit_login_failure(reason);
        self.tag.user = None;
        let delay = Duration::from_millis(self.config().limits.auth_failure_delay_ms);
        tokio::time::sleep(delay).await;
        if self.failures >= self.config().limits.max_auth_attempts {
            self.reply(421, "too many failed logins; closing control connection")
                .await;
            return Flow::Close("too many failed logins");
        }
        self.done(530, reply).await
    }

    /// A verified login refused by password aging (counted like a wrong password) or by the
    /// login windows (not counted towards bans, and told to the client).
    async fn login_refused(&mut self, refusal: crate::windows::Refusal) -> Flow {
        if refusal.counts_for_bans() {
            return self
                .login_failed(refusal.audit_reason(), &refusal.ftps_reply())
                .await;
        }
        self.failures += 1;
        Metrics::inc(
            &self.context.metrics.logins,
            &[("protocol", "ftps"), ("result", "failure")],
        );
        let mut fields = json!({"result": "failure", "method": "password",
            "reason": refusal.audit_reason(), "attempt": self.failures});
        if let crate::windows::Refusal::OutsideWindow {
            next_open: Some(at),
        } = refusal
        {
            fields["next_open"] = at.to_string().into();
        }
        self.audit("login", fields);
        self.tag.user = None;
        if self.failures >= self.config().limits.max_auth_attempts {
            self.reply(421, "too many failed logins; closing control connection")
                .await;
            return Flow::Close("too many failed logins");
        }
        self.done(530, &refusal.ftps_reply()).await
    }

    /// Resolves a client path argument against the working directory.
    async fn path(&mut self, argument: &str) -> Option<VirtualPath> {
        match self.cwd.resolve(argument) {
            Ok(path) => {
                if let Some(name) = crate::userfs::reserved_component(&path) {
                    self.audit(
                        "request_refused",
                        json!({"reason": "reserved name", "path": path.to_string()}),
                    );
                    let text =
                        format!("name {name:?} is reserved for the server's upload temporaries");
                    self.reply(553, &text).await;
                    return None;
                }
                Some(path)
            }
            Err(error @ (PathError::Nul | PathError::TooLong | PathError::NameTooLong)) => {
                let text = format!("invalid path: {error}");
                self.reply(501, &text).await;
                None
            }
        }
    }

    /// Replies 550 and returns false when the user lacks `permission`.
    async fn allowed(&mut self, permission: Permission, path: &VirtualPath) -> bool {
        if self.user().is_some_and(|u| u.has(permission)) {
            return true;
        }
        self.audit(
            "permission_denied",
            json!({"permission": permission.as_str(), "path": path.to_string()}),
        );
        let text = format!("permission denied: {} on {path}", permission.as_str());
        self.reply(550, &text).await;
        false
    }

    /// A budget (`budgets.*`) refused a request or ended the session: audited and counted.
    fn budget_exceeded(&self, budget: &'static str, limit: u64, action: &'static str) {
        crate::admission::budget_exceeded(
            &self.context.audit,
            &self.context.metrics,
            &self.tag,
            budget,
            limit,
            action,
        );
    }

    async fn fs_error(&mut self, error: FsError) -> Flow {
        if let FsError::ListingTooLarge { limit, .. } = &error {
            self.budget_exceeded("maxListingEntries", u64::from(*limit), "refused");
        }
        let (code, text) = fs_reply(&error);
        self.done(code, &text).await
    }

    async fn cwd(&mut self, argument: &str) -> Flow {
        let Some(path) = self.path(argument).await else {
            return Flow::Continue;
        };
        let Some(fs) = self.fs() else {
            return Flow::Continue;
        };
        match fs.metadata(&path).await {
            Ok(info) if info.kind == EntryKind::Dir => {
                let text = format!("directory changed to {path}");
                self.cwd = path;
                self.done(250, &text).await
            }
            Ok(_) => {
                let text = format!("not a directory: {path}");
                self.done(550, &text).await
            }
            Err(error) => self.fs_error(error).await,
        }
    }

    async fn pasv(&mut self, extended: bool) -> Flow {
        if self.epsv_all && !extended {
            return self
                .done(503, "EPSV ALL was sent; PASV is not allowed")
                .await;
        }
        self.drop_data();
        let advertised = self
            .config()
            .passive
            .advertised_for(&self.context.host_name)
            .map(canonical_ip)
            .unwrap_or_else(|| canonical_ip(self.local.ip()));
        let IpAddr::V4(v4) = advertised else {
            if !extended {
                return self.done(425, "PASV needs an IPv4 address; use EPSV").await;
            }
            return self.open_passive(extended, advertised).await;
        };
        self.open_passive(extended, IpAddr::V4(v4)).await
    }

    async fn open_passive(&mut self, extended: bool, advertised: IpAddr) -> Flow {
        let (start, end) = (
            self.config().passive.port_start,
            self.config().passive.port_end,
        );
        let pool = self.context.passive_pool(start, end);
        let Some(lease) = pool.lease(self.local.ip()) else {
            return self.done(425, "no passive port is free; try again").await;
        };
        let port = lease.port;
        let context = self.data_context();
        self.data = Some(DataSource::Passive(tokio::spawn(
            context.accept_passive(lease),
        )));
        if extended {
            let text = format!("Entering Extended Passive Mode (|||{port}|)");
            self.done(229, &text).await
        } else {
            let IpAddr::V4(v4) = advertised else {
                return self.done(425, "PASV needs an IPv4 address").await;
            };
            let o = v4.octets();
            let text = format!(
                "Entering Passive Mode ({},{},{},{},{},{})",
                o[0],
                o[1],
                o[2],
                o[3],
                port >> 8,
                port & 0xff
            );
            self.done(227, &text).await
        }
    }

    async fn epsv(&mut self, argument: &str) -> Flow {
        match argument.trim().to_ascii_uppercase().as_str() {
            "ALL" => {
                self.epsv_all = true;
                self.done(200, "EPSV ALL ok").await
            }
            "" | "1" | "2" => self.pasv(true).await,
            _ => {
                self.done(522, "network protocol not supported, use (1,2)")
                    .await
            }
        }
    }

    async fn active(&mut self, verb: &str, argument: &str) -> Flow {
        if !self.config().active_mode.enabled {
            return self
                .done(
                    502,
                    "active mode (PORT/EPRT) is disabled on this server; use EPSV or PASV",
                )
                .await;
        }
        if self.epsv_all {
            return self.done(503, "EPSV ALL was sent; use EPSV").await;
        }
        let target = if verb == "PORT" {
            command::parse_port(argument)
        } else {
            command::parse_eprt(argument)
        };
        let Some(target) = target else {
            let text = format!("invalid {verb} argument");
            return self.done(501, &text).await;
        };
        if canonical_ip(target.ip()) != self.client_ip || target.port() < 1024 {
            self.audit("data_rejected", json!({"reason": "active target is not the client's own address and an unprivileged port", "target": target.to_string()}));
            return self
                .done(
                    504,
                    "refused: active mode connects only to your own address and a port >= 1024",
                )
                .await;
        }
        self.drop_data();
        self.data = Some(DataSource::Active(target));
        let text = format!("{verb} ok");
        self.done(200, &text).await
    }

    fn data_context(&self) -> DataContext {
        DataContext {
            proxy: crate::proxy::Policy::from_config(&self.config().proxy_protocol),
            tls: self.tls.data.clone(),
            client_ip: self.client_ip,
            require_resumption: self.config().tls.require_session_resumption,
            binding: self
                .user()
                .map(|user| user.ftps_data_binding)
                .unwrap_or_default(),
            control_cert_sha256: self.peer_cert.as_ref().map(|cert| cert.sha256.clone()),
            connect_timeout: Duration::from_secs(self.config().timeouts.data_connect_seconds),
            audit: self.context.audit.clone(),
            metrics: self.context.metrics.clone(),
            tag: self.tag.clone(),
        }
    }

    /// Checks PROT P and a pending PASV/PORT, sends 150, and opens the data connection.
    /// On failure the reply has been sent and `None` is returned.
    async fn open_data(&mut self, what: &str) -> Option<DataStream> {
        if !self.protected {
            self.drop_data();
            self.reply(521, "PROT P is required before any data transfer")
                .await;
            return None;
        }
        let Some(source) = self.data.take() else {
            self.reply(425, "use PASV or EPSV first").await;
            return None;
        };
        let text = format!("opening TLS data connection for {what}");
        if !self.reply(150, &text).await {
            return None;
        }
        let result = match source {
            DataSource::Passive(task) => match task.await {
                Ok(result) => result,
                Err(join) => Err(DataError::Handshake(join.to_string())),
            },
            DataSource::Active(target) => self.data_context().connect_active(target).await,
        };
        match result {
            Ok(stream) => Some(stream),
            Err(error) => {
                let text = format!("cannot open data connection: {error}");
                self.reply(425, &text).await;
                None
            }
        }
    }

    /// Runs a transfer while still reading the control connection, so that ABOR works and
    /// commands sent meanwhile are kept for later. Returns None when aborted or lost.
    async fn supervise<T>(&mut self, transfer: impl Future<Output = T>) -> Option<T> {
        tokio::pin!(transfer);
        loop {
            tokio::select! {
                result = &mut transfer => return Some(result),
                incoming = self.control.next() => match incoming {
                    Ok(Incoming::Line(line)) => {
                        let is_abort = command::parse(&line).map(|c| c.verb == "ABOR").unwrap_or(false);
                        if is_abort {
                            return None;
                        }
                        let limit = self.config().budgets.max_queued_control_lines;
                        if self.queued.len() >= limit as usize {
                            // Held lines are bounded by the budget, not by how far the client
                            // fills the socket: one more ends the session.
                            self.budget_exceeded(
                                "maxQueuedControlLines",
                                u64::from(limit),
                                "disconnected",
                            );
                            let text = format!(
                                "too many commands sent during a transfer (budgets.maxQueuedControlLines is {limit}); closing"
                            );
                            self.reply(421, &text).await;
                            self.queued.clear();
                            self.queued.push_back(Incoming::Eof);
                            return None;
                        }
                        self.queued.push_back(Incoming::Line(line));
                    }
                    Ok(Incoming::TooLong) => self.queued.push_back(Incoming::TooLong),
                    Ok(Incoming::Eof) | Err(_) => {
                        self.queued.push_back(Incoming::Eof);
                        return None;
                    }
                }
            }
        }
    }

    fn data_idle(&self) -> Duration {
        Duration::from_secs(self.config().timeouts.data_idle_seconds)
    }

    fn transfer_audit(
        &self,
        direction: &str,
        path: &VirtualPath,
        bytes: u64,
        started: std::time::Instant,
        result: &str,
        extra: serde_json::Value,
    ) {
        Metrics::inc(
            &self.context.metrics.transfers,
            &[("direction", direction), ("result", result)],
        );
        Metrics::add(
            &self.context.metrics.bytes,
            &[("direction", direction)],
            bytes,
        );
        let mut fields = json!({
            "direction": direction,
            "path": path.to_string(),
            "bytes": bytes,
            "duration_ms": started.elapsed().as_millis() as u64,
            "result": result,
        });
        if let (Some(target), serde_json::Value::Object(extra)) = (fields.as_object_mut(), extra) {
            target.extend(extra);
        }
        self.audit("transfer", fields);
    }

    async fn finish_transfer(
        &mut self,
        outcome: Option<Result<(), TransferError>>,
        direction: &str,
        path: &VirtualPath,
        progress: &AtomicU64,
        started: std::time::Instant,
    ) -> Flow {
        let bytes = progress.load(Ordering::Relaxed);
        match outcome {
            Some(Ok(())) => {
                self.transfer_audit(direction, path, bytes, started, "ok", json!({}));
                self.done(226, "transfer complete").await
            }
            Some(Err(error)) => {
                self.transfer_audit(
                    direction,
                    path,
                    bytes,
                    started,
                    "failed",
                    json!({"error": error.to_string()}),
                );
                let (code, text) = match &error {
                    TransferError::Storage(fs) => fs_reply(fs),
                    _ => (426, format!("transfer failed: {error}")),
                };
                self.done(code, &text).await
            }
            None => {
                self.transfer_audit(direction, path, bytes, started, "aborted", json!({}));
                self.reply(426, "transfer aborted").await;
                self.done(226, "ABOR successful").await
            }
        }
    }

    async fn listing(&mut self, verb: &str, argument: &str) -> Flow {
        let target = if verb == "MLSD" {
            argument
        } else {
            command::strip_list_options(argument)
        };
        let Some(path) = self.path(target).await else {
            self.drop_data();
            return Flow::Continue;
        };
        if !self.allowed(Permission::List, &path).await {
            self.drop_data();
            return Flow::Continue;
        }
        let Some(fs) = self.fs() else {
            return Flow::Continue;
        };
        let max_entries = self.config().budgets.max_listing_entries;
        let is_dir = match fs.metadata(&path).await {
            Ok(info) => info.kind == EntryKind::Dir,
            Err(error) => {
                self.drop_data();
                return self.fs_error(error).await;
            }
        };
        if verb == "MLSD" && !is_dir {
            self.drop_data();
            let text = format!("not a directory: {path}");
            return self.done(501, &text).await;
        }
        let Some(user) = self.user().cloned() else {
            return Flow::Continue;
        };
        // A directory is streamed in batches as it is read (unsorted, as the directory gives
        // it): a listing held whole cost ~35 MiB per session for 50,000 long names, times the
        // sessions of a user that never reads its data connections.
        let mut cursor = if is_dir {
            match fs.open_dir_cursor(&path).await {
                Ok(cursor) => Some(cursor),
                Err(error) => {
                    self.drop_data();
                    return self.fs_error(error).await;
                }
            }
        } else {
            None
        };
        let single = if is_dir {
            Vec::new()
        } else {
            match fs.list(&path, 1).await {
                Ok(entries) => entries,
                Err(error) => {
                    self.drop_data();
                    return self.fs_error(error).await;
                }
            }
        };
        let Some(mut stream) = self.open_data(&format!("{verb} {path}")).await else {
            return Flow::Continue;
        };
        let progress = AtomicU64::new(0);
        let started = std::time::Instant::now();
        let idle = self.data_idle();
        let now = SystemTime::now();
        let format = |entry: &userfs::EntryInfo| match verb {
            "NLST" => format!("{}\r\n", entry.name),
            "MLSD" => format!("{}\r\n", listing::mlsx_facts(entry, &user, None)),
            _ => listing::list_line(entry, now),
        };
        let listed_path = path.clone();
        let send = async {
            let mut sent = 0usize;
            let mut pending: Vec<userfs::EntryInfo> = single;
            loop {
                if !pending.is_empty() {
                    sent += pending.len();
                    let text: String = pending.iter().map(&format).collect();
                    data::send_part(&mut stream, text.as_bytes(), &progress, idle).await?;
                }
                let Some(cursor) = cursor.as_mut() else { break };
                let want =
                    LIST_BATCH.min(max_entries as usize + 1 - sent.min(max_entries as usize));
                let batch = fs
                    .next_entries(cursor, want)
                    .await
                    .map_err(TransferError::Storage)?;
                if batch.is_empty() {
                    break;
                }
                if sent + batch.len() > max_entries as usize {
                    return Err(TransferError::Storage(FsError::ListingTooLarge {
                        path: listed_path.to_string(),
                        limit: max_entries,
                    }));
                }
                pending = batch
                    .into_iter()
                    .map(|(name, stat)| userfs::entry_info(name, &stat))
                    .collect();
            }
            data::finish_send(&mut stream, idle).await
        };
        let outcome = self.supervise(send).await;
        if let Some(Err(TransferError::Storage(FsError::ListingTooLarge { limit, .. }))) = &outcome
        {
            self.budget_exceeded("maxListingEntries", u64::from(*limit), "refused");
        }
        self.finish_transfer(outcome, "list", &path, &progress, started)
            .await
    }

    async fn mlst(&mut self, argument: &str) -> Flow {
        let Some(path) = self.path(argument).await else {
            return Flow::Continue;
        };
        if !self.allowed(Permission::List, &path).await {
            return Flow::Continue;
        }
        let (Some(fs), Some(user)) = (self.fs(), self.user().cloned()) else {
            return Flow::Continue;
        };
        match fs.metadata(&path).await {
            Ok(mut info) => {
                info.name = path.to_string();
                let facts = listing::mlsx_facts(&info, &user, None);
                let first = format!("Listing {path}");
                self.done_lines(250, &first, &[facts], "End").await
            }
            Err(error) => self.fs_error(error).await,
        }
    }

    async fn stat(&mut self, argument: &str) -> Flow {
        let target = command::strip_list_options(argument);
        if target.is_empty() && argument.trim().is_empty() {
            let user = self.user().map(|u| u.username.clone()).unwrap_or_default();
            let version = self
                .control
                .tls()
                .and_then(|c| c.protocol_version())
                .map(|v| format!("{v:?}"))
                .unwrap_or_default();
            let lines = vec![
                format!("connected from {}", self.peer.ip()),
                format!("logged in as {user}"),
                format!("control connection protected by {version}"),
                "data connections protected (PROT P required)".to_string(),
            ];
            return self
                .done_lines(211, "Sluice FTPS status", &lines, "End of status")
                .await;
        }
        let Some((path, fs)) = self.checked(target, Permission::List).await else {
            return Flow::Continue;
        };
        let max_entries = self.config().budgets.max_listing_entries;
        match fs.list(&path, max_entries).await {
            Ok(entries) => {
                let now = SystemTime::now();
                let lines: Vec<String> = entries
                    .iter()
                    .map(|e| listing::list_line(e, now).trim_end().to_string())
                    .collect();
                let first = format!("status of {path}");
                self.done_lines(213, &first, &lines, "End of status").await
            }
            Err(error) => self.fs_error(error).await,
        }
    }

    async fn size_or_mdtm(&mut self, verb: &str, argument: &str) -> Flow {
        let Some((path, fs)) = self.checked(argument, Permission::List).await else {
            return Flow::Continue;
        };
        match fs.metadata(&path).await {
            Ok(info) if info.kind == EntryKind::Dir => {
                let text = format!("not a regular file: {path}");
                self.done(550, &text).await
            }
            Ok(info) => {
                let text = if verb == "SIZE" {
                    info.size.to_string()
                } else {
                    listing::mdtm(info.modified)
                };
                self.done(213, &text).await
            }
            Err(error) => self.fs_error(error).await,
        }
    }

    async fn retr(&mut self, argument: &str) -> Flow {
        let offset = std::mem::take(&mut self.restart);
        let Some(path) = self.path(argument).await else {
            self.drop_data();
            return Flow::Continue;
        };
        if !self.allowed(Permission::Download, &path).await {
            self.drop_data();
            return Flow::Continue;
        }
        let Some(fs) = self.fs() else {
            return Flow::Continue;
        };
        let (chunks, size) = match fs.read_stream(&path, offset).await {
            Ok(opened) => opened,
            Err(error) => {
                self.drop_data();
                return self.fs_error(error).await;
            }
        };
        let in_use = crate::retention::InUse::hold(fs.home_key(), &path);
        let what = format!("{path} ({} bytes)", size - offset);
        let Some(mut stream) = self.open_data(&what).await else {
            return Flow::Continue;
        };
        let progress = AtomicU64::new(0);
        let started = std::time::Instant::now();
        let idle = self.data_idle();
        let outcome = self
            .supervise(data::pump_download(&mut stream, chunks, &progress, idle))
            .await;
        let completed = matches!(outcome, Some(Ok(())));
        let flow = self
            .finish_transfer(outcome, "download", &path, &progress, started)
            .await;
        if completed {
            let bytes = progress.load(Ordering::Relaxed);
            self.event(Kind::Downloaded, &path, Detail::size(bytes))
                .await;
            drop(in_use);
            if let Some(user) = self.user().cloned() {
                let sinks = crate::retention::Sinks {
                    audit: &self.context.audit,
                    metrics: &self.context.metrics,
                    events: &self.context.events,
                };
                let whole = offset == 0 && bytes >= size;
                crate::retention::after_download(sinks, &self.tag, &user, &fs, &path, whole).await;
            }
        }
        flow
    }

    async fn store(&mut self, argument: &str, append: bool) -> Flow {
        let offset = std::mem::take(&mut self.restart);
        let Some(path) = self.path(argument).await else {
            self.drop_data();
            return Flow::Continue;
        };
        let Some(fs) = self.fs() else {
            return Flow::Continue;
        };
        let exists = match fs.exists(&path).await {
            Ok(exists) => exists,
            Err(error) => {
                self.drop_data();
                return self.fs_error(error).await;
            }
        };
        let needed = if exists || offset > 0 {
            Permission::Overwrite
        } else {
            Permission::Upload
        };
        if !self.allowed(needed, &path).await {
            self.event(Kind::UploadRefused, &path, Detail::refused("permission"))
                .await;
            self.drop_data();
            return Flow::Continue;
        }
        if let Some(text) = self.context.events.upload_refusal() {
            self.drop_data();
            return self.done(452, text).await;
        }
        let mode = match (append, offset) {
            (true, _) => WriteMode::Append,
            (false, 0) => WriteMode::Replace,
            (false, offset) => WriteMode::At(offset),
        };
        if self.config().scanning.is_some() && mode != WriteMode::Replace {
            // APPE and REST+STOR write into the published file: nothing to scan before.
            self.drop_data();
            return self
                .done(
                    550,
                    "APPE and restarted uploads are not available while uploads are scanned \
                     (scanning): send the whole file with STOR",
                )
                .await;
        }
        let atomic = self.config().uploads.atomic;
        // Without `overwrite`, the file is created exclusively (or its temporary published
        // without replacing): the existence check above alone lets two sessions race.
        let replace = if self.user().is_some_and(|u| u.has(Permission::Overwrite)) {
            Replace::Allowed
        } else {
            Replace::Never
        };
        let _in_use = crate::retention::InUse::hold(fs.home_key(), &path);
        let mut sink = match fs.write_stream(&path, mode, atomic, replace).await {
            Ok(sink) => sink,
            Err(error) => {
                self.drop_data();
                self.quota_refusal_event(&path, &error, 0).await;
                return self.fs_error(error).await;
            }
        };
        let Some(mut stream) = self.open_data(&path.to_string()).await else {
            sink.abort().await;
            return Flow::Continue;
        };
        let progress = AtomicU64::new(0);
        let started = std::time::Instant::now();
        let idle = self.data_idle();
        let outcome = self
            .supervise(data::pump_upload(&mut stream, &mut sink, &progress, idle))
            .await;
        if matches!(outcome, Some(Ok(_))) {
            // Answer the client's close_notify with ours: clients such as Python's ftplib wait
            // for it (SSL unwrap) before reading the 226.
            let _ = tokio::time::timeout(Duration::from_secs(2), stream.shutdown()).await;
        }
        drop(stream);
        let bytes = progress.load(Ordering::Relaxed);
        let mode_name = match mode {
            WriteMode::Replace => "replace",
            WriteMode::Append => "append",
            WriteMode::At(_) => "resume",
        };
        match outcome {
            Some(Ok(clean_close)) => match self.scan_and_publish(&fs, &path, sink).await {
                Published::Refused {
                    refusal,
                    sha256,
                    written,
                } => {
                    let message = refusal.client_message();
                    self.transfer_audit(
                        "upload",
                        &path,
                        written,
                        started,
                        "failed",
                        json!({"error": message, "mode": mode_name}),
                    );
                    self.audit(
                        "upload_rejected",
                        refusal.audit_fields(&path, written, Some(&sha256)),
                    );
                    let detail = Detail {
                        size: Some(written),
                        sha256: Some(&sha256),
                        signature: refusal.signature(),
                        ..Detail::refused(refusal.reason.as_str())
                    };
                    self.event(Kind::UploadRefused, &path, detail).await;
                    self.done(refusal.ftp_code(), &message).await
                }
                Published::Ok {
                    sha256,
                    written,
                    scan,
                } => {
                    let mut extra = json!({"sha256": sha256, "mode": mode_name, "offset": offset, "tls_close_notify": clean_close});
                    if let Some(scan) = scan {
                        extra["scan"] = scan.as_str().into();
                    }
                    self.transfer_audit("upload", &path, written, started, "ok", extra);
                    // Published under its final name: now, and only now, the event.
                    self.event(Kind::Uploaded, &path, Detail::upload(written, &sha256))
                        .await;
                    self.done(226, "transfer complete").await
                }
                Published::Failed(error) => {
                    self.transfer_audit(
                        "upload",
                        &path,
                        bytes,
                        started,
                        "failed",
                        json!({"error": error.to_string(), "mode": mode_name}),
                    );
                    self.quota_refusal_event(&path, &error, bytes).await;
                    self.fs_error(error).await
                }
            },
            Some(Err(error)) => {
                let storage = sink.abort().await;
                let message = storage
                    .as_ref()
                    .map(ToString::to_string)
                    .unwrap_or_else(|| error.to_string());
                self.transfer_audit(
                    "upload",
                    &path,
                    bytes,
                    started,
                    "failed",
                    json!({"error": message, "mode": mode_name}),
                );
                match storage {
                    Some(storage) => {
                        self.quota_refusal_event(&path, &storage, bytes).await;
                        self.fs_error(storage).await
                    }
                    None => {
                        let text = format!("transfer failed: {error}");
                        self.done(426, &text).await
                    }
                }
            }
            None => {
                sink.abort().await;
                self.transfer_audit(
                    "upload",
                    &path,
                    bytes,
                    started,
                    "aborted",
                    json!({"mode": mode_name}),
                );
                self.reply(426, "transfer aborted").await;
                self.done(226, "ABOR successful").await
            }
        }
    }

    /// The `upload.refused` event (reason `quota`) of an upload the quota stopped; nothing for
    /// other errors (a broken connection is not a refusal).
    async fn quota_refusal_event(&self, path: &VirtualPath, error: &FsError, written: u64) {
        if matches!(error, FsError::Quota { .. }) {
            let detail = Detail {
                size: Some(written),
                ..Detail::refused("quota")
            };
            self.event(Kind::UploadRefused, path, detail).await;
        }
    }

    /// Finishes a complete upload and, when scanning is configured, has it scanned before the
    /// rename that publishes it (`crate::scan`).
    async fn scan_and_publish(
        &self,
        fs: &UserFs,
        path: &VirtualPath,
        sink: crate::userfs::UploadSink,
    ) -> Published {
        let finished = match sink.finish().await {
            Ok(finished) => finished,
            Err(error) => return Published::Failed(error),
        };
        let mut scan = None;
        if let (Some(scanning), Some(dir), Some(temp)) = (
            self.config().scanning.as_ref(),
            self.snapshot.quarantine_dir.as_ref(),
            finished.temp_name(),
        ) {
            let scanner = crate::scan::Scanner {
                config: scanning,
                quarantine_dir: dir,
                metrics: &self.context.metrics.scan,
            };
            let upload = crate::scan::Upload {
                fs,
                temp,
                size: finished.written,
                user: self.user().map_or("", |u| u.username.as_str()),
                path,
            };
            match scanner.gate(upload).await {
                Ok(note) => scan = Some(note),
                Err(refusal) => {
                    // The gate removed or quarantined the file: give back its quota charge.
                    let (sha256, written) = (finished.sha256.clone(), finished.written);
                    finished.discard();
                    return Published::Refused {
                        refusal,
                        sha256,
                        written,
                    };
                }
            }
        }
        match finished.publish().await {
            Ok((sha256, written)) => Published::Ok {
                sha256,
                written,
                scan,
            },
            Err(error) => Published::Failed(error),
        }
    }

    /// Resolves a path argument and checks `permission` on it, replying 501/550 when either
    /// fails; the path with the user's filesystem otherwise.
    async fn checked(
        &mut self,
        argument: &str,
        permission: Permission,
    ) -> Option<(VirtualPath, UserFs)> {
        let path = self.path(argument).await?;
        if !self.allowed(permission, &path).await {
            return None;
        }
        Some((path, self.fs()?))
    }

    async fn simple_op(
        &mut self,
        argument: &str,
        permission: Permission,
        op: &str,
    ) -> Option<(VirtualPath, UserFs)> {
        let (path, fs) = self.checked(argument, permission).await?;
        self.audit(
            "file_operation",
            json!({"operation": op, "path": path.to_string()}),
        );
        Some((path, fs))
    }

    async fn dele(&mut self, argument: &str) -> Flow {
        let Some((path, fs)) = self.simple_op(argument, Permission::Delete, "delete").await else {
            return Flow::Continue;
        };
        match fs.remove_file(&path).await {
            Ok(()) => {
                self.event(Kind::Deleted, &path, Detail::default()).await;
                let text = format!("deleted {path}");
                self.done(250, &text).await
            }
            Err(error) => self.fs_error(error).await,
        }
    }

    async fn mkd(&mut self, argument: &str) -> Flow {
        let Some((path, fs)) = self.simple_op(argument, Permission::Mkdir, "mkdir").await else {
            return Flow::Continue;
        };
        match fs.create_dir(&path).await {
            Ok(()) => {
                self.event(Kind::DirCreated, &path, Detail::default()).await;
                let text = format!("{} created", quote_path(&path));
                self.done(257, &text).await
            }
            Err(error) => self.fs_error(error).await,
        }
    }

    async fn rmd(&mut self, argument: &str) -> Flow {
        let Some((path, fs)) = self.simple_op(argument, Permission::Rmdir, "rmdir").await else {
            return Flow::Continue;
        };
        match fs.remove_dir(&path).await {
            Ok(()) => {
                self.event(Kind::DirRemoved, &path, Detail::default()).await;
                let text = format!("removed {path}");
                self.done(250, &text).await
            }
            Err(error) => self.fs_error(error).await,
        }
    }

    async fn rnfr(&mut self, argument: &str) -> Flow {
        self.rename_from = None;
        let Some((path, fs)) = self.checked(argument, Permission::Rename).await else {
            return Flow::Continue;
        };
        match fs.exists(&path).await {
            Ok(true) => {
                self.rename_from = Some(path);
                self.done(350, "ready for RNTO").await
            }
            Ok(false) => {
                let text = format!("no such file or directory: {path}");
                self.done(550, &text).await
            }
            Err(error) => self.fs_error(error).await,
        }
    }

    async fn rnto(&mut self, argument: &str) -> Flow {
        let Some(from) = self.rename_from.take() else {
            return self.done(503, "send RNFR first").await;
        };
        let Some(to) = self.path(argument).await else {
            return Flow::Continue;
        };
        if !self.allowed(Permission::Rename, &to).await {
            return Flow::Continue;
        }
        let Some(fs) = self.fs() else {
            return Flow::Continue;
        };
        if matches!(fs.exists(&to).await, Ok(true))
            && !self.allowed(Permission::Overwrite, &to).await
        {
            return Flow::Continue;
        }
        let replace = if self.user().is_some_and(|u| u.has(Permission::Overwrite)) {
            Replace::Allowed
        } else {
            Replace::Never
        };
        self.audit(
            "file_operation",
            json!({"operation": "rename", "path": from.to_string(), "to": to.to_string()}),
        );
        match fs.rename(&from, &to, replace).await {
            Ok(()) => {
                self.event(Kind::Renamed, &from, Detail::renamed(&to)).await;
                let text = format!("renamed {from} to {to}");
                self.done(250, &text).await
            }
            Err(error) => self.fs_error(error).await,
        }
    }

    async fn hash(&mut self, verb: &str, argument: &str) -> Flow {
        let Some((path, fs)) = self.checked(argument, Permission::Download).await else {
            return Flow::Continue;
        };
        match fs.sha256(&path).await {
            Ok((digest, size)) => {
                let text = if verb == "HASH" {
                    format!("SHA-256 0-{size} {digest} {path}")
                } else {
                    digest
                };
                self.done(213, &text).await
            }
            Err(error) => self.fs_error(error).await,
        }
    }
}
