//! Bans across replicas, the operator's side: every [`SYNC_PERIOD`] it asks each ready pod of a
//! multi-replica FileTransferServer for its own bans of addresses and usernames (`GET /bans` on
//! the health port), merges them (latest expiry per address or username, expired ones dropped,
//! at most [`MAX_ENTRIES`]) and hands
//! every pod the merged bans of the *other* pods (`PUT /bans/peers`) when what it holds differs.
//! Pods never re-export what they imported, so bans do not bounce between replicas. The calls
//! carry the bearer token of the `<server>-ban-sync` Secret, created once per server. The merge
//! and the per-pod view are pure functions; the loop is I/O at the edge. See docs/bans.md.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{Api, ListParams, PostParams};
use kube::runtime::reflector::Store;
use kube::{Client, ResourceExt};
use serde::Deserialize;
use tracing::{debug, info, warn};

use crate::crd::FileTransferServer;
use crate::render::{self, Names};

/// How often bans are collected and spread.
pub const SYNC_PERIOD: Duration = Duration::from_secs(2);
/// Most bans (and TOTP steps) handed to one pod (the server refuses larger lists); the
/// latest-expiring bans are kept.
pub use sluice_config::MAX_SYNC_ENTRIES as MAX_ENTRIES;
pub use sluice_config::{WireBan, WireTotpStep};
/// Longest answer read from a pod.
const MAX_RESPONSE_BYTES: usize = 2 * 1024 * 1024;
/// Deadline of one call to a pod (connect, request and answer).
const CALL_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum BanSyncError {
    #[error("kubernetes api: {0}")]
    Kube(#[from] kube::Error),
    #[error("{0}")]
    Render(#[from] render::RenderError),
    #[error("secret {secret}: key {key} is missing or empty")]
    Token { secret: String, key: &'static str },
    #[error("pod {pod} ({address}): {message}")]
    Pod {
        pod: String,
        address: String,
        message: String,
    },
}

/// What `GET /bans` answers.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    /// The pod's own bans.
    #[serde(default)]
    pub bans: Vec<WireBan>,
    /// The peers' bans it holds.
    #[serde(default)]
    pub peers: Vec<WireBan>,
    /// TOTP steps the pod accepted recently (so that a code used on one replica is refused as
    /// a replay on the others).
    #[serde(default)]
    pub totp_steps: Vec<WireTotpStep>,
    /// The peers' TOTP steps it holds.
    #[serde(default)]
    pub peer_totp_steps: Vec<WireTotpStep>,
}

/// What a ban refuses: addresses sort before usernames.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum BanKey {
    /// Canonical text form.
    Address(String),
    /// Lower-case.
    Username(String),
}

impl BanKey {
    /// The key of a wire ban, if it names exactly one valid target.
    fn of(ban: &WireBan) -> Option<BanKey> {
        match (&ban.address, &ban.username) {
            (Some(address), None) => address
                .parse::<std::net::IpAddr>()
                .ok()
                .map(|ip| BanKey::Address(sluice_config::canonical_ip(ip).to_string())),
            (None, Some(user)) if !user.is_empty() => {
                Some(BanKey::Username(user.to_ascii_lowercase()))
            }
            _ => None,
        }
    }
}

/// A ban being merged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ban {
    pub key: BanKey,
    pub expires_at: Timestamp,
    /// The pod that imposed it.
    pub pod: String,
}

