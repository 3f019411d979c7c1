//! Admission of connections and logins for every protocol: the session limits, the
//! new-connection rate per source, bans, and the accounting of failed logins. FTPS and SFTP call
//! the same functions, so a limit or ban can never be weaker on one protocol.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::Mutex;
use std::time::Instant;

use serde_json::json;

use crate::audit::SessionTag;
use crate::context::Context;
use crate::metrics::Metrics;
use sluice_config::canonical_ip;

/// The source a connection is counted against: the client's address, and for IPv6 its
/// `prefix`-bit network (`limits.ipv6PrefixLength`, default /64): one host usually holds a
/// whole /64 and could otherwise rotate addresses past every per-address limit and ban.
pub fn source_key(ip: IpAddr, prefix: u8) -> IpAddr {
    match canonical_ip(ip) {
        IpAddr::V6(v6) if prefix < 128 => {
            let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(u128::from(v6) & mask))
        }
        other => other,
    }
}

/// Token buckets of new connections per source, checked before any TLS or SSH handshake so
/// that a flood of handshakes (ssh-audit's DHEat: 38 key exchanges in 4 ms) costs the server
/// an `accept` and a close, not a key exchange each.
#[derive(Default)]
pub struct ConnectionRate {
    buckets: Mutex<HashMap<IpAddr, Bucket>>,
}

struct Bucket {
    tokens: f64,
    updated: Instant,
    /// Whether this run of refusals was audited already (one event per run, not per refusal).
    refusal_logged: bool,
}

/// What the rate limiter decided for one new connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateDecision {
    Allowed,
    /// Refused; `first` is true for the first refusal of a run (audit it).
    Refused {
        first: bool,
    },
}

/// Sources tracked at most; past it, full buckets are dropped (they carry no state).
const MAX_TRACKED_SOURCES: usize = 65_536;

impl ConnectionRate {
    pub fn check(&self, key: IpAddr, per_second: u32, burst: u32, now: Instant) -> RateDecision {
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let (rate, burst) = (f64::from(per_second), f64::from(burst));
        if buckets.len() >= MAX_TRACKED_SOURCES {
            buckets.retain(|_, bucket| {
                bucket.tokens + now.duration_since(bucket.updated).as_secs_f64() * rate < burst
            });
        }
        let bucket = buckets.entry(key).or_insert(Bucket {
            tokens: burst,
            updated: now,
            refusal_logged: false,
        });
        let elapsed = now.saturating_duration_since(bucket.updated).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * rate).min(burst);
        bucket.updated = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            bucket.refusal_logged = false;
            RateDecision::Allowed
        } else {
            let first = !bucket.refusal_logged;
            bucket.refusal_logged = true;
            RateDecision::Refused { first }
        }
    }
}

/// The turn of each user's new sessions (`limits.newSessionsPerUserPerSecond`, a generic cell
/// rate algorithm: one instant per user, the theoretical arrival time of its next session).
/// Keyed by user, not source: a tenant that spreads its logins over many addresses (each under
/// the per-source connection rate) is still one tenant. Checked only after the credentials
/// were right, so that nobody can spend another user's turns by guessing at its name.
#[derive(Default)]
pub struct SessionPace {
    next_turn: Mutex<HashMap<String, Instant>>,
}

/// When a logged-in session may start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pace {
    Now,
    /// After waiting this long (its turn is reserved).
    After(std::time::Duration),
    /// Its turn is further away than the longest wait: refuse it (nothing was reserved).
    Refused,
}

/// Users tracked at most; past it, users whose turn has come (no state) are dropped.
const MAX_PACED_USERS: usize = 65_536;

impl SessionPace {
    pub fn reserve(
        &self,
        user: &str,
        per_second: u32,
        burst: u32,
        max_wait: std::time::Duration,
        now: Instant,
    ) -> Pace {
        let interval = std::time::Duration::from_secs(1) / per_second.max(1);
        let tolerance = interval * burst.max(1).saturating_sub(1);
        let mut turns = self.next_turn.lock().unwrap_or_else(|p| p.into_inner());
        if turns.len() >= MAX_PACED_USERS {
            turns.retain(|_, turn| *turn > now);
        }
        let turn = turns.get(user).copied().unwrap_or(now).max(now);
        let wait = turn.saturating_duration_since(now + tolerance);
        if wait > max_wait {
            return Pace::Refused;
        }
        turns.insert(user.to_string(), turn + interval);
        if wait.is_zero() {
            Pace::Now
        } else {
            Pace::After(wait)
        }
    }
}

