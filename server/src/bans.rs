//! The ban engine shared by FTPS and SFTP: weighted failed logins per source address and per
//! username within a sliding window lead to a ban that doubles with each repeat up to a
//! maximum; safelisted networks are never banned. A username is banned only when failures come
//! from many distinct addresses (a distributed attack): one address alone cannot lock a user
//! out everywhere. Pure state with the clock passed in, so the timing is testable; the
//! protocols call it at accept time and after each failed login.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ipnet::IpNet;
use sluice_config::{BanConfig, canonical_ip, parse_cidr};

/// Records kept at most per map; beyond it, expired records are pruned and then the oldest.
const MAX_RECORDS: usize = 100_000;

#[derive(Default)]
struct Record {
    /// (when, weight, source address) of each failure in the window.
    failures: VecDeque<(Instant, u32, IpAddr)>,
    banned_until: Option<Instant>,
    bans: u32,
    refusal_logged_at: Option<Instant>,
}

impl Record {
    fn weight_within(&mut self, now: Instant, window: Duration) -> u32 {
        while let Some((at, _, _)) = self.failures.front() {
            if now.duration_since(*at) > window {
                self.failures.pop_front();
            } else {
                break;
            }
        }
        self.failures.iter().map(|(_, w, _)| *w).sum()
    }

    fn banned(&self, now: Instant) -> Option<Duration> {
        self.banned_until
            .filter(|until| *until > now)
            .map(|until| until - now)
    }
}

/// A ban that was just imposed (for the audit log and metrics).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewBan {
    /// `ip` or `user`.
    pub scope: &'static str,
    pub key: String,
    pub duration: Duration,
    /// How many times this key has been banned (1 for the first).
    pub count: u32,
}

/// A ban another replica imposed (an address or a username), handed over by the operator (see
/// `ban_sync`).
struct PeerBan {
    until: Instant,
    /// The absolute expiry as received, reported back verbatim.
    expires_at: jiff::Timestamp,
}

#[derive(Default)]
struct State {
    by_ip: HashMap<IpAddr, Record>,
    by_user: HashMap<String, Record>,
    /// Bans of the other replicas: kept apart from `by_ip` so they are never exported as this
    /// pod's own (no ping-pong between replicas) and are replaced as a whole on each import.
    peers: HashMap<IpAddr, PeerBan>,
    /// Username bans of the other replicas (lower-case), kept apart for the same reason.
    peer_users: HashMap<String, PeerBan>,
}

/// Replaces `held` with `bans` (key, absolute expiry, time left); returns the keys whose ban is
/// new or was extended.
fn replace_held<K: Eq + std::hash::Hash + Clone>(
    held: &mut HashMap<K, PeerBan>,
    bans: impl IntoIterator<Item = (K, jiff::Timestamp, Duration)>,
    now: Instant,
) -> Vec<(K, jiff::Timestamp)> {
    let mut fresh = HashMap::new();
    let mut new = Vec::new();
    for (key, expires_at, left) in bans {
        if left.is_zero() {
            continue;
        }
        let known = held
            .get(&key)
            .is_some_and(|p| p.until > now && p.expires_at >= expires_at);
        if !known {
            new.push((key.clone(), expires_at));
        }
        fresh.insert(
            key,
            PeerBan {
                until: now + left,
                expires_at,
            },
        );
    }
    *held = fresh;
    new
}

pub struct BanEngine {
    state: Mutex<State>,
}

fn safelisted(config: &BanConfig, ip: IpAddr) -> bool {
    let ip = canonical_ip(ip);
    config
        .safelist
        .iter()
        .filter_map(|c| parse_cidr(c).ok())
        .any(|net: IpNet| net.contains(&ip))
}

fn ban_duration(config: &BanConfig, count: u32) -> Duration {
    let factor = 1u64 << count.saturating_sub(1).min(20);
    Duration::from_secs(
        config
            .base_ban_seconds
            .saturating_mul(factor)
            .min(config.max_ban_seconds),
    )
}