/// Merges the pods' own bans: one entry per address or username with the latest expiry,
/// expired ones dropped, unparsable ones skipped, and at most `cap` entries (the
/// latest-expiring) sorted by key (addresses first).
pub fn merge<'a>(
    reports: impl IntoIterator<Item = (&'a str, &'a [WireBan])>,
    now: Timestamp,
    cap: usize,
) -> Vec<Ban> {
    let mut by_key: BTreeMap<BanKey, Ban> = BTreeMap::new();
    for (pod, bans) in reports {
        for ban in bans {
            let (Some(key), Ok(expires_at)) =
                (BanKey::of(ban), ban.expires_at.parse::<Timestamp>())
            else {
                continue;
            };
            if expires_at <= now {
                continue;
            }
            let candidate = Ban {
                key: key.clone(),
                expires_at,
                pod: pod.to_string(),
            };
            by_key
                .entry(key)
                .and_modify(|known| {
                    if candidate.expires_at > known.expires_at {
                        *known = candidate.clone();
                    }
                })
                .or_insert(candidate);
        }
    }
    let mut merged: Vec<Ban> = by_key.into_values().collect();
    if merged.len() > cap {
        merged.sort_by_key(|b| std::cmp::Reverse(b.expires_at));
        merged.truncate(cap);
        merged.sort_by(|a, b| a.key.cmp(&b.key));
    }
    merged
}

/// The bans `pod` should hold from its peers: the merged own bans of every *other* pod.
pub fn view_for(pod: &str, reports: &BTreeMap<String, Report>, now: Timestamp) -> Vec<Ban> {
    merge(
        reports
            .iter()
            .filter(|(name, _)| name.as_str() != pod)
            .map(|(name, report)| (name.as_str(), report.bans.as_slice())),
        now,
        MAX_ENTRIES,
    )
}

/// The TOTP steps `pod` should hold from its peers: per username, the latest step any *other*
/// pod accepted; sorted, at most [`MAX_ENTRIES`].
pub fn steps_for(pod: &str, reports: &BTreeMap<String, Report>) -> Vec<(String, u64)> {
    let mut latest: BTreeMap<String, u64> = BTreeMap::new();
    for (_, report) in reports.iter().filter(|(name, _)| name.as_str() != pod) {
        for entry in report.totp_steps.iter().filter(|e| !e.username.is_empty()) {
            let step = latest.entry(entry.username.clone()).or_default();
            *step = (*step).max(entry.step);
        }
    }
    latest.into_iter().take(MAX_ENTRIES).collect()
}

/// Whether a pod holding `held` TOTP steps needs `wanted` sent.
pub fn steps_differ(held: &[WireTotpStep], wanted: &[(String, u64)]) -> bool {
    let held: BTreeSet<(&str, u64)> = held.iter().map(|e| (e.username.as_str(), e.step)).collect();
    let wanted: BTreeSet<(&str, u64)> = wanted.iter().map(|(u, s)| (u.as_str(), *s)).collect();
    held != wanted
}

/// Whether a pod holding `held` (its report's `peers`) needs `wanted` sent: compared by key
/// and expiry only.
pub fn differs(held: &[WireBan], wanted: &[Ban]) -> bool {
    let held: BTreeSet<(Option<BanKey>, Option<Timestamp>)> = held
        .iter()
        .map(|b| (BanKey::of(b), b.expires_at.parse().ok()))
        .collect();
    let wanted: BTreeSet<(Option<BanKey>, Option<Timestamp>)> = wanted
        .iter()
        .map(|b| (Some(b.key.clone()), Some(b.expires_at)))
        .collect();
    held != wanted
}

/// The `PUT /bans/peers` body for `bans` and TOTP `steps`.
pub fn peer_body(bans: &[Ban], steps: &[(String, u64)]) -> String {
    let wire: Vec<WireBan> = bans
        .iter()
        .map(|b| {
            let (address, username) = match &b.key {
                BanKey::Address(address) => (Some(address.clone()), None),
                BanKey::Username(user) => (None, Some(user.clone())),
            };
            WireBan {
                address,
                username,
                expires_at: b.expires_at.to_string(),
                pod: Some(b.pod.clone()),
            }
        })
        .collect();
    let steps: Vec<WireTotpStep> = steps
        .iter()
        .map(|(username, step)| WireTotpStep {
            username: username.clone(),
            step: *step,
        })
        .collect();
    serde_json::json!({ "bans": wire, "totpSteps": steps }).to_string()
}