/// The audit `reason` of a login refused by [`pace_new_session`] (a fixed text; the reply
/// adds the configured rate).
pub const PACE_REFUSAL_REASON: &str =
    "too many new sessions for this user (limits.newSessionsPerUserPerSecond)";

/// Waits for the turn of a new session of `user` (see [`SessionPace`]); `Err` carries the
/// reply text when it is refused. A delayed or refused session is audited as
/// `budget_exceeded` naming `newSessionsPerUserPerSecond`. Shared by FTPS and SFTP.
pub async fn pace_new_session(
    context: &Context,
    limits: &sluice_config::Limits,
    tag: &SessionTag,
    user: &str,
) -> Result<(), String> {
    let max_wait = std::time::Duration::from_secs(sluice_config::MAX_SESSION_PACING_WAIT_SECONDS);
    let per_second = limits.new_sessions_per_user_per_second;
    let pace = context.session_pace.reserve(
        user,
        per_second,
        limits.new_session_burst_per_user,
        max_wait,
        Instant::now(),
    );
    let mut tag = tag.clone();
    tag.user = Some(user.to_string());
    match pace {
        Pace::Now => Ok(()),
        Pace::After(wait) => {
            // Audited like a budget, but not counted as one: nothing was refused.
            Metrics::inc(&context.metrics.sessions_paced, &[("result", "delayed")]);
            context.audit.event(
                &tag,
                "budget_exceeded",
                json!({"budget": "newSessionsPerUserPerSecond", "limit": per_second,
                       "action": "delayed", "wait_ms": wait.as_millis() as u64}),
            );
            tokio::time::sleep(wait).await;
            Ok(())
        }
        Pace::Refused => {
            Metrics::inc(&context.metrics.sessions_paced, &[("result", "refused")]);
            budget_exceeded(
                &context.audit,
                &context.metrics,
                &tag,
                "newSessionsPerUserPerSecond",
                u64::from(per_second),
                "refused",
            );
            Err(format!(
                "{PACE_REFUSAL_REASON}: {per_second} per second; try again in a few seconds"
            ))
        }
    }
}

/// A session went over one of its budgets (`budgets.*`): counted by budget, and audited with
/// the budget's name and limit so that an operator sees which tenant hit what.
pub fn budget_exceeded(
    audit: &crate::audit::Audit,
    metrics: &Metrics,
    tag: &SessionTag,
    budget: &'static str,
    limit: u64,
    action: &'static str,
) {
    Metrics::inc(&metrics.budget_exceeded, &[("budget", budget)]);
    tracing::warn!(session = %tag.session, user = ?tag.user, budget, limit, action, "tenant budget exceeded");
    audit.event(
        tag,
        "budget_exceeded",
        json!({"budget": budget, "limit": limit, "action": action}),
    );
}

/// Admits a new connection of any protocol against the new-connection rate, the server-wide
/// `allowedCidrs`, bans and the total and per-address session limits, counting and auditing a
/// refusal. Shared by the FTPS and SFTP accept loops. `origin.client` is the address every
/// check uses: the TCP peer, or behind the PROXY protocol the client from the header (the
/// proxy's own address is then in `origin.proxy` and only audited).
pub fn admit(
    context: &Context,
    origin: &crate::proxy::Origin,
    listener: &str,
) -> Result<crate::limits::ConnectionGuard, crate::limits::LimitError> {
    let snapshot = context.snapshot.borrow();
    let (limits, bans) = (&snapshot.config.limits, &snapshot.config.bans);
    let client = canonical_ip(origin.client.ip());
    let ip = source_key(client, limits.ipv6_prefix_length);
    let now = std::time::Instant::now();
    let refused = |fields: serde_json::Value| {
        let mut map = origin.audit_fields();
        map.insert("ip".into(), client.to_string().into());
        map.insert("source".into(), ip.to_string().into());
        map.insert("listener".into(), listener.into());
        if let serde_json::Value::Object(extra) = fields {
            map.extend(extra);
        }
        context
            .audit
            .server_event("connection_refused", serde_json::Value::Object(map));
    };
    if let RateDecision::Refused { first } = context.connection_rate.check(
        ip,
        limits.new_connections_per_second,
        limits.new_connection_burst,
        now,
    ) {
        Metrics::inc(&context.metrics.sessions_refused, &[("reason", "rate")]);
        if first {
            refused(
                json!({"reason": crate::limits::LimitError::Rate.to_string(), "budget": "newConnectionsPerSecond",
                       "limit": limits.new_connections_per_second, "burst": limits.new_connection_burst}),
            );
        }
        return Err(crate::limits::LimitError::Rate);
    }
    if !snapshot.config.allows_source(client) {
        // Audited every time: the rate above already bounds how often one source gets here.
        Metrics::inc(
            &context.metrics.sessions_refused,
            &[("reason", "not_allowed")],
        );
        refused(json!({"reason": crate::limits::LimitError::NotAllowed.to_string()}));
        return Err(crate::limits::LimitError::NotAllowed);
    }
    if let Some(remaining) = context.bans.ip_banned(bans, ip, now) {
        Metrics::inc(&context.metrics.sessions_refused, &[("reason", "banned")]);
        if context.bans.log_refusal(bans, ip, now) {
            refused(json!({"reason": "banned", "ban_remaining_seconds": remaining.as_secs()}));
        }
        return Err(crate::limits::LimitError::Banned);
    }
    context
        .limits
        .connect(ip, limits.max_sessions, limits.max_sessions_per_ip)
        .inspect_err(|limit| {
            Metrics::inc(
                &context.metrics.sessions_refused,
                &[("reason", &format!("{limit:?}").to_lowercase())],
            );
            refused(json!({"reason": limit.to_string()}));
        })
}

