//! Prometheus metrics and the operations HTTP endpoint (`/healthz`, `/readyz`, `/metrics`).

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Request, Response, StatusCode};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

type Labels = Vec<(&'static str, String)>;

/// Every metric the server exports. Label values come from closed sets (verbs we know,
/// directions, results) so that hostile input cannot blow up cardinality.
#[derive(Default)]
pub struct Metrics {
    pub sessions_active: Gauge,
    /// `limits.maxSessions` of the configuration in force (set at start and on every reload).
    pub sessions_max: Gauge,
    /// 1 while `/readyz` answers 200, 0 while starting or draining.
    pub ready: Gauge,
    pub sessions_total: Family<Labels, Counter>,
    pub sessions_refused: Family<Labels, Counter>,
    pub logins: Family<Labels, Counter>,
    /// Password checks by how they were answered: `verified` / `rejected` by argon2id, `cached`
    /// by `crate::verified_cache`.
    pub password_checks: Family<Labels, Counter>,
    pub commands: Family<Labels, Counter>,
    pub bytes: Family<Labels, Counter>,
    pub transfers: Family<Labels, Counter>,
    pub tls_failures: Family<Labels, Counter>,
    pub data_rejected: Family<Labels, Counter>,
    pub reloads: Family<Labels, Counter>,
    pub bans: Family<Labels, Counter>,
    pub bans_active: Family<Labels, Gauge>,
    pub ban_sync_requests: Family<Labels, Counter>,
    pub budget_exceeded: Family<Labels, Counter>,
    /// New sessions of a user that waited for their turn or were refused
    /// (`limits.newSessionsPerUserPerSecond`), by result.
    pub sessions_paced: Family<Labels, Counter>,
    /// Quota usage per user with a quota (see `crate::quota`); labels are usernames from
    /// users.yaml, never client input.
    pub quota_used_bytes: Family<Labels, Gauge>,
    pub quota_used_files: Family<Labels, Gauge>,
    pub quota_max_bytes: Family<Labels, Gauge>,
    pub quota_refusals: Family<Labels, Counter>,
    /// Files deleted by retention (see `crate::retention`), by reason.
    pub retention_deleted: Family<Labels, Counter>,
    pub events: crate::events::EventMetrics,
    pub scan: crate::scan::ScanMetrics,
    registry: std::sync::OnceLock<Registry>,
}

impl Metrics {
    pub fn new() -> Arc<Metrics> {
        let metrics = Metrics::default();
        let mut registry = Registry::with_prefix("sluice");
        registry.register(
            "sessions_active",
            "Open control connections",
            metrics.sessions_active.clone(),
        );
        registry.register(
            "sessions_max",
            "limits.maxSessions of the configuration in force",
            metrics.sessions_max.clone(),
        );
        registry.register(
            "ready",
            "1 while /readyz answers 200 (configuration loaded, listeners bound, not draining), else 0",
            metrics.ready.clone(),
        );
        registry.register(
            "sessions",
            "Accepted control connections by listener",
            metrics.sessions_total.clone(),
        );
        registry.register(
            "sessions_refused",
            "Connections refused by a session limit",
            metrics.sessions_refused.clone(),
        );
        registry.register(
            "budget_exceeded",
            "Requests refused or sessions ended by a tenant budget (budgets.*), by budget",
            metrics.budget_exceeded.clone(),
        );
        registry.register(
            "sessions_paced",
            "New sessions of a user delayed (result=delayed) or refused (result=refused) by limits.newSessionsPerUserPerSecond",
            metrics.sessions_paced.clone(),
        );
        registry.register(
            "quota_used_bytes",
            "Bytes in the home of a user with a quota (published files and uploads in flight)",
            metrics.quota_used_bytes.clone(),
        );
        registry.register(
            "quota_used_files",
            "Regular files in the home of a user with a quota (including uploads in flight)",
            metrics.quota_used_files.clone(),
        );
        registry.register(
            "quota_max_bytes",
            "quota.maxBytes of a user",
            metrics.quota_max_bytes.clone(),
        );
        registry.register(
            "quota_refusals",
            "Writes refused by a quota, by limit",
            metrics.quota_refusals.clone(),
        );
        registry.register(
            "retention_deleted",
            "Files deleted by retention rules, by reason (max_age, after_download)",
            metrics.retention_deleted.clone(),
        );
        registry.register(
            "logins",
            "Login attempts by protocol (ftps, sftp) and result",
            metrics.logins.clone(),
        );
        registry.register(
            "password_checks",
            "Password checks by result: verified or rejected by argon2id, or cached (verified \
             within passwords.verifiedCacheSeconds, no argon2id run)",
            metrics.password_checks.clone(),
        );
        registry.register("commands", "Commands by verb", metrics.commands.clone());
        registry.register(
            "transfer_bytes",
            "Bytes moved on data connections by direction",
            metrics.bytes.clone(),
        );
        registry.register(
            "transfers",
            "Transfers by direction and result",
            metrics.transfers.clone(),
        );
        registry.register(
            "tls_handshake_failures",
            "Failed TLS handshakes by channel",
            metrics.tls_failures.clone(),
        );
        registry.register(
            "data_connections_rejected",
            "Data connections refused by reason",
            metrics.data_rejected.clone(),
        );
        registry.register(
            "bans",
            "Bans imposed after repeated failed logins, by scope (ip or user)",
            metrics.bans.clone(),
        );
        registry.register(
            "bans_active",
            "Bans in force, by scope",
            metrics.bans_active.clone(),
        );
        registry.register(
            "ban_sync_requests",
            "Requests to the /bans endpoints (bans across replicas), by HTTP status",
            metrics.ban_sync_requests.clone(),
        );
        registry.register(
            "config_reloads",
            "Configuration reloads by result",
            metrics.reloads.clone(),
        );
        metrics.events.register(&mut registry);
        metrics.scan.register(&mut registry);
        let _ = metrics.registry.set(registry);
        metrics.zero_known_series();
        Arc::new(metrics)
    }

    /// Exports the label sets the alerts select on at 0 from the start: Prometheus's
    /// `increase()` cannot see the first event of a series that appears at 1, so without this
    /// a server's first rejected reload or first ban would never fire an alert.
    fn zero_known_series(&self) {
        let zero = |family: &Family<Labels, Counter>, labels: &[(&'static str, &str)]| {
            Metrics::add(family, labels, 0)
        };
        for result in ["applied", "rejected"] {
            zero(&self.reloads, &[("result", result)]);
        }
        for scope in ["ip", "user", "peer_ip", "peer_user"] {
            zero(&self.bans, &[("scope", scope)]);
        }
        for protocol in ["ftps", "sftp"] {
            for result in ["success", "failure"] {
                zero(&self.logins, &[("protocol", protocol), ("result", result)]);
            }
        }
        for result in ["verified", "rejected", "cached"] {
            zero(&self.password_checks, &[("result", result)]);
        }
        for reason in ["total", "perip", "rate", "banned"] {
            zero(&self.sessions_refused, &[("reason", reason)]);
        }
        for reason in ["not_resumed", "foreign_address", "certificate_mismatch"] {
            zero(&self.data_rejected, &[("reason", reason)]);
        }
        for result in ["200", "401", "503"] {
            zero(&self.ban_sync_requests, &[("result", result)]);
        }
        for channel in ["control", "data"] {
            zero(&self.tls_failures, &[("channel", channel)]);
        }
    }

    pub fn inc(family: &Family<Labels, Counter>, labels: &[(&'static str, &str)]) {
        family
            .get_or_create(&labels.iter().map(|(k, v)| (*k, v.to_string())).collect())
            .inc();
    }

    pub fn add(family: &Family<Labels, Counter>, labels: &[(&'static str, &str)], value: u64) {
        family
            .get_or_create(&labels.iter().map(|(k, v)| (*k, v.to_string())).collect())
            .inc_by(value);
    }

    pub fn render(&self) -> String {
        let mut text = String::new();
        if let Some(registry) = self.registry.get() {
            let _ = encode(&mut text, registry);
        }
        text
    }
}

fn respond(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
}

/// Connections the operations endpoint serves at once, in total and from one address. Every
/// pod in the cluster can reach this port (probes, Prometheus, the operator's ban sync), so a
/// pod that opens thousands of slow connections must neither exhaust the process's descriptors
/// nor crowd out the kubelet's probes (which come from the node's own address).
const HEALTH_MAX_CONNECTIONS: usize = 256;
const HEALTH_MAX_CONNECTIONS_PER_ADDRESS: u32 = 16;
/// A request's header must arrive within this (hyper has no header timeout without a timer).
const HEALTH_HEADER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
/// No connection lives longer than this, keep-alive or not.
const HEALTH_CONNECTION_LIFETIME: std::time::Duration = std::time::Duration::from_secs(60);

/// Serves the operations endpoint until the process ends.
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    ready: Arc<AtomicBool>,
    bans: Arc<crate::ban_sync::Endpoint>,
    snapshot: tokio::sync::watch::Receiver<Arc<crate::snapshot::Snapshot>>,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(HEALTH_MAX_CONNECTIONS));
    let per_address = crate::limits::SessionLimits::default();
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            continue;
        };
        let address = sluice_config::canonical_ip(peer.ip());
        let (Ok(slot), Ok(address_slot)) = (
            slots.clone().try_acquire_owned(),
            per_address.connect(address, u32::MAX, HEALTH_MAX_CONNECTIONS_PER_ADDRESS),
        ) else {
            Metrics::inc(
                &metrics.sessions_refused,
                &[("reason", "health_connections")],
            );
            drop(stream);
            continue;
        };
        let metrics = metrics.clone();
        let ready = ready.clone();
        let bans = bans.clone();
        let snapshot = snapshot.clone();
        let service = hyper::service::service_fn(move |request: Request<hyper::body::Incoming>| {
            let metrics = metrics.clone();
            let ready = ready.clone();
            let bans = bans.clone();
            let snapshot = snapshot.clone();
            async move {
                let response = match request.uri().path() {
                    path if crate::ban_sync::Endpoint::serves(path) => bans.handle(request).await,
                    "/healthz" => respond(StatusCode::OK, "ok\n".into()),
                    // Digests only (no names or hashes of users): what the operator needs to
                    // know that this process serves the users.yaml shards it wrote.
                    "/loaded" => {
                        let files = snapshot.borrow().users_files.clone();
                        let body = serde_json::json!({ "usersFiles": files }).to_string();
                        respond(StatusCode::OK, body)
                    }
                    "/readyz" if ready.load(Ordering::Relaxed) => {
                        respond(StatusCode::OK, "ready\n".into())
                    }
                    "/readyz" => respond(StatusCode::SERVICE_UNAVAILABLE, "not ready\n".into()),
                    "/metrics" => {
                        metrics.ready.set(i64::from(ready.load(Ordering::Relaxed)));
                        let mut response = respond(StatusCode::OK, metrics.render());
                        if let Ok(value) =
                            "application/openmetrics-text; version=1.0.0; charset=utf-8".parse()
                        {
                            response.headers_mut().insert("content-type", value);
                        }
                        response
                    }
                    _ => respond(StatusCode::NOT_FOUND, "not found\n".into()),
                };
                Ok::<_, Infallible>(response)
            }
        });
        tokio::spawn(async move {
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEALTH_HEADER_TIMEOUT)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            let _ = tokio::time::timeout(HEALTH_CONNECTION_LIFETIME, connection).await;
            drop((slot, address_slot));
        });
    }
}
