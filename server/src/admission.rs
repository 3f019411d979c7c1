//! Admission of connections and logins for every protocol: the session limits, the
//! new-connection rate per source, bans, and the accounting of failed logins. FTPS and SFTP call
//! the same functions, so a limit or ban can never be weaker on one protocol.

use serde_json::json;

use crate::context::Context;
use crate::metrics::Metrics;
use sluice_config::canonical_ip;

/// Admits a new connection of any protocol against the total and per-address session limits,
/// counting and auditing a refusal. Shared by the FTPS and SFTP accept loops.
pub fn admit(
    context: &Context,
    ip: std::net::IpAddr,
    listener: &str,
) -> Result<crate::limits::ConnectionGuard, crate::limits::LimitError> {
    let ip = canonical_ip(ip);
    let snapshot = context.snapshot.borrow();
    let (limits, bans) = (&snapshot.config.limits, &snapshot.config.bans);
    let now = std::time::Instant::now();
    if let Some(remaining) = context.bans.ip_banned(bans, ip, now) {
        Metrics::inc(&context.metrics.sessions_refused, &[("reason", "banned")]);
        if context.bans.log_refusal(bans, ip, now) {
            context.audit.server_event(
                "connection_refused",
                json!({"ip": ip.to_string(), "reason": "banned", "listener": listener,
                       "ban_remaining_seconds": remaining.as_secs()}),
            );
        }
        return Err(crate::limits::LimitError::Banned);
    }
    context
        .limits
        .connect(ip, limits.max_sessions, limits.max_sessions_per_ip)
        .inspect_err(|refused| {
            Metrics::inc(
                &context.metrics.sessions_refused,
                &[("reason", &format!("{refused:?}").to_lowercase())],
            );
            context.audit.server_event(
                "connection_refused",
                json!({"ip": ip.to_string(), "reason": refused.to_string(), "listener": listener}),
            );
        })
}

/// Counts a failed login for the ban engine; new bans are audited and counted. Shared by FTPS
/// and SFTP.
pub fn record_login_failure(context: &Context, ip: std::net::IpAddr, user: Option<&str>) {
    let now = std::time::Instant::now();
    let bans = context
        .bans
        .record_failure(&context.snapshot.borrow().config.bans, ip, user, now);
    for ban in bans {
        Metrics::inc(&context.metrics.bans, &[("scope", ban.scope)]);
        context.audit.server_event(
            "ban",
            json!({"scope": ban.scope, "key": ban.key, "duration_seconds": ban.duration.as_secs(),
                   "count": ban.count, "ip": canonical_ip(ip).to_string(), "origin": "local"}),
        );
        tracing::warn!(scope = ban.scope, key = %ban.key, seconds = ban.duration.as_secs(), "banned after repeated failed logins");
    }
    update_ban_gauges(context, now);
}

/// Whether `user` is banned for logins from `ip` (safelisted addresses never are).
pub fn user_banned(context: &Context, user: &str, ip: std::net::IpAddr) -> bool {
    context
        .bans
        .user_banned(
            &context.snapshot.borrow().config.bans,
            user,
            ip,
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