/// A fresh random token (32 bytes, hex).
pub fn new_token() -> String {
    hex::encode(rand::random::<[u8; 32]>())
}

/// Creates the ban-sync Secret of a server once (called by the reconcile before the
/// StatefulSet that mounts it); an existing Secret is kept, so the token is stable.
pub async fn ensure_secret(
    client: &Client,
    server: &FileTransferServer,
) -> Result<(), BanSyncError> {
    if !render::bans_enabled(server) {
        return Ok(());
    }
    let names = Names::of(server)?;
    let api: Api<Secret> = Api::namespaced(client.clone(), &names.namespace);
    if api.get_opt(&names.ban_sync_secret()).await?.is_none() {
        let secret = render::ban_sync_secret(server, &new_token())?;
        match api.create(&PostParams::default(), &secret).await {
            Ok(_) => info!(server = %names.server, "created the ban-sync token Secret"),
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// A ready pod's name and its health endpoint (`podIP:port`).
pub(crate) fn endpoint(pod: &Pod) -> Option<(String, String)> {
    let status = pod.status.as_ref()?;
    let ready = status
        .conditions
        .as_ref()?
        .iter()
        .any(|c| c.type_ == "Ready" && c.status == "True");
    let ip = status.pod_ip.as_deref().filter(|ip| !ip.is_empty())?;
    if !ready || pod.metadata.deletion_timestamp.is_some() {
        return None;
    }
    let port = pod
        .spec
        .as_ref()?
        .containers
        .iter()
        .flat_map(|c| c.ports.iter().flatten())
        .find(|p| p.name.as_deref() == Some("health"))
        .map(|p| p.container_port)
        .unwrap_or(render::CONTAINER_HEALTH);
    let host = match ip.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V6(v6)) => format!("[{v6}]"),
        _ => ip.to_string(),
    };
    Some((pod.name_any(), format!("{host}:{port}")))
}

/// The ready pods of `server` and their health endpoints (one list call): ban sync, user
/// readiness and quota usage all talk to the pods this way.
pub(crate) async fn ready_endpoints(
    client: &Client,
    server: &FileTransferServer,
    namespace: &str,
) -> Result<Vec<(String, String)>, kube::Error> {
    let selector = render::selector_labels(server)
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",");
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    Ok(pods
        .list(&ListParams::default().labels(&selector))
        .await?
        .items
        .iter()
        .filter_map(endpoint)
        .collect())
}

/// One HTTP/1.1 call to a pod; returns the status and body.
pub(crate) async fn call(
    address: &str,
    method: hyper::Method,
    path: &str,
    token: &str,
    body: Option<String>,
) -> Result<(hyper::StatusCode, Bytes), String> {
    let exchange = async {
        let stream = tokio::net::TcpStream::connect(address)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(|e| format!("handshake: {e}"))?;
        tokio::spawn(connection);
        let request = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, address)
            .header(hyper::header::AUTHORIZATION, format!("Bearer {token}"))
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| format!("request: {e}"))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| format!("request: {e}"))?;
        let status = response.status();
        let bytes = Limited::new(response.into_body(), MAX_RESPONSE_BYTES)
            .collect()
            .await
            .map_err(|e| format!("response: {e}"))?
            .to_bytes();
        Ok((status, bytes))
    };
    tokio::time::timeout(CALL_TIMEOUT, exchange)
        .await
        .map_err(|_| format!("no answer within {CALL_TIMEOUT:?}"))?
}

/// What one round did for one server.
#[derive(Debug, Default)]
struct Round {
    updated: u64,
    unreachable: u64,
    refused: u64,
}