fn prune<K: Eq + std::hash::Hash + Clone>(
    map: &mut HashMap<K, Record>,
    now: Instant,
    window: Duration,
) {
    if map.len() < MAX_RECORDS {
        return;
    }
    map.retain(|_, record| record.banned(now).is_some() || record.weight_within(now, window) > 0);
    if map.len() >= MAX_RECORDS {
        // Still full of live records: forget the ones without a ban first.
        map.retain(|_, record| record.banned(now).is_some());
    }
}

impl Default for BanEngine {
    fn default() -> Self {
        BanEngine {
            state: Mutex::new(State::default()),
        }
    }
}

impl BanEngine {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Remaining ban of a source address, if any. Safelisted addresses are never banned.
    pub fn ip_banned(&self, config: &BanConfig, ip: IpAddr, now: Instant) -> Option<Duration> {
        if !config.enabled || safelisted(config, ip) {
            return None;
        }
        let ip = canonical_ip(ip);
        let state = self.lock();
        let local = state.by_ip.get(&ip).and_then(|r| r.banned(now));
        let peer = state
            .peers
            .get(&ip)
            .filter(|p| p.until > now)
            .map(|p| p.until - now);
        local.max(peer)
    }

    /// Remaining ban of a username (logins as it are refused from any non-safelisted address).
    pub fn user_banned(
        &self,
        config: &BanConfig,
        user: &str,
        ip: IpAddr,
        now: Instant,
    ) -> Option<Duration> {
        if !config.enabled || safelisted(config, ip) {
            return None;
        }
        let user = user.to_ascii_lowercase();
        let state = self.lock();
        let own = state.by_user.get(&user).and_then(|r| r.banned(now));
        let peer = state
            .peer_users
            .get(&user)
            .filter(|p| p.until > now)
            .map(|p| p.until - now);
        own.max(peer)
    }

    /// Whether a refused connection from `ip` should be logged now: once per window, not per
    /// attempt, so a banned scanner cannot flood the audit log.
    pub fn log_refusal(&self, config: &BanConfig, ip: IpAddr, now: Instant) -> bool {
        let window = Duration::from_secs(config.window_seconds);
        let mut state = self.lock();
        // A peer's ban has no local record yet: create one to remember when it was logged.
        let record = state.by_ip.entry(canonical_ip(ip)).or_default();
        match record.refusal_logged_at {
            Some(at) if now.duration_since(at) < window => false,
            _ => {
                record.refusal_logged_at = Some(now);
                true
            }
        }
    }

    /// Counts a failed login and returns the bans it caused.
    pub fn record_failure(
        &self,
        config: &BanConfig,
        ip: IpAddr,
        user: Option<&str>,
        now: Instant,
    ) -> Vec<NewBan> {
        if !config.enabled || safelisted(config, ip) {
            return Vec::new();
        }
        let window = Duration::from_secs(config.window_seconds);
        let user = user.map(str::to_ascii_lowercase);
        let weight = match &user {
            Some(name)
                if config
                    .well_known_usernames
                    .iter()
                    .any(|w| w.eq_ignore_ascii_case(name)) =>
            {
                config.well_known_weight
            }
            _ => 1,
        };
        let mut state = self.lock();
        prune(&mut state.by_ip, now, window);
        prune(&mut state.by_user, now, window);
        let mut bans = Vec::new();
        let ip = canonical_ip(ip);
        let record = state.by_ip.entry(ip).or_default();
        record.failures.push_back((now, weight, ip));
        if record.banned(now).is_none() && record.weight_within(now, window) >= config.threshold {
            record.bans += 1;
            let duration = ban_duration(config, record.bans);
            record.banned_until = Some(now + duration);
            record.failures.clear();
            bans.push(NewBan {
                scope: "ip",
                key: ip.to_string(),
                duration,
                count: record.bans,
            });
        }
        if let Some(name) = user {
            // A username counts failures from distinct addresses only: one address hammering
            // a user is the address's ban to earn, and must not lock the user out everywhere.
            let record = state.by_user.entry(name.clone()).or_default();
            record.weight_within(now, window);
            if !record.failures.iter().any(|(_, _, from)| *from == ip) {
                record.failures.push_back((now, 1, ip));
            }
            if record.banned(now).is_none() && record.weight_within(now, window) >= config.threshold
            {
                record.bans += 1;
                let duration = ban_duration(config, record.bans);
                record.banned_until = Some(now + duration);
                record.failures.clear();
                bans.push(NewBan {
                    scope: "user",
                    key: name,
                    duration,
                    count: record.bans,
                });
            }
        }
        bans
    }