/// Verifies a password on the shared pool, in the turn of the client's source, against the
/// user's hash or (no hash: unknown user, no password) the snapshot's dummy; a password that
/// verified within `passwords.verifiedCacheSeconds` is accepted from `crate::verified_cache`.
/// Shared by FTPS and SFTP.
pub async fn verify_password(
    context: &Context,
    snapshot: &crate::snapshot::Snapshot,
    ip: IpAddr,
    password: &str,
    hash: Option<String>,
) -> bool {
    let source = source_key(ip, snapshot.config.limits.ipv6_prefix_length);
    let now = std::time::Instant::now();
    if let Some(hash) = hash.as_deref()
        && context.verified.matches(hash, password, now)
    {
        Metrics::inc(&context.metrics.password_checks, &[("result", "cached")]);
        return true;
    }
    let verified = context
        .verifier
        .verify(
            source,
            password.to_string(),
            hash.clone(),
            snapshot.dummy_hash.clone(),
        )
        .await;
    let result = if verified { "verified" } else { "rejected" };
    Metrics::inc(&context.metrics.password_checks, &[("result", result)]);
    if verified && let Some(hash) = hash.as_deref() {
        context.verified.remember(
            hash,
            password,
            std::time::Instant::now(),
            snapshot.config.passwords.verified_cache(),
        );
    }
    verified
}

/// Counts a failed login for the ban engine; new bans are audited and counted. Shared by FTPS
/// and SFTP.
pub fn record_login_failure(context: &Context, ip: std::net::IpAddr, user: Option<&str>) {
    let now = std::time::Instant::now();
    let snapshot = context.snapshot.borrow().clone();
    let client = canonical_ip(ip);
    let ip = source_key(ip, snapshot.config.limits.ipv6_prefix_length);
    let bans = context
        .bans
        .record_failure(&snapshot.config.bans, ip, user, now);
    for ban in bans {
        Metrics::inc(&context.metrics.bans, &[("scope", ban.scope)]);
        context.audit.server_event(
            "ban",
            json!({"scope": ban.scope, "key": ban.key, "duration_seconds": ban.duration.as_secs(),
                   "count": ban.count, "ip": client.to_string(), "origin": "local"}),
        );
        tracing::warn!(scope = ban.scope, key = %ban.key, seconds = ban.duration.as_secs(), "banned after repeated failed logins");
    }
    update_ban_gauges(context, now);
}

/// Whether `user` is banned for logins from `ip` (safelisted addresses never are).
pub fn user_banned(context: &Context, user: &str, ip: std::net::IpAddr) -> bool {
    let snapshot = context.snapshot.borrow().clone();
    context
        .bans
        .user_banned(
            &snapshot.config.bans,
            user,
            source_key(ip, snapshot.config.limits.ipv6_prefix_length),
            std::time::Instant::now(),
        )
        .is_some()
}

