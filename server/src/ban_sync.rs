//! Bans across replicas, the pod's side: `GET /bans` reports this pod's own bans of addresses
//! and usernames (and the peers' bans it holds) and `PUT /bans/peers` replaces the peers' bans with the list the
//! operator merged from the other replicas. Both sit on the health listener, need the bearer
//! token of `bans.sync.tokenFile` (compared in constant time) and answer 404 without it. The
//! request body is bounded (1 MiB, 10,000 entries) and validated with errors naming the field.
//! See docs/bans.md for the design.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper::{Method, Request, Response, StatusCode};
use serde::Deserialize;
use serde_json::json;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::context::Context;
use crate::metrics::Metrics;

/// Largest `PUT /bans/peers` body.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;
pub use sluice_config::{MAX_SYNC_ENTRIES as MAX_ENTRIES, WireBan, WireTotpStep};
/// Longest `pod` name accepted (a DNS subdomain).
const MAX_POD_NAME: usize = 253;
/// Longest banned username accepted (what a client sent as USER or SSH user name; the server
/// never bans longer ones, as it refuses them before counting).
const MAX_USERNAME: usize = 256;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SyncError {
    #[error("ban sync is disabled (bans.sync.tokenFile is not set)")]
    Disabled,
    #[error("missing or wrong bearer token (Authorization: Bearer <bans.sync.tokenFile>)")]
    Unauthorized,
    #[error("bans.sync.tokenFile: cannot read {path}: {message}")]
    Token { path: String, message: String },
    #[error("request body: larger than {MAX_BODY_BYTES} bytes")]
    TooLarge,
    #[error("request body: {0}")]
    Invalid(String),
    #[error("{0} is not allowed on this path")]
    Method(String),
}

impl SyncError {
    fn status(&self) -> StatusCode {
        match self {
            SyncError::Disabled => StatusCode::NOT_FOUND,
            SyncError::Unauthorized => StatusCode::UNAUTHORIZED,
            SyncError::Token { .. } => StatusCode::SERVICE_UNAVAILABLE,
            SyncError::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            SyncError::Invalid(_) => StatusCode::BAD_REQUEST,
            SyncError::Method(_) => StatusCode::METHOD_NOT_ALLOWED,
        }
    }
}

/// Body of `PUT /bans/peers`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct PeerList {
    bans: Vec<WireBan>,
    #[serde(default)]
    totp_steps: Vec<WireTotpStep>,
}

/// A validated `PUT /bans/peers` body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerUpdate {
    pub bans: Vec<PeerBan>,
    /// (username, last accepted step), at most one per username (the latest).
    pub totp_steps: Vec<(String, u64)>,
}

fn valid_username(name: &str) -> bool {
    !name.is_empty() && name.len() <= MAX_USERNAME && !name.chars().any(char::is_control)
}

/// What a ban refuses.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum BanTarget {
    Address(IpAddr),
    /// Lower-case.
    Username(String),
}

/// A validated ban from a peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerBan {
    pub target: BanTarget,
    pub expires_at: jiff::Timestamp,
    pub pod: Option<String>,
}

