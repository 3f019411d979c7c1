//! SFTP over SSH: the listener, one SSH connection per client (`russh`), authentication
//! against the shared user store, and the SFTP subsystem (our own handler over `russh-sftp`'s
//! protocol types). Sessions share the FTPS server's state: users and hot reload, session
//! limits, the argon2 verification pool, metrics and the audit log.

pub mod codec;
pub mod files;
pub mod handler;
pub mod keys;
pub mod refuse;
pub mod replies;
pub mod session;
pub mod tap;

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;
use sluice_config::{Protocol, canonical_ip};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

use crate::audit::SessionTag;
use crate::context::Context;
use crate::limits::ConnectionGuard;
use crate::metrics::Metrics;

/// Accepts SSH connections forever, enforcing the total and per-address session limits (shared
/// with FTPS) before the SSH handshake. Accept errors are logged and retried, never fatal.
pub async fn serve(listener: TcpListener, context: Arc<Context>) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::warn!(listener = "sftp", %error, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if *context.drain.borrow() {
            // Draining: no new sessions (the client sees the connection closed at once).
            drop(stream);
            continue;
        }
        let policy =
            crate::proxy::Policy::from_config(&context.snapshot.borrow().config.proxy_protocol);
        match policy {
            None => start(&context, stream, crate::proxy::Origin::direct(peer)),
            Some(policy) => {
                let context = context.clone();
                tokio::spawn(async move {
                    let mut stream = stream;
                    let origin =
                        crate::proxy::screen(&context, &policy, &mut stream, peer, "sftp").await;
                    if let Some(origin) = origin {
                        start(&context, stream, origin);
                    }
                });
            }
        }
    }
}

/// Admits a connection from `origin` (the client behind any PROXY header) and starts it, or
/// answers the refusal.
fn start(context: &Arc<Context>, stream: TcpStream, origin: crate::proxy::Origin) {
    let guard = match crate::admission::admit(context, &origin, "sftp") {
        Ok(guard) => guard,
        Err(refused) => {
            tokio::spawn(refuse::refuse(stream, keys::SERVER_ID, refused));
            return;
        }
    };
    let _ = stream.set_nodelay(true);
    tokio::spawn(run_connection(context.clone(), stream, origin, guard));
}

/// State shared between the connection's driver (below) and its russh handler.
#[derive(Default)]
pub struct Shared {
    /// Set once the user is fully authenticated.
    pub user: Mutex<Option<String>>,
    /// The home the session's confined view was opened on (set at login).
    pub home: Mutex<Option<String>>,
    /// Why the handler asked to end the connection.
    pub end_reason: Mutex<Option<String>>,
    /// Notified at login, so that the driver starts watching the user's login window.
    pub logged_in: tokio::sync::Notify,
    /// Open file handles (see `session::SessionEnv::open_files`).
    pub open_files: Arc<std::sync::atomic::AtomicUsize>,
    /// Open handles of any kind (see `session::SessionEnv::open_handles`).
    pub open_handles: Arc<std::sync::atomic::AtomicUsize>,
}

impl Shared {
    fn user(&self) -> Option<String> {
        self.user.lock().ok().and_then(|u| u.clone())
    }

    fn reason(&self) -> Option<String> {
        self.end_reason.lock().ok().and_then(|r| r.clone())
    }
}

async fn run_connection(
    context: Arc<Context>,
    stream: TcpStream,
    origin: crate::proxy::Origin,
    guard: ConnectionGuard,
) {
    let peer = origin.client;
    let started = std::time::Instant::now();
    let number = context.session_counter.fetch_add(1, Ordering::Relaxed);
    let client_ip = canonical_ip(peer.ip());
    let local = stream
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let mut tag = SessionTag {
        session: format!("{}-{number}", context.session_prefix),
        protocol: "sftp",
        ip: client_ip.to_string(),
        user: None,
    };
    let snapshot = context.snapshot.borrow().clone();
    let Some(material) = snapshot.ssh.clone() else {
        return;
    };
    let mut connect = origin.audit_fields();
    connect.insert("listener".into(), "sftp".into());
    connect.insert("port".into(), peer.port().into());
    connect.insert("local".into(), local.into());
    context
        .audit
        .event(&tag, "connect", serde_json::Value::Object(connect));
    Metrics::inc(&context.metrics.sessions_total, &[("listener", "sftp")]);
    context.metrics.sessions_active.inc();

    let capture = tap::SharedCapture::default();
    let shared = Arc::new(Shared::default());
    let kill = Arc::new(tap::KillSwitch::default());
    let handler = handler::SshHandler::new(
        context.clone(),
        material.clone(),
        tag.clone(),
        client_ip,
        capture.clone(),
        shared.clone(),
        kill.clone(),
    );
    let login_deadline =
        Instant::now() + Duration::from_secs(snapshot.config.timeouts.login_seconds);
    let stream = tap::Tap::new(stream, capture, kill.clone());
    let reason = match tokio::time::timeout_at(
        login_deadline,
        russh::server::run_stream(material.config.clone(), stream, handler),
    )
    .await
    {
        Err(_) => "login timeout".to_string(),
        Ok(Err(error)) => format!("ssh error: {error}"),
        Ok(Ok(running)) => drive(&context, running, &shared, login_deadline, &mut tag).await,
    };
    // Whatever ended the session, make sure its task lets go of the socket.
    kill.fire();
    if let Some(user) = shared.user() {
        tag.user = Some(user);
    }
    context.audit.event(
        &tag,
        "disconnect",
        json!({"reason": reason, "duration_ms": started.elapsed().as_millis() as u64}),
    );
    context.metrics.sessions_active.dec();
    drop(guard);
}