/// One round for one server: collect, merge, spread.
async fn sync_server(
    client: &Client,
    server: &FileTransferServer,
    tokens: &mut HashMap<String, String>,
) -> Result<Round, BanSyncError> {
    let names = Names::of(server)?;
    let endpoints = ready_endpoints(client, server, &names.namespace).await?;
    let mut round = Round::default();
    if endpoints.len() < 2 {
        return Ok(round);
    }
    let key = format!("{}/{}", names.namespace, names.server);
    let token = match tokens.get(&key) {
        Some(token) => token.clone(),
        None => {
            let secret_name = names.ban_sync_secret();
            let secret = Api::<Secret>::namespaced(client.clone(), &names.namespace)
                .get(&secret_name)
                .await?;
            let token = secret
                .data
                .as_ref()
                .and_then(|d| d.get(render::BAN_SYNC_TOKEN))
                .map(|b| String::from_utf8_lossy(&b.0).trim().to_string())
                .filter(|t| !t.is_empty())
                .ok_or(BanSyncError::Token {
                    secret: secret_name,
                    key: render::BAN_SYNC_TOKEN,
                })?;
            tokens.insert(key.clone(), token.clone());
            token
        }
    };
    let calls = endpoints.iter().map(|(pod, address)| {
        let token = token.clone();
        async move {
            let answer = call(address, hyper::Method::GET, "/bans", &token, None).await;
            (pod.clone(), address.clone(), answer)
        }
    });
    let mut reports = BTreeMap::new();
    for (pod, address, answer) in futures::future::join_all(calls).await {
        match answer {
            Ok((status, body)) if status == hyper::StatusCode::OK => {
                match serde_json::from_slice::<Report>(&body) {
                    Ok(report) => {
                        reports.insert(pod, (address, report));
                    }
                    Err(e) => {
                        round.refused += 1;
                        warn!(%pod, %address, error = %e, "unreadable GET /bans answer");
                    }
                }
            }
            Ok((status, _)) => {
                round.refused += 1;
                if status == hyper::StatusCode::UNAUTHORIZED {
                    // The Secret may have been recreated: read it again next round.
                    tokens.remove(&key);
                }
                warn!(%pod, %address, %status, "GET /bans refused");
            }
            Err(message) => {
                round.unreachable += 1;
                debug!(%pod, %address, %message, "GET /bans failed");
            }
        }
    }
    let now = Timestamp::now();
    let by_pod: BTreeMap<String, Report> = reports
        .iter()
        .map(|(pod, (_, report))| (pod.clone(), report.clone()))
        .collect();
    for (pod, (address, report)) in &reports {
        let wanted = view_for(pod, &by_pod, now);
        let wanted_steps = steps_for(pod, &by_pod);
        if !differs(&report.peers, &wanted) && !steps_differ(&report.peer_totp_steps, &wanted_steps)
        {
            continue;
        }
        match call(
            address,
            hyper::Method::PUT,
            "/bans/peers",
            &token,
            Some(peer_body(&wanted, &wanted_steps)),
        )
        .await
        {
            Ok((status, _)) if status == hyper::StatusCode::OK => {
                round.updated += 1;
                info!(server = %names.server, %pod, bans = wanted.len(), "spread bans to a replica");
            }
            Ok((status, body)) => {
                round.refused += 1;
                warn!(%pod, %address, %status,
                    body = %String::from_utf8_lossy(&body), "PUT /bans/peers refused");
            }
            Err(message) => {
                round.unreachable += 1;
                warn!(%pod, %address, %message, "PUT /bans/peers failed");
            }
        }
    }
    Ok(round)
}

