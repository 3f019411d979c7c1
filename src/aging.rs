//! Password aging as the operator sees it, purely (the clock is an argument): when a
//! TransferUser's password was last changed, when it expires under the server's
//! `passwordPolicy.maxAgeDays`, when to warn (`warnDaysBefore`), and the next instant the
//! answer changes (the controller requeues then).

use jiff::{Timestamp, ToSpan};
use sha2::{Digest, Sha256};

use crate::crd::PasswordPolicy;

/// Days before expiry the `PasswordExpiresSoon` warning starts when `warnDaysBefore` is unset.
pub const DEFAULT_WARN_DAYS: i32 = 14;

/// Where a password stands in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Aging {
    /// No maximum age (or no password): never expires.
    Ageless,
    /// Fine until `warn_at` (when there is a warning period), expires at `expires_at`.
    Fresh {
        warn_at: Option<Timestamp>,
        expires_at: Timestamp,
    },
    /// Inside the warning period.
    ExpiresSoon { expires_at: Timestamp },
    /// Past the maximum age.
    Expired { expires_at: Timestamp },
}

impl Aging {
    /// The expiry instant, when the password ages.
    pub fn expires_at(&self) -> Option<Timestamp> {
        match self {
            Aging::Ageless => None,
            Aging::Fresh { expires_at, .. }
            | Aging::ExpiresSoon { expires_at }
            | Aging::Expired { expires_at } => Some(*expires_at),
        }
    }

    /// The next instant after which [`aging`] gives another answer.
    pub fn next_change(&self) -> Option<Timestamp> {
        match self {
            Aging::Ageless | Aging::Expired { .. } => None,
            Aging::Fresh {
                warn_at: Some(warn),
                ..
            } => Some(*warn),
            Aging::Fresh { expires_at, .. } | Aging::ExpiresSoon { expires_at } => {
                Some(*expires_at)
            }
        }
    }
}

/// The aging of a password changed at `changed_at` under `policy`, at `now`.
pub fn aging(changed_at: Timestamp, policy: &PasswordPolicy, now: Timestamp) -> Aging {
    let Some(days) = policy.max_age_days.filter(|d| *d > 0) else {
        return Aging::Ageless;
    };
    let Ok(expires_at) = changed_at.checked_add((i64::from(days) * 24).hours()) else {
        return Aging::Ageless;
    };
    let warn_days = policy.warn_days_before.unwrap_or(DEFAULT_WARN_DAYS).max(0);
    let warn_at = (warn_days > 0)
        .then(|| {
            expires_at
                .checked_sub((i64::from(warn_days) * 24).hours())
                .ok()
        })
        .flatten();
    if now >= expires_at {
        Aging::Expired { expires_at }
    } else if warn_at.is_some_and(|w| now >= w) {
        Aging::ExpiresSoon { expires_at }
    } else {
        Aging::Fresh {
            warn_at,
            expires_at,
        }
    }
}

/// The status timestamp format: RFC 3339, whole seconds, UTC.
pub fn format(at: Timestamp) -> String {
    Timestamp::from_second(at.as_second())
        .unwrap_or(at)
        .to_string()
}

/// Identifies a `spec.auth.passwordHash` value (a digest of the hash, never of a password),
/// so that a changed hash is noticed like a changed Secret.
pub fn hash_digest(phc: &str) -> String {
    let mut hasher = Sha256::new();
    hasher.update(b"passwordHash:");
    hasher.update(phc.as_bytes());
    hex::encode(&hasher.finalize()[..16])
}

/// When the password was last changed: kept from the previous status while the password's
/// source digest is the same, else `now`.
pub fn changed_at(
    digest: Option<&str>,
    previous_digest: Option<&str>,
    previous_changed_at: Option<&str>,
    now: Timestamp,
) -> Timestamp {
    let kept = previous_changed_at
        .filter(|_| digest.is_some() && digest == previous_digest)
        .and_then(|t| t.parse::<Timestamp>().ok());
    kept.unwrap_or_else(|| Timestamp::from_second(now.as_second()).unwrap_or(now))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    fn policy(max: Option<i32>, warn: Option<i32>) -> PasswordPolicy {
        PasswordPolicy {
            max_age_days: max,
            warn_days_before: warn,
            ..PasswordPolicy::default()
        }
    }

    #[test]
    fn stages_and_their_boundaries() {
        let changed = ts("2026-01-01T00:00:00Z");
        let p = policy(Some(90), Some(10));
        let expires = ts("2026-04-01T00:00:00Z");
        let warn = ts("2026-03-22T00:00:00Z");
        assert_eq!(
            aging(changed, &p, ts("2026-03-21T23:59:59Z")),
            Aging::Fresh {
                warn_at: Some(warn),
                expires_at: expires
            }
        );
        assert_eq!(
            aging(changed, &p, warn),
            Aging::ExpiresSoon {
                expires_at: expires
            }
        );
        assert_eq!(
            aging(changed, &p, expires),
            Aging::Expired {
                expires_at: expires
            }
        );
        // The requeue instants: the warning, then the expiry, then nothing.
        assert_eq!(aging(changed, &p, changed).next_change(), Some(warn));
        assert_eq!(aging(changed, &p, warn).next_change(), Some(expires));
        assert_eq!(aging(changed, &p, expires).next_change(), None);
        // Default warning period 14 days; 0 disables it; no maximum age: ageless.
        assert_eq!(
            aging(changed, &policy(Some(90), None), ts("2026-03-18T00:00:00Z")),
            Aging::ExpiresSoon {
                expires_at: expires
            }
        );
        assert!(matches!(
            aging(
                changed,
                &policy(Some(90), Some(0)),
                ts("2026-03-31T00:00:00Z")
            ),
            Aging::Fresh { warn_at: None, .. }
        ));
        assert_eq!(
            aging(changed, &policy(None, Some(10)), ts("2099-01-01T00:00:00Z")),
            Aging::Ageless
        );
    }

    #[test]
    fn change_time_is_kept_until_the_source_changes() {
        let now = ts("2026-05-05T10:00:00.5Z");
        let old = "2026-01-01T00:00:00Z";
        assert_eq!(changed_at(Some("a"), Some("a"), Some(old), now), ts(old));
        assert_eq!(
            changed_at(Some("b"), Some("a"), Some(old), now),
            ts("2026-05-05T10:00:00Z")
        );
        assert_eq!(
            changed_at(Some("a"), Some("a"), None, now),
            ts("2026-05-05T10:00:00Z")
        );
        assert_ne!(hash_digest("$argon2id$a"), hash_digest("$argon2id$b"));
        assert_eq!(format(now), "2026-05-05T10:00:00Z");
    }
}