    /// This pod's own IP bans in force with the instant each ends (what it reports to peers).
    pub fn local_ip_bans(&self, now: Instant) -> Vec<(IpAddr, Instant)> {
        self.lock()
            .by_ip
            .iter()
            .filter(|(_, r)| r.banned(now).is_some())
            .filter_map(|(ip, r)| r.banned_until.map(|until| (*ip, until)))
            .collect()
    }

    /// The peers' IP bans in force, with the absolute expiry they were imported with.
    pub fn peer_ip_bans(&self, now: Instant) -> Vec<(IpAddr, jiff::Timestamp)> {
        self.lock()
            .peers
            .iter()
            .filter(|(_, p)| p.until > now)
            .map(|(ip, p)| (*ip, p.expires_at))
            .collect()
    }

    /// Replaces the peers' IP bans with `bans` (address, absolute expiry, time left). Returns
    /// the addresses whose ban is new or was extended, for the audit log; addresses already
    /// expired or safelisted here are skipped.
    pub fn replace_peer_bans(
        &self,
        config: &BanConfig,
        bans: &[(IpAddr, jiff::Timestamp, Duration)],
        now: Instant,
    ) -> Vec<(IpAddr, jiff::Timestamp)> {
        let bans = bans
            .iter()
            .map(|(ip, expires_at, left)| (canonical_ip(*ip), *expires_at, *left))
            .filter(|(ip, _, _)| !safelisted(config, *ip));
        replace_held(&mut self.lock().peers, bans, now)
    }

    /// This pod's own username bans in force with the instant each ends.
    pub fn local_user_bans(&self, now: Instant) -> Vec<(String, Instant)> {
        self.lock()
            .by_user
            .iter()
            .filter(|(_, r)| r.banned(now).is_some())
            .filter_map(|(user, r)| r.banned_until.map(|until| (user.clone(), until)))
            .collect()
    }

    /// The peers' username bans in force, with the absolute expiry they were imported with.
    pub fn peer_user_bans(&self, now: Instant) -> Vec<(String, jiff::Timestamp)> {
        self.lock()
            .peer_users
            .iter()
            .filter(|(_, p)| p.until > now)
            .map(|(user, p)| (user.clone(), p.expires_at))
            .collect()
    }

    /// Replaces the peers' username bans, like [`BanEngine::replace_peer_bans`]; usernames are
    /// compared in lower case. The safelist still applies at login: a safelisted address is
    /// never refused for a username ban.
    pub fn replace_peer_user_bans(
        &self,
        bans: &[(String, jiff::Timestamp, Duration)],
        now: Instant,
    ) -> Vec<(String, jiff::Timestamp)> {
        let bans = bans
            .iter()
            .map(|(user, expires_at, left)| (user.to_ascii_lowercase(), *expires_at, *left));
        replace_held(&mut self.lock().peer_users, bans, now)
    }