pub fn update_ban_gauges(context: &Context, now: std::time::Instant) {
    let active = context.bans.active(now);
    for scope in ["ip", "user", "peer_ip", "peer_user"] {
        let count = active.iter().filter(|(s, _, _)| *s == scope).count();
        context
            .metrics
            .bans_active
            .get_or_create(&vec![("scope", scope.to_string())])
            .set(i64::try_from(count).unwrap_or(i64::MAX));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_users_burst_starts_at_once_then_sessions_wait_their_turn_and_far_turns_are_refused() {
        let pace = SessionPace::default();
        let start = Instant::now();
        let max_wait = Duration::from_secs(5);
        // 4 per second, burst 3: three now, then one every 250 ms.
        for _ in 0..3 {
            assert_eq!(pace.reserve("mallory", 4, 3, max_wait, start), Pace::Now);
        }
        assert_eq!(
            pace.reserve("mallory", 4, 3, max_wait, start),
            Pace::After(Duration::from_millis(250))
        );
        assert_eq!(
            pace.reserve("mallory", 4, 3, max_wait, start),
            Pace::After(Duration::from_millis(500))
        );
        // Another user is not affected by mallory's turns.
        assert_eq!(pace.reserve("alice", 4, 3, max_wait, start), Pace::Now);
        // Reserve up to the longest wait (the 5 s turn is the 23rd session); the next is
        // refused, and a refusal reserves nothing.
        for _ in 0..17 {
            assert!(matches!(
                pace.reserve("mallory", 4, 3, max_wait, start),
                Pace::After(_)
            ));
        }
        assert_eq!(
            pace.reserve("mallory", 4, 3, max_wait, start),
            Pace::After(max_wait)
        );
        assert_eq!(
            pace.reserve("mallory", 4, 3, max_wait, start),
            Pace::Refused
        );
        assert_eq!(
            pace.reserve("mallory", 4, 3, max_wait, start),
            Pace::Refused
        );
        // Time gives the turns back: once the last turn is past, the full burst is there again.
        let later = start + Duration::from_secs(11);
        for _ in 0..3 {
            assert_eq!(pace.reserve("mallory", 4, 3, max_wait, later), Pace::Now);
        }
        assert!(matches!(
            pace.reserve("mallory", 4, 3, max_wait, later),
            Pace::After(_)
        ));
    }

    #[test]
    fn ipv6_sources_are_their_prefix_and_ipv4_stays_whole() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff:1:2:3".parse().unwrap();
        let other: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(source_key(a, 64), source_key(b, 64));
        assert_ne!(source_key(a, 64), source_key(other, 64));
        assert_eq!(
            source_key(a, 64),
            "2001:db8:1:2::".parse::<IpAddr>().unwrap()
        );
        assert_ne!(source_key(a, 128), source_key(b, 128));
        assert_eq!(source_key(a, 48), source_key(other, 48));
        let v4: IpAddr = "192.0.2.7".parse().unwrap();
        assert_eq!(source_key(v4, 64), v4);
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(source_key(mapped, 64), v4);
    }

    #[test]
    fn a_burst_is_allowed_then_the_rate_applies_per_source() {
        let rate = ConnectionRate::default();
        let start = Instant::now();
        let a: IpAddr = "127.0.0.2".parse().unwrap();
        let b: IpAddr = "127.0.0.3".parse().unwrap();
        for _ in 0..30 {
            assert_eq!(rate.check(a, 10, 30, start), RateDecision::Allowed);
        }
        assert_eq!(
            rate.check(a, 10, 30, start),
            RateDecision::Refused { first: true }
        );
        assert_eq!(
            rate.check(a, 10, 30, start),
            RateDecision::Refused { first: false }
        );
        // Another source is not affected.
        assert_eq!(rate.check(b, 10, 30, start), RateDecision::Allowed);
        // 100 ms later one token is back (10 per second).
        let later = start + Duration::from_millis(100);
        assert_eq!(rate.check(a, 10, 30, later), RateDecision::Allowed);
        assert_eq!(
            rate.check(a, 10, 30, later),
            RateDecision::Refused { first: true }
        );
        // A quiet source refills to the burst, not beyond it.
        let much_later = start + Duration::from_secs(3600);
        for _ in 0..30 {
            assert_eq!(rate.check(a, 10, 30, much_later), RateDecision::Allowed);
        }
        assert!(matches!(
            rate.check(a, 10, 30, much_later),
            RateDecision::Refused { .. }
        ));
    }
}