/// Spreads bans between the replicas of every FileTransferServer in `servers` (the server
/// controller's cache), forever. A failure for one server is logged and retried next round.
pub async fn run(
    client: Client,
    servers: Store<crate::lenient::Lenient<FileTransferServer>>,
    metrics: std::sync::Arc<crate::metrics::OperatorMetrics>,
) {
    let mut tokens = HashMap::new();
    let mut interval = tokio::time::interval(SYNC_PERIOD);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        // Objects that do not deserialize are reported by the controller; nothing to sync.
        for server in servers
            .state()
            .iter()
            .filter_map(|s| s.parsed.as_ref().ok())
        {
            if server.spec.replicas < 2
                || !render::bans_enabled(server)
                || server.metadata.deletion_timestamp.is_some()
            {
                continue;
            }
            let count = |result: &str, n: u64| {
                if n > 0 {
                    metrics
                        .ban_sync
                        .get_or_create(&vec![("result", result.to_string())])
                        .inc_by(n);
                }
            };
            match sync_server(&client, server, &mut tokens).await {
                Ok(round) => {
                    count("updated", round.updated);
                    count("unreachable", round.unreachable);
                    count("refused", round.refused);
                }
                Err(error) => {
                    count("error", 1);
                    warn!(server = %server.name_any(), %error, "ban sync round failed");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wire(address: &str, expires_at: &str) -> WireBan {
        WireBan {
            address: Some(address.into()),
            username: None,
            expires_at: expires_at.into(),
            pod: None,
        }
    }

    fn user_wire(username: &str, expires_at: &str) -> WireBan {
        WireBan {
            address: None,
            username: Some(username.into()),
            expires_at: expires_at.into(),
            pod: None,
        }
    }

    fn key_text(ban: &Ban) -> &str {
        match &ban.key {
            BanKey::Address(key) | BanKey::Username(key) => key,
        }
    }

    fn now() -> Timestamp {
        "2030-01-01T00:00:00Z".parse().unwrap()
    }

    #[test]
    fn merge_keeps_the_latest_expiry_and_drops_expired_and_garbage() {
        let a = [
            wire("127.0.0.3", "2030-01-01T00:05:00Z"),
            wire("127.0.0.5", "2029-12-31T23:59:59Z"),
            wire("not-an-ip", "2030-01-01T00:05:00Z"),
        ];
        let b = [
            wire("127.0.0.3", "2030-01-01T00:10:00Z"),
            wire("::ffff:127.0.0.6", "2030-01-01T00:01:00Z"),
            wire("127.0.0.7", "never"),
        ];
        let merged = merge([("p0", &a[..]), ("p1", &b[..])], now(), 100);
        let got: Vec<(&str, String, &str)> = merged
            .iter()
            .map(|b| (key_text(b), b.expires_at.to_string(), b.pod.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                ("127.0.0.3", "2030-01-01T00:10:00Z".to_string(), "p1"),
                ("127.0.0.6", "2030-01-01T00:01:00Z".to_string(), "p1"),
            ]
        );
    }

    #[test]
    fn usernames_merge_case_insensitively_after_the_addresses() {
        let a = [
            user_wire("Alice", "2030-01-01T00:05:00Z"),
            wire("127.0.0.3", "2030-01-01T00:05:00Z"),
            user_wire("", "2030-01-01T00:05:00Z"),
            WireBan {
                address: Some("127.0.0.4".into()),
                username: Some("both".into()),
                expires_at: "2030-01-01T00:05:00Z".into(),
                pod: None,
            },
        ];
        let b = [user_wire("alice", "2030-01-01T00:09:00Z")];
        let merged = merge([("p0", &a[..]), ("p1", &b[..])], now(), 100);
        assert_eq!(
            merged.iter().map(|b| b.key.clone()).collect::<Vec<_>>(),
            [
                BanKey::Address("127.0.0.3".into()),
                BanKey::Username("alice".into())
            ]
        );
        assert_eq!(merged[1].pod, "p1");
        let body: serde_json::Value = serde_json::from_str(&peer_body(&merged, &[])).unwrap();
        assert_eq!(body["bans"][1]["username"], "alice");
        assert!(body["bans"][1].get("address").is_none());
        // A pod holding the user ban under another case does not need it again.
        assert!(!differs(
            &[
                wire("127.0.0.3", "2030-01-01T00:05:00Z"),
                user_wire("ALICE", "2030-01-01T00:09:00Z")
            ],
            &merged
        ));
        assert!(differs(
            &[wire("127.0.0.3", "2030-01-01T00:05:00Z")],
            &merged
        ));
    }

    #[test]
    fn totp_steps_spread_to_the_other_pods_latest_first() {
        let step = |username: &str, step: u64| WireTotpStep {
            username: username.into(),
            step,
        };
        let mut reports = BTreeMap::new();
        reports.insert(
            "s-0".to_string(),
            Report {
                totp_steps: vec![step("alice", 10), step("bob", 4)],
                ..Report::default()
            },
        );
        reports.insert(
            "s-1".to_string(),
            Report {
                totp_steps: vec![step("alice", 12)],
                peer_totp_steps: vec![step("alice", 10), step("bob", 4)],
                ..Report::default()
            },
        );
        reports.insert(
            "s-2".to_string(),
            Report {
                peer_totp_steps: vec![step("alice", 10), step("bob", 4)],
                ..Report::default()
            },
        );
        assert_eq!(steps_for("s-0", &reports), [("alice".to_string(), 12)]);
        let to_s1 = steps_for("s-1", &reports);
        assert_eq!(to_s1, [("alice".to_string(), 10), ("bob".to_string(), 4)]);
        assert!(!steps_differ(&reports["s-1"].peer_totp_steps, &to_s1));
        let to_s2 = steps_for("s-2", &reports);
        assert_eq!(to_s2, [("alice".to_string(), 12), ("bob".to_string(), 4)]);
        assert!(steps_differ(&reports["s-2"].peer_totp_steps, &to_s2));
        let body: serde_json::Value = serde_json::from_str(&peer_body(&[], &to_s2)).unwrap();
        assert_eq!(body["totpSteps"][0]["username"], "alice");
        assert_eq!(body["totpSteps"][0]["step"], 12);
        assert_eq!(body["bans"], serde_json::json!([]));
    }

    #[test]
    fn merge_caps_the_size_keeping_the_latest_expiring() {
        let bans: Vec<WireBan> = (1..=5)
            .map(|n| wire(&format!("10.0.0.{n}"), &format!("2030-01-01T00:0{n}:00Z")))
            .collect();
        let merged = merge([("p0", &bans[..])], now(), 2);
        let addresses: Vec<&str> = merged.iter().map(key_text).collect();
        assert_eq!(addresses, ["10.0.0.4", "10.0.0.5"]);
    }

    #[test]
    fn a_pod_gets_the_other_pods_bans_only_and_is_updated_only_on_change() {
        let mut reports = BTreeMap::new();
        reports.insert(
            "s-0".to_string(),
            Report {
                bans: vec![wire("127.0.0.3", "2030-01-01T00:05:00Z")],
                peers: vec![],
                ..Report::default()
            },
        );
        reports.insert(
            "s-1".to_string(),
            Report {
                bans: vec![],
                peers: vec![wire("127.0.0.3", "2030-01-01T00:05:00Z")],
                ..Report::default()
            },
        );
        let to_s0 = view_for("s-0", &reports, now());
        let to_s1 = view_for("s-1", &reports, now());
        assert!(to_s0.is_empty(), "its own ban is not sent back");
        assert_eq!(to_s1.len(), 1);
        assert!(!differs(&reports["s-1"].peers, &to_s1), "already held");
        assert!(!differs(&reports["s-0"].peers, &to_s0));
        assert!(differs(&[], &to_s1));
        let body: serde_json::Value = serde_json::from_str(&peer_body(&to_s1, &[])).unwrap();
        assert_eq!(body["bans"][0]["address"], "127.0.0.3");
        assert_eq!(body["bans"][0]["expiresAt"], "2030-01-01T00:05:00Z");
        assert_eq!(body["bans"][0]["pod"], "s-0");
    }

    fn server(spec: &str) -> FileTransferServer {
        serde_saphyr::from_str(&format!(
            "apiVersion: sluice.dev/v1alpha1\nkind: FileTransferServer\nmetadata:\n  name: s\n  namespace: n\nspec:\n  protocols: [sftp]\n{spec}"
        ))
        .unwrap()
    }

    #[test]
    fn the_spec_maps_onto_server_yaml_with_the_token_file_and_its_volume() {
        let fts = server(
            "  security:\n    bans:\n      threshold: 20\n      windowSeconds: 60\n      baseBanSeconds: 30\n      maxBanSeconds: 120\n      safelist: [192.0.2.0/24]\n",
        );
        let bans = render::server_config(&fts, None, &BTreeMap::new()).bans;
        assert!(bans.enabled);
        assert_eq!(
            (
                bans.threshold,
                bans.window_seconds,
                bans.base_ban_seconds,
                bans.max_ban_seconds
            ),
            (20, 60, 30, 120)
        );
        assert_eq!(bans.safelist, ["192.0.2.0/24"]);
        assert_eq!(
            bans.sync.token_file.as_deref(),
            Some("/etc/sluice/ban-sync/token")
        );
        assert!(bans.validate("server.yaml", "bans").is_empty());
        let set = render::stateful_set(&fts, "x").unwrap();
        let pod = set.spec.unwrap().template.spec.unwrap();
        let volume = pod
            .volumes
            .unwrap()
            .into_iter()
            .find(|v| v.name == "ban-sync")
            .unwrap();
        assert_eq!(
            volume.secret.unwrap().secret_name.as_deref(),
            Some("s-ban-sync")
        );
        let mount = pod.containers[0]
            .volume_mounts
            .clone()
            .unwrap()
            .into_iter()
            .find(|m| m.name == "ban-sync")
            .unwrap();
        assert_eq!(mount.mount_path, "/etc/sluice/ban-sync");
        assert!(
            mount.sub_path.is_none(),
            "a Secret volume must never use subPath"
        );
        let secret = render::ban_sync_secret(&fts, "t0k3n").unwrap();
        assert_eq!(secret.metadata.name.as_deref(), Some("s-ban-sync"));
        assert_eq!(secret.data.unwrap()["token"].0, b"t0k3n");
    }

    #[test]
    fn disabled_bans_render_no_token_and_no_volume() {
        let fts = server("  security:\n    bans:\n      enabled: false\n");
        let bans = render::server_config(&fts, None, &BTreeMap::new()).bans;
        assert!(!bans.enabled);
        assert!(bans.sync.token_file.is_none());
        let set = render::stateful_set(&fts, "x").unwrap();
        let volumes = set.spec.unwrap().template.spec.unwrap().volumes.unwrap();
        assert!(volumes.iter().all(|v| v.name != "ban-sync"));
    }

    #[test]
    fn cel_rejects_a_maximum_below_the_base() {
        let error = kube::core::cel::validate_cel(&server(
            "  security:\n    bans:\n      baseBanSeconds: 600\n      maxBanSeconds: 60\n",
        ))
        .unwrap_err()
        .to_string();
        assert!(
            error.contains("maxBanSeconds must be >= baseBanSeconds"),
            "{error}"
        );
    }

    #[test]
    fn cel_requires_cidrs_in_the_safelist() {
        let ok = kube::core::cel::validate_cel(&server(
            "  security:\n    bans:\n      safelist: [192.0.2.0/24, 2001:db8::/32]\n",
        ));
        assert!(ok.is_ok(), "{ok:?}");
        let error = kube::core::cel::validate_cel(&server(
            "  security:\n    bans:\n      safelist: [192.0.2.0/24, nope]\n",
        ))
        .unwrap_err()
        .to_string();
        assert!(error.contains("every entry must be a CIDR"), "{error}");
    }

    #[test]
    fn tokens_are_random_and_long() {
        let (a, b) = (new_token(), new_token());
        assert_eq!(a.len(), 64);
        assert_ne!(a, b);
    }
}