    /// Active bans: (scope, key, remaining), for metrics and status.
    pub fn active(&self, now: Instant) -> Vec<(&'static str, String, Duration)> {
        let state = self.lock();
        let ips = state
            .by_ip
            .iter()
            .filter_map(|(ip, r)| r.banned(now).map(|d| ("ip", ip.to_string(), d)));
        let users = state
            .by_user
            .iter()
            .filter_map(|(u, r)| r.banned(now).map(|d| ("user", u.clone(), d)));
        let peers = state
            .peers
            .iter()
            .filter(|(_, p)| p.until > now)
            .map(|(ip, p)| ("peer_ip", ip.to_string(), p.until - now));
        let peer_users = state
            .peer_users
            .iter()
            .filter(|(_, p)| p.until > now)
            .map(|(user, p)| ("peer_user", user.clone(), p.until - now));
        ips.chain(users).chain(peers).chain(peer_users).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_username_ban_refuses_the_user_from_any_address_but_the_safelist() {
        let engine = BanEngine::default();
        let config = config();
        let now = Instant::now();
        let at: jiff::Timestamp = "2030-01-01T00:00:00Z".parse().unwrap();
        let new = engine.replace_peer_user_bans(
            &[
                ("Alice".into(), at, Duration::from_secs(30)),
                ("gone".into(), at, Duration::ZERO),
            ],
            now,
        );
        assert_eq!(new, [("alice".to_string(), at)]);
        let anywhere: IpAddr = "127.0.0.44".parse().unwrap();
        assert!(
            engine
                .user_banned(&config, "ALICE", anywhere, now)
                .is_some()
        );
        assert!(engine.user_banned(&config, "gone", anywhere, now).is_none());
        assert!(
            engine
                .user_banned(&config, "alice", "127.0.0.9".parse().unwrap(), now)
                .is_none()
        );
        assert!(
            engine
                .user_banned(&config, "alice", anywhere, now + Duration::from_secs(31))
                .is_none()
        );
        // Imported again unchanged: not new; never exported as this pod's own.
        assert!(
            engine
                .replace_peer_user_bans(&[("alice".into(), at, Duration::from_secs(29))], now)
                .is_empty()
        );
        assert!(engine.local_user_bans(now).is_empty());
        assert_eq!(engine.peer_user_bans(now), [("alice".to_string(), at)]);
        // Replaced as a whole.
        engine.replace_peer_user_bans(&[], now);
        assert!(
            engine
                .user_banned(&config, "alice", anywhere, now)
                .is_none()
        );
    }

    fn config() -> BanConfig {
        BanConfig {
            threshold: 5,
            window_seconds: 60,
            base_ban_seconds: 10,
            max_ban_seconds: 25,
            safelist: vec!["127.0.0.9/32".into()],
            ..BanConfig::default()
        }
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn failures_within_the_window_ban_and_the_ban_expires() {
        let engine = BanEngine::default();
        let config = config();
        let start = Instant::now();
        for i in 0..4 {
            assert!(
                engine
                    .record_failure(
                        &config,
                        ip("127.0.0.3"),
                        Some("alice"),
                        start + Duration::from_secs(i)
                    )
                    .is_empty()
            );
        }
        let bans = engine.record_failure(
            &config,
            ip("127.0.0.3"),
            Some("bob"),
            start + Duration::from_secs(4),
        );
        assert_eq!(bans[0].scope, "ip");
        assert_eq!(bans[0].duration, Duration::from_secs(10));
        let at = start + Duration::from_secs(5);
        assert!(engine.ip_banned(&config, ip("127.0.0.3"), at).is_some());
        assert!(engine.ip_banned(&config, ip("127.0.0.4"), at).is_none());
        assert!(
            engine
                .ip_banned(&config, ip("::ffff:127.0.0.3"), at)
                .is_some()
        );
        assert!(
            engine
                .ip_banned(&config, ip("127.0.0.3"), start + Duration::from_secs(15))
                .is_none()
        );
    }

    #[test]
    fn old_failures_fall_out_of_the_window() {
        let engine = BanEngine::default();
        let config = config();
        let start = Instant::now();
        for i in 0..10u64 {
            let bans = engine.record_failure(
                &config,
                ip("127.0.0.3"),
                None,
                start + Duration::from_secs(i * 20),
            );
            assert!(bans.is_empty(), "banned at failure {i}");
        }
    }

    #[test]
    fn repeated_bans_double_up_to_the_maximum() {
        let engine = BanEngine::default();
        let config = config();
        let mut now = Instant::now();
        let mut durations = Vec::new();
        for _ in 0..3 {
            for _ in 0..5 {
                for ban in engine.record_failure(&config, ip("127.0.0.5"), None, now) {
                    durations.push(ban.duration.as_secs());
                }
            }
            now += Duration::from_secs(100);
        }
        assert_eq!(durations, [10, 20, 25]);
    }

    #[test]
    fn safelisted_addresses_are_never_banned() {
        let engine = BanEngine::default();
        let config = config();
        let now = Instant::now();
        for _ in 0..50 {
            assert!(
                engine
                    .record_failure(&config, ip("127.0.0.9"), Some("root"), now)
                    .is_empty()
            );
        }
        assert!(engine.ip_banned(&config, ip("127.0.0.9"), now).is_none());
    }

    #[test]
    fn well_known_usernames_weigh_more_and_users_are_banned_too() {
        let engine = BanEngine::default();
        let config = config();
        let now = Instant::now();
        assert!(
            engine
                .record_failure(&config, ip("127.0.0.6"), Some("root"), now)
                .is_empty()
        );
        let bans = engine.record_failure(&config, ip("127.0.0.6"), Some("Root"), now);
        assert_eq!(bans.len(), 1, "3 + 3 >= 5 bans the address: {bans:?}");
        for _ in 0..20 {
            engine.record_failure(&config, ip("127.0.3.1"), Some("dave"), now);
        }
        assert!(
            engine
                .user_banned(&config, "dave", ip("127.0.2.1"), now)
                .is_none(),
            "one address alone must not lock a user out"
        );
        for n in 0..5 {
            engine.record_failure(&config, ip(&format!("127.0.1.{n}")), Some("carol"), now);
        }
        assert!(
            engine
                .user_banned(&config, "CAROL", ip("127.0.2.1"), now)
                .is_some()
        );
        assert!(
            engine
                .user_banned(&config, "carol", ip("127.0.0.9"), now)
                .is_none()
        );
    }

    #[test]
    fn refusals_are_logged_once_per_window() {
        let engine = BanEngine::default();
        let config = config();
        let now = Instant::now();
        for _ in 0..5 {
            engine.record_failure(&config, ip("127.0.0.7"), None, now);
        }
        assert!(engine.log_refusal(&config, ip("127.0.0.7"), now));
        assert!(!engine.log_refusal(&config, ip("127.0.0.7"), now + Duration::from_secs(30)));
        assert!(engine.log_refusal(&config, ip("127.0.0.7"), now + Duration::from_secs(61)));
    }

    #[test]
    fn peer_bans_refuse_expire_and_are_not_exported_as_local() {
        let engine = BanEngine::default();
        let config = config();
        let now = Instant::now();
        let expiry = jiff::Timestamp::now() + jiff::SignedDuration::from_secs(20);
        let imported = [
            (ip("127.0.0.3"), expiry, Duration::from_secs(20)),
            (ip("127.0.0.9"), expiry, Duration::from_secs(20)),
            (ip("127.0.0.4"), expiry, Duration::ZERO),
        ];
        let new = engine.replace_peer_bans(&config, &imported, now);
        assert_eq!(
            new,
            [(ip("127.0.0.3"), expiry)],
            "safelisted and expired are skipped"
        );
        assert!(engine.ip_banned(&config, ip("127.0.0.3"), now).is_some());
        assert!(engine.ip_banned(&config, ip("127.0.0.9"), now).is_none());
        assert!(
            engine.local_ip_bans(now).is_empty(),
            "a peer's ban is not ours"
        );
        assert_eq!(engine.peer_ip_bans(now), [(ip("127.0.0.3"), expiry)]);
        assert!(
            engine.replace_peer_bans(&config, &imported, now).is_empty(),
            "the same list again audits nothing"
        );
        assert!(engine.log_refusal(&config, ip("127.0.0.3"), now));
        assert!(!engine.log_refusal(&config, ip("127.0.0.3"), now + Duration::from_secs(1)));
        let later = now + Duration::from_secs(21);
        assert!(engine.ip_banned(&config, ip("127.0.0.3"), later).is_none());
        assert!(engine.peer_ip_bans(later).is_empty());
        engine.replace_peer_bans(&config, &[], now);
        assert!(engine.ip_banned(&config, ip("127.0.0.3"), now).is_none());
    }

    #[test]
    fn disabled_engine_does_nothing() {
        let engine = BanEngine::default();
        let config = BanConfig {
            enabled: false,
            ..config()
        };
        let now = Instant::now();
        for _ in 0..50 {
            assert!(
                engine
                    .record_failure(&config, ip("127.0.0.8"), None, now)
                    .is_empty()
            );
        }
    }
}
