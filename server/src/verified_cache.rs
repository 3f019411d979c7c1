//! Remembers, for a short time, that a password matched a user's argon2id hash, so that a
//! tenant who logs in again and again (a script opening a session per file, a partner's
//! integration with 8 parallel sessions) costs one argon2 verification per
//! `passwords.verifiedCacheSeconds`, not one per login. Without it such a tenant keeps the
//! verification threads busy and takes CPU from every other tenant's transfers (issue 12,
//! attack 7); SFTPGo caches verified passwords for the same reason.
//!
//! What is kept is never the password: an entry is the HMAC-SHA256, under a key drawn at start
//! and never written anywhere, of the stored hash and the password, keyed by the stored hash.
//! Only a password that verified against argon2 gets an entry, so a guess is always a full
//! argon2 verification (failed logins, bans and their timing are unchanged) and only a correct
//! password is answered sooner. A changed `passwordHash` (new password, or the same password
//! rehashed) finds no entry. Someone who can read the process's memory could test guesses
//! against an entry at HMAC speed instead of argon2's, but such a reader also sees every
//! password as it arrives and every session's keys, so this gives them nothing new.
//!
//! Hand-written rather than a cache crate: a bounded map with a deadline per entry is a few
//! lines, and the part that matters (what is stored and the constant-time comparison) is `hmac`.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Most entries kept: one per user that logged in within the lifetime; at ~150 bytes each,
/// 100,000 entries are ~15 MiB. Past it, new verifications are not remembered until entries
/// expire (they are verified with argon2 as before).
pub const MAX_ENTRIES: usize = 100_000;

struct Entry {
    tag: [u8; 32],
    expires: Instant,
}

/// Verified (stored hash, password) pairs for a limited time.
pub struct VerifiedCache {
    key: [u8; 32],
    entries: Mutex<HashMap<String, Entry>>,
    max_entries: usize,
}

impl VerifiedCache {
    pub fn new() -> VerifiedCache {
        VerifiedCache::with_capacity(MAX_ENTRIES)
    }

    pub fn with_capacity(max_entries: usize) -> VerifiedCache {
        VerifiedCache {
            key: rand::random(),
            entries: Mutex::new(HashMap::new()),
            max_entries,
        }
    }

    fn mac(&self, hash: &str, password: &str) -> Hmac<Sha256> {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.key)
            .expect("HMAC takes a key of any length");
        // Length-prefixed so that no other (hash, password) split gives the same input.
        mac.update(&(hash.len() as u64).to_be_bytes());
        mac.update(hash.as_bytes());
        mac.update(password.as_bytes());
        mac
    }

    /// Whether `password` verified against `hash` within the lifetime before `now`.
    pub fn matches(&self, hash: &str, password: &str, now: Instant) -> bool {
        let Ok(entries) = self.entries.lock() else {
            return false;
        };
        let Some(entry) = entries.get(hash).filter(|entry| entry.expires > now) else {
            return false;
        };
        // `verify_slice` compares in constant time.
        self.mac(hash, password).verify_slice(&entry.tag).is_ok()
    }

    /// Remembers that `password` verified against `hash` until `now + lifetime`; a zero
    /// lifetime remembers nothing.
    pub fn remember(&self, hash: &str, password: &str, now: Instant, lifetime: Duration) {
        if lifetime.is_zero() {
            return;
        }
        let tag: [u8; 32] = self.mac(hash, password).finalize().into_bytes().into();
        let Ok(mut entries) = self.entries.lock() else {
            return;
        };
        if entries.len() >= self.max_entries && !entries.contains_key(hash) {
            entries.retain(|_, entry| entry.expires > now);
            if entries.len() >= self.max_entries {
                return;
            }
        }
        entries.insert(
            hash.to_string(),
            Entry {
                tag,
                expires: now + lifetime,
            },
        );
    }

    /// Entries held (expired ones included until they are pruned).
    pub fn len(&self) -> usize {
        self.entries
            .lock()
            .map(|entries| entries.len())
            .unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Default for VerifiedCache {
    fn default() -> Self {
        VerifiedCache::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA";
    const OTHER_HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$b3RoZXJzYWx0$aGFzaGhhc2hoYXNoaGFzaA";
    const MINUTE: Duration = Duration::from_secs(60);

    #[test]
    fn only_the_remembered_password_of_the_remembered_hash_matches() {
        let cache = VerifiedCache::new();
        let now = Instant::now();
        assert!(!cache.matches(HASH, "s3cret", now));
        cache.remember(HASH, "s3cret", now, MINUTE);
        assert!(cache.matches(HASH, "s3cret", now));
        assert!(!cache.matches(HASH, "s3cret ", now), "another password");
        assert!(!cache.matches(HASH, "", now));
        assert!(
            !cache.matches(OTHER_HASH, "s3cret", now),
            "the same password under a changed hash must be verified again"
        );
    }

    #[test]
    fn entries_expire_and_a_zero_lifetime_keeps_nothing() {
        let cache = VerifiedCache::new();
        let now = Instant::now();
        cache.remember(HASH, "s3cret", now, MINUTE);
        assert!(cache.matches(HASH, "s3cret", now + MINUTE - Duration::from_millis(1)));
        assert!(!cache.matches(HASH, "s3cret", now + MINUTE));
        let off = VerifiedCache::new();
        off.remember(HASH, "s3cret", now, Duration::ZERO);
        assert!(off.is_empty());
        assert!(!off.matches(HASH, "s3cret", now));
    }

    #[test]
    fn entries_are_keyed_per_process_and_hold_no_password() {
        let now = Instant::now();
        let password = "correct horse battery staple";
        let tags: Vec<[u8; 32]> = (0..2)
            .map(|_| {
                let cache = VerifiedCache::new();
                cache.remember(HASH, password, now, MINUTE);
                let entries = cache.entries.lock().unwrap();
                entries[HASH].tag
            })
            .collect();
        assert_ne!(
            tags[0], tags[1],
            "a fixed key would make entries testable by anyone who reads them"
        );
        assert!(!tags[0].windows(5).any(|w| w == b"horse"));
    }

    #[test]
    fn a_full_cache_prunes_expired_entries_and_otherwise_stops_remembering() {
        let cache = VerifiedCache::with_capacity(2);
        let now = Instant::now();
        cache.remember("h1", "p", now, MINUTE);
        cache.remember("h2", "p", now, Duration::from_secs(1));
        cache.remember("h3", "p", now, MINUTE);
        assert!(!cache.matches("h3", "p", now), "full: not remembered");
        assert!(cache.matches("h1", "p", now) && cache.matches("h2", "p", now));
        let later = now + Duration::from_secs(2);
        cache.remember("h3", "p", later, MINUTE);
        assert!(cache.matches("h3", "p", later), "h2 expired and made room");
        assert!(cache.matches("h1", "p", later));
        assert_eq!(cache.len(), 2);
        cache.remember("h1", "p2", later, MINUTE);
        assert!(
            cache.matches("h1", "p2", later),
            "a known hash is replaced even when full"
        );
    }
}