/// Parses and validates a `PUT /bans/peers` body; errors name the offending field.
pub fn parse_peer_update(body: &[u8]) -> Result<PeerUpdate, SyncError> {
    if body.len() > MAX_BODY_BYTES {
        return Err(SyncError::TooLarge);
    }
    let list: PeerList =
        serde_json::from_slice(body).map_err(|e| SyncError::Invalid(e.to_string()))?;
    if list.bans.len() > MAX_ENTRIES {
        return Err(SyncError::Invalid(format!(
            "bans: {} entries, at most {MAX_ENTRIES} allowed",
            list.bans.len()
        )));
    }
    if list.totp_steps.len() > MAX_ENTRIES {
        return Err(SyncError::Invalid(format!(
            "totpSteps: {} entries, at most {MAX_ENTRIES} allowed",
            list.totp_steps.len()
        )));
    }
    let mut totp_steps: HashMap<String, u64> = HashMap::new();
    for (index, entry) in list.totp_steps.into_iter().enumerate() {
        if !valid_username(&entry.username) {
            return Err(SyncError::Invalid(format!(
                "totpSteps[{index}].username: must be 1-{MAX_USERNAME} bytes without control \
                 characters"
            )));
        }
        let step = totp_steps.entry(entry.username).or_default();
        *step = (*step).max(entry.step);
    }
    let bans = list
        .bans
        .into_iter()
        .enumerate()
        .map(|(index, ban)| {
            let target = match (&ban.address, &ban.username) {
                (Some(address), None) => {
                    let address = address.parse::<IpAddr>().map_err(|_| {
                        SyncError::Invalid(format!(
                            "bans[{index}].address: {address:?} is not an IP address"
                        ))
                    })?;
                    BanTarget::Address(sluice_config::canonical_ip(address))
                }
                (None, Some(username)) => {
                    if !valid_username(username) {
                        return Err(SyncError::Invalid(format!(
                            "bans[{index}].username: must be 1-{MAX_USERNAME} bytes without \
                             control characters"
                        )));
                    }
                    BanTarget::Username(username.to_ascii_lowercase())
                }
                _ => {
                    return Err(SyncError::Invalid(format!(
                        "bans[{index}]: needs exactly one of address and username"
                    )));
                }
            };
            let expires_at = ban.expires_at.parse::<jiff::Timestamp>().map_err(|_| {
                SyncError::Invalid(format!(
                    "bans[{index}].expiresAt: {:?} is not an RFC 3339 instant",
                    ban.expires_at
                ))
            })?;
            if ban.pod.as_ref().is_some_and(|p| p.len() > MAX_POD_NAME) {
                return Err(SyncError::Invalid(format!(
                    "bans[{index}].pod: longer than {MAX_POD_NAME} bytes"
                )));
            }
            Ok(PeerBan {
                target,
                expires_at,
                pod: ban.pod,
            })
        })
        .collect::<Result<Vec<PeerBan>, SyncError>>()?;
    let mut totp_steps: Vec<(String, u64)> = totp_steps.into_iter().collect();
    totp_steps.sort();
    Ok(PeerUpdate { bans, totp_steps })
}

/// Whether `header` (the `Authorization` value) carries `token`. Both sides are hashed first so
/// the comparison takes the same time whatever the length or content of a wrong guess.
pub fn token_matches(token: &str, header: Option<&str>) -> bool {
    let Some(presented) = header.and_then(|h| h.strip_prefix("Bearer ")) else {
        return false;
    };
    let expected = Sha256::digest(token.trim().as_bytes());
    let presented = Sha256::digest(presented.trim().as_bytes());
    !token.trim().is_empty() && bool::from(expected.ct_eq(&presented))
}

/// The wall-clock instant of a ban ending at monotonic `until`, rounded up to the second so a
/// ban never ends early on another replica.
fn wall_expiry(until: Instant, now: Instant, wall: jiff::Timestamp) -> jiff::Timestamp {
    let left = jiff::SignedDuration::try_from(until.saturating_duration_since(now))
        .unwrap_or(jiff::SignedDuration::MAX);
    let end = wall.checked_add(left).unwrap_or(jiff::Timestamp::MAX);
    end.round(
        jiff::TimestampRound::new()
            .smallest(jiff::Unit::Second)
            .mode(jiff::RoundMode::Ceil),
    )
    .unwrap_or(end)
}

/// Remaining time of a ban ending at `expires_at`, seen at wall-clock `wall`.
fn remaining(expires_at: jiff::Timestamp, wall: jiff::Timestamp) -> Duration {
    Duration::try_from(expires_at.duration_since(wall)).unwrap_or(Duration::ZERO)
}