/// Waits for the SSH session to end, enforcing the login timeout and ending the session when a
/// reload removes, disables or restricts its user.
async fn drive(
    context: &Arc<Context>,
    running: russh::server::RunningSession<handler::SshHandler>,
    shared: &Arc<Shared>,
    login_deadline: Instant,
    tag: &mut SessionTag,
) -> String {
    let handle = running.handle();
    let mut snapshot_rx = context.snapshot.clone();
    snapshot_rx.borrow_and_update();
    tokio::pin!(running);
    let mut deadline = Some(login_deadline);
    let mut drain = context.drain.subscribe();
    let mut draining = false;
    loop {
        if draining && (shared.user().is_none() || shared.open_files.load(Ordering::Relaxed) == 0) {
            let _ = handle
                .disconnect(
                    russh::Disconnect::ByApplication,
                    crate::drain::SFTP_MESSAGE.into(),
                    String::new(),
                )
                .await;
            let _ = tokio::time::timeout(Duration::from_secs(2), &mut running).await;
            return crate::drain::REASON.to_string();
        }
        // The end of the logged-in user's current login window, if it has windows.
        let edge = shared
            .user()
            .and_then(|name| {
                snapshot_rx
                    .borrow()
                    .user(&name)
                    .and_then(|user| crate::windows::until_edge(user, crate::windows::now()))
            })
            .map(|wait| Instant::now() + wait);
        tokio::select! {
            _ = crate::drain::started(&mut drain), if !draining => {
                draining = true;
            }
            _ = tokio::time::sleep(Duration::from_millis(200)), if draining => {}
            _ = shared.logged_in.notified() => {}
            _ = async {
                match edge {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            } => {
                let Some(name) = shared.user() else { continue };
                let outside = snapshot_rx
                    .borrow()
                    .user(&name)
                    .is_some_and(|user| crate::windows::outside_window(user, crate::windows::now()));
                if outside {
                    tag.user = Some(name);
                    context.audit.event(tag, "session_ended", json!({"reason": "login window closed"}));
                    let text = crate::windows::WINDOW_CLOSED;
                    let _ = handle
                        .disconnect(russh::Disconnect::ByApplication, text.into(), String::new())
                        .await;
                    let _ = tokio::time::timeout(Duration::from_secs(2), &mut running).await;
                    return text.to_string();
                }
            }
            result = &mut running => {
                if let Some(reason) = shared.reason() {
                    return reason;
                }
                return match result {
                    Ok(()) => "client closed the connection".to_string(),
                    Err(russh::Error::InactivityTimeout) => "idle timeout".to_string(),
                    Err(russh::Error::HUP) | Err(russh::Error::Disconnect) => "client closed the connection".to_string(),
                    Err(error) => format!("ssh error: {error}"),
                };
            }
            _ = async {
                match deadline {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            } => {
                deadline = None;
                if shared.user().is_none() {
                    let _ = handle
                        .disconnect(russh::Disconnect::ByApplication, "login timeout".into(), String::new())
                        .await;
                    // Give the session a moment to send the message, then stop waiting.
                    let _ = tokio::time::timeout(Duration::from_secs(2), &mut running).await;
                    return "login timeout".to_string();
                }
            }
            changed = snapshot_rx.changed() => {
                if changed.is_err() {
                    std::future::pending::<()>().await;
                }
                let Some(name) = shared.user() else { continue };
                let latest = snapshot_rx.borrow_and_update().clone();
                let ip: std::net::IpAddr = tag.ip.parse().unwrap_or(std::net::IpAddr::from([0, 0, 0, 0]));
                let reason = match latest.user(&name) {
                    None => Some("user removed"),
                    Some(user) if user.disabled
                        || user.is_expired_at(jiff::Timestamp::now())
                        || !user.allows_ip(ip)
                        || !user.allows_protocol(Protocol::Sftp) => Some("user disabled, expired or restricted"),
                    Some(user) if crate::windows::outside_window(user, crate::windows::now()) => Some("login window closed"),
                    Some(user) if shared.home.lock().ok().and_then(|h| h.clone()).is_some_and(|home| home != user.home) => Some("home directory changed"),
                    Some(_) => None,
                };
                if let Some(reason) = reason {
                    tag.user = Some(name);
                    context.audit.event(tag, "session_ended", json!({"reason": reason}));
                    let text = match reason {
                        "user removed" => "account removed; closing the connection",
                        "login window closed" => crate::windows::WINDOW_CLOSED,
                        "home directory changed" => "home directory changed; closing the connection, log in again",
                        _ => "account disabled, expired or restricted; closing the connection",
                    };
                    let _ = handle
                        .disconnect(russh::Disconnect::ByApplication, text.into(), String::new())
                        .await;
                    let _ = tokio::time::timeout(Duration::from_secs(2), &mut running).await;
                    return text.to_string();
                }
            }
        }
    }
}