/// The `/bans` endpoints of one server process.
pub struct Endpoint {
    context: Arc<Context>,
    config_path: PathBuf,
    /// The wall-clock expiry first reported for each local ban (keyed by its monotonic end), so
    /// that every report gives the same instant and the operator sees no spurious change.
    reported: Mutex<HashMap<BanTarget, (Instant, jiff::Timestamp)>>,
}

fn respond(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    if let Ok(value) = "application/json".parse() {
        response.headers_mut().insert("content-type", value);
    }
    if status == StatusCode::UNAUTHORIZED
        && let Ok(value) = "Bearer".parse()
    {
        response.headers_mut().insert("www-authenticate", value);
    }
    response
}

impl Endpoint {
    pub fn new(context: Arc<Context>, config_path: PathBuf) -> Arc<Endpoint> {
        Arc::new(Endpoint {
            context,
            config_path,
            reported: Mutex::new(HashMap::new()),
        })
    }

    /// Whether this endpoint serves `path`.
    pub fn serves(path: &str) -> bool {
        path == "/bans" || path == "/bans/peers"
    }

    /// Answers a request for `/bans` or `/bans/peers`; every refusal is logged.
    pub async fn handle(&self, request: Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
        let path = request.uri().path().to_string();
        let result = self.dispatch(request).await;
        match result {
            Ok(body) => respond(StatusCode::OK, body.to_string()),
            Err(error) => {
                if error != SyncError::Disabled {
                    tracing::warn!(%path, %error, "ban sync request refused");
                }
                Metrics::inc(
                    &self.context.metrics.ban_sync_requests,
                    &[("result", error.status().as_str())],
                );
                respond(
                    error.status(),
                    json!({"error": error.to_string()}).to_string() + "\n",
                )
            }
        }
    }

    fn check_token(&self, request: &Request<hyper::body::Incoming>) -> Result<(), SyncError> {
        let file = self
            .context
            .snapshot
            .borrow()
            .config
            .bans
            .sync
            .token_file
            .clone()
            .ok_or(SyncError::Disabled)?;
        let path = crate::snapshot::resolve_relative(&self.config_path, &file);
        // Read on every request: a rotated Secret takes effect without a restart.
        let token = std::fs::read_to_string(&path).map_err(|e| SyncError::Token {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        if token.trim().is_empty() {
            return Err(SyncError::Token {
                path: path.display().to_string(),
                message: "the file is empty".into(),
            });
        }
        let header = request
            .headers()
            .get(hyper::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        if token_matches(&token, header) {
            Ok(())
        } else {
            Err(SyncError::Unauthorized)
        }
    }

    async fn dispatch(
        &self,
        request: Request<hyper::body::Incoming>,
    ) -> Result<serde_json::Value, SyncError> {
        self.check_token(&request)?;
        match (request.method(), request.uri().path()) {
            (&Method::GET, "/bans") => Ok(self.report()),
            (&Method::PUT, "/bans/peers") => {
                let body = Limited::new(request.into_body(), MAX_BODY_BYTES)
                    .collect()
                    .await
                    .map_err(|e| {
                        if e.is::<http_body_util::LengthLimitError>() {
                            SyncError::TooLarge
                        } else {
                            SyncError::Invalid(e.to_string())
                        }
                    })?
                    .to_bytes();
                let update = parse_peer_update(&body)?;
                Ok(self.import(&update))
            }
            (method, _) => Err(SyncError::Method(method.to_string())),
        }
    }

    /// This pod's own bans and the peers' bans it holds, with absolute expiry; addresses
    /// first, then usernames, each sorted.
    fn report(&self) -> serde_json::Value {
        let now = Instant::now();
        let wall = jiff::Timestamp::now();
        let own: HashMap<BanTarget, Instant> = self
            .context
            .bans
            .local_ip_bans(now)
            .into_iter()
            .map(|(ip, until)| (BanTarget::Address(ip), until))
            .chain(
                self.context
                    .bans
                    .local_user_bans(now)
                    .into_iter()
                    .map(|(user, until)| (BanTarget::Username(user), until)),
            )
            .collect();
        let mut reported = self.reported.lock().unwrap_or_else(|p| p.into_inner());
        reported.retain(|key, (until, _)| own.get(key) == Some(until));
        let mut local: Vec<WireBan> = own
            .into_iter()
            .map(|(key, until)| {
                let (_, expires_at) = *reported
                    .entry(key.clone())
                    .or_insert_with(|| (until, wall_expiry(until, now, wall)));
                wire(&key, expires_at)
            })
            .collect();
        drop(reported);
        local.sort_by(wire_order);
        let peer_ips = self
            .context
            .bans
            .peer_ip_bans(now)
            .into_iter()
            .map(|(ip, expires_at)| wire(&BanTarget::Address(ip), expires_at));
        let peer_users = self
            .context
            .bans
            .peer_user_bans(now)
            .into_iter()
            .map(|(user, expires_at)| wire(&BanTarget::Username(user), expires_at));
        let mut peers: Vec<WireBan> = peer_ips.chain(peer_users).collect();
        peers.sort_by(wire_order);
        Metrics::inc(
            &self.context.metrics.ban_sync_requests,
            &[("result", "200")],
        );
        let steps = |mut steps: Vec<(String, u64)>| {
            steps.sort();
            steps
                .into_iter()
                .map(|(username, step)| WireTotpStep { username, step })
                .collect::<Vec<_>>()
        };
        json!({"pod": self.context.host_name, "bans": local, "peers": peers,
               "totpSteps": steps(self.context.totp.local_steps(now)),
               "peerTotpSteps": steps(self.context.totp.peer_steps())})
    }

    /// Replaces the peers' bans; new ones are audited once and counted.
    fn import(&self, update: &PeerUpdate) -> serde_json::Value {
        let bans = &update.bans;
        self.context
            .totp
            .replace_peer_steps(update.totp_steps.iter().cloned());
        let now = Instant::now();
        let wall = jiff::Timestamp::now();
        let mut ips = Vec::new();
        let mut users = Vec::new();
        for ban in bans {
            let left = remaining(ban.expires_at, wall);
            match &ban.target {
                BanTarget::Address(ip) => ips.push((*ip, ban.expires_at, left)),
                BanTarget::Username(user) => users.push((user.clone(), ban.expires_at, left)),
            }
        }
        let config = self.context.snapshot.borrow().config.bans.clone();
        let new_ips = self.context.bans.replace_peer_bans(&config, &ips, now);
        let new_users = self.context.bans.replace_peer_user_bans(&users, now);
        let pods: HashMap<&BanTarget, &Option<String>> =
            // Reversed so that the first entry of a target wins, as a search would find it.
            bans.iter().rev().map(|b| (&b.target, &b.pod)).collect();
        let pod_of = |target: &BanTarget| pods.get(target).and_then(|pod| (*pod).clone());
        for (ip, expires_at) in &new_ips {
            let pod = pod_of(&BanTarget::Address(*ip));
            Metrics::inc(&self.context.metrics.bans, &[("scope", "peer_ip")]);
            self.context.audit.server_event(
                "ban",
                json!({"scope": "ip", "key": ip.to_string(), "ip": ip.to_string(),
                       "origin": "peer", "pod": pod, "expires_at": expires_at.to_string(),
                       "duration_seconds": remaining(*expires_at, wall).as_secs()}),
            );
            tracing::warn!(%ip, %expires_at, pod = ?pod, "banned: imported from another replica");
        }
        for (user, expires_at) in &new_users {
            let pod = pod_of(&BanTarget::Username(user.clone()));
            Metrics::inc(&self.context.metrics.bans, &[("scope", "peer_user")]);
            self.context.audit.server_event(
                "ban",
                json!({"scope": "user", "key": user,
                       "origin": "peer", "pod": pod, "expires_at": expires_at.to_string(),
                       "duration_seconds": remaining(*expires_at, wall).as_secs()}),
            );
            tracing::warn!(%user, %expires_at, pod = ?pod, "username banned: imported from another replica");
        }
        crate::admission::update_ban_gauges(&self.context, now);
        Metrics::inc(
            &self.context.metrics.ban_sync_requests,
            &[("result", "200")],
        );
        json!({"imported": ips.len() + users.len(), "new": new_ips.len() + new_users.len(),
               "totpSteps": update.totp_steps.len()})
    }
}

fn wire(key: &BanTarget, expires_at: jiff::Timestamp) -> WireBan {
    let (address, username) = match key {
        BanTarget::Address(ip) => (Some(ip.to_string()), None),
        BanTarget::Username(user) => (None, Some(user.clone())),
    };
    WireBan {
        address,
        username,
        expires_at: expires_at.to_string(),
        pod: None,
    }
}

/// Addresses before usernames, each in order.
fn wire_order(a: &WireBan, b: &WireBan) -> std::cmp::Ordering {
    (a.username.is_some(), &a.address, &a.username).cmp(&(
        b.username.is_some(),
        &b.address,
        &b.username,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_valid_list_parses_and_canonicalises_addresses() {
        let body = br#"{"bans":[{"address":"::ffff:127.0.0.3","expiresAt":"2030-01-01T00:00:00Z","pod":"fts-0"},{"address":"2001:db8::1","expiresAt":"2030-01-01T00:00:00+02:00"}]}"#;
        let bans = parse_peer_update(body).unwrap().bans;
        assert_eq!(
            bans[0].target,
            BanTarget::Address("127.0.0.3".parse().unwrap())
        );
        assert_eq!(bans[0].pod.as_deref(), Some("fts-0"));
        assert_eq!(bans[1].expires_at.to_string(), "2029-12-31T22:00:00Z");
    }

    #[test]
    fn username_bans_parse_in_lower_case_and_need_exactly_one_target() {
        let body =
            br#"{"bans":[{"username":"Alice","expiresAt":"2030-01-01T00:00:00Z","pod":"fts-1"}]}"#;
        let bans = parse_peer_update(body).unwrap().bans;
        assert_eq!(bans[0].target, BanTarget::Username("alice".into()));
        let err = |body: &str| parse_peer_update(body.as_bytes()).unwrap_err().to_string();
        assert!(
            err(r#"{"bans":[{"address":"1.2.3.4","username":"a","expiresAt":"2030-01-01T00:00:00Z"}]}"#)
                .contains("bans[0]: needs exactly one of address and username")
        );
        assert!(
            err(r#"{"bans":[{"expiresAt":"2030-01-01T00:00:00Z"}]}"#).contains("needs exactly one")
        );
        assert!(
            err(r#"{"bans":[{"username":"","expiresAt":"2030-01-01T00:00:00Z"}]}"#)
                .contains("bans[0].username")
        );
        assert!(
            err(r#"{"bans":[{"username":"a\u0000b","expiresAt":"2030-01-01T00:00:00Z"}]}"#)
                .contains("bans[0].username")
        );
        let long = format!(
            r#"{{"bans":[{{"username":"{}","expiresAt":"2030-01-01T00:00:00Z"}}]}}"#,
            "u".repeat(MAX_USERNAME + 1)
        );
        assert!(err(&long).contains("bans[0].username"));
    }

    #[test]
    fn totp_steps_keep_the_latest_per_user_and_name_bad_fields() {
        let body = br#"{"bans":[],"totpSteps":[{"username":"alice","step":7},{"username":"bob","step":3},{"username":"alice","step":5}]}"#;
        let update = parse_peer_update(body).unwrap();
        assert_eq!(
            update.totp_steps,
            [("alice".to_string(), 7), ("bob".to_string(), 3)]
        );
        assert!(
            parse_peer_update(br#"{"bans":[]}"#)
                .unwrap()
                .totp_steps
                .is_empty()
        );
        let err = |body: &str| parse_peer_update(body.as_bytes()).unwrap_err().to_string();
        assert!(
            err(r#"{"bans":[],"totpSteps":[{"username":"","step":1}]}"#)
                .contains("totpSteps[0].username")
        );
        assert!(
            err(r#"{"bans":[],"totpSteps":[{"username":"a","step":-1}]}"#)
                .starts_with("request body")
        );
        assert!(
            err(r#"{"bans":[],"totpSteps":[{"username":"a","step":1,"code":"123456"}]}"#)
                .contains("code")
        );
    }

    #[test]
    fn wire_bans_list_addresses_before_usernames() {
        let when: jiff::Timestamp = "2030-01-01T00:00:00Z".parse().unwrap();
        let mut bans = [
            wire(&BanTarget::Username("bob".into()), when),
            wire(&BanTarget::Address("127.0.0.9".parse().unwrap()), when),
            wire(&BanTarget::Username("alice".into()), when),
        ];
        bans.sort_by(wire_order);
        let keys: Vec<String> = bans
            .iter()
            .map(|b| b.address.clone().or(b.username.clone()).unwrap())
            .collect();
        assert_eq!(keys, ["127.0.0.9", "alice", "bob"]);
        assert_eq!(
            serde_json::to_string(&bans[1]).unwrap(),
            r#"{"username":"alice","expiresAt":"2030-01-01T00:00:00Z"}"#
        );
    }

    #[test]
    fn bad_bodies_name_the_field() {
        let err = |body: &str| parse_peer_update(body.as_bytes()).unwrap_err().to_string();
        assert!(
            err(r#"{"bans":[{"address":"1.2.3.4","expiresAt":"2030-01-01T00:00:00Z"},{"address":"nope","expiresAt":"2030-01-01T00:00:00Z"}]}"#)
                .contains("bans[1].address")
        );
        assert!(
            err(r#"{"bans":[{"address":"1.2.3.4","expiresAt":"tomorrow"}]}"#)
                .contains("bans[0].expiresAt")
        );
        assert!(err(r#"{"bans":[{"address":"1.2.3.4"}]}"#).contains("expiresAt"));
        assert!(err(r#"{"bans":[],"extra":1}"#).contains("extra"));
        assert!(err("not json").starts_with("request body"));
        let many = format!(
            r#"{{"bans":[{}]}}"#,
            vec![r#"{"address":"1.2.3.4","expiresAt":"2030-01-01T00:00:00Z"}"#; MAX_ENTRIES + 1]
                .join(",")
        );
        assert!(many.len() < MAX_BODY_BYTES);
        assert!(err(&many).contains("at most 10000"));
        let huge = vec![b' '; MAX_BODY_BYTES + 1];
        assert_eq!(parse_peer_update(&huge), Err(SyncError::TooLarge));
    }

    #[test]
    fn the_token_must_match_exactly() {
        assert!(token_matches("s3cret\n", Some("Bearer s3cret")));
        assert!(!token_matches("s3cret", Some("Bearer s3cre")));
        assert!(!token_matches("s3cret", Some("Bearer s3cret2")));
        assert!(!token_matches("s3cret", Some("Basic s3cret")));
        assert!(!token_matches("s3cret", None));
        assert!(!token_matches("  ", Some("Bearer ")));
    }

    #[test]
    fn wall_expiry_rounds_up_to_the_second() {
        let now = Instant::now();
        let wall: jiff::Timestamp = "2030-01-01T00:00:00.250Z".parse().unwrap();
        assert_eq!(
            wall_expiry(now + Duration::from_millis(1500), now, wall).to_string(),
            "2030-01-01T00:00:02Z"
        );
        assert_eq!(
            wall_expiry(now, now, wall).to_string(),
            "2030-01-01T00:00:01Z"
        );
    }

    #[test]
    fn remaining_time_is_never_negative() {
        let wall = jiff::Timestamp::now();
        assert_eq!(
            remaining(wall - jiff::SignedDuration::from_secs(5), wall),
            Duration::ZERO
        );
        assert_eq!(
            remaining(wall + jiff::SignedDuration::from_secs(5), wall),
            Duration::from_secs(5)
        );
    }
}
