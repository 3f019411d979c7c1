//! TOTP (RFC 6238) second factor: checks a code against a user's secret with one time step of
//! clock skew either way (the `totp-rs` crate computes and compares the codes in constant
//! time), and remembers per user the last accepted step so that a code is accepted once:
//! any step at or before it is refused, across every FTPS and SFTP session of the process, and,
//! through the operator's sync of `/bans` (see `ban_sync`), across the replicas of a server.
//! Neither the code nor the secret is ever logged.

use std::collections::HashMap;
use std::sync::Mutex;

use sluice_config::{TotpAlgorithm, TotpConfig};
use totp_rs::{Algorithm, Builder};

/// Steps accepted before and after the current one.
const SKEW_STEPS: u16 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TotpOutcome {
    Accepted,
    /// Not the code of the current step or a neighbour (also: malformed).
    Invalid,
    /// A correct code whose step was already used (or is older than the last one used).
    Replayed,
}

impl TotpOutcome {
    /// The audit `reason` of a refusal.
    pub fn reason(self) -> &'static str {
        match self {
            TotpOutcome::Accepted => "totp accepted",
            TotpOutcome::Invalid => "totp invalid",
            TotpOutcome::Replayed => "totp replayed",
        }
    }
}

/// The time step (`unix_seconds / period`) whose code `code` is, within the skew window.
pub fn matching_step(config: &TotpConfig, code: &str, unix_seconds: u64) -> Option<u64> {
    let algorithm = match config.algorithm {
        TotpAlgorithm::Sha1 => Algorithm::SHA1,
        TotpAlgorithm::Sha256 => Algorithm::SHA256,
        TotpAlgorithm::Sha512 => Algorithm::SHA512,
    };
    let totp = Builder::new()
        .with_algorithm(algorithm)
        .with_digits(config.digits)
        .with_skew(SKEW_STEPS)
        .with_step_duration(config.period)
        .with_secret(config.secret_bytes()?)
        .build()
        .ok()?;
    totp.check(code, unix_seconds)
}

/// Splits the FTPS `PASS` argument `<password><code>` into the password and the code (the last
/// `digits` characters); `None` when it is too short to hold a code.
pub fn split_password_and_code(argument: &str, digits: u8) -> Option<(&str, &str)> {
    let at = argument.len().checked_sub(usize::from(digits))?;
    if !argument.is_char_boundary(at) {
        return None;
    }
    Some(argument.split_at(at))
}

/// How long an accepted step is reported to the other replicas: a code stays acceptable for
/// less than three periods after it was accepted (one step of skew either way), and a period is
/// at most 300 s.
pub const SHARE_FOR: std::time::Duration = std::time::Duration::from_secs(900);

/// The last accepted step per user name, shared by every session of the process, and the
/// last steps the other replicas accepted (imported, kept apart so they are never re-exported).
#[derive(Default)]
pub struct ReplayGuard {
    last: Mutex<HashMap<String, (u64, std::time::Instant)>>,
    peers: Mutex<HashMap<String, u64>>,
}

impl ReplayGuard {
    /// Checks `code` for `user` at `unix_seconds`; an accepted code's step is remembered.
    pub fn verify(
        &self,
        user: &str,
        config: &TotpConfig,
        code: &str,
        unix_seconds: u64,
    ) -> TotpOutcome {
        let Some(step) = matching_step(config, code.trim(), unix_seconds) else {
            return TotpOutcome::Invalid;
        };
        let peer = self
            .peers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(user)
            .copied();
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        let used = last.get(user).map(|(step, _)| *step).max(peer);
        match used {
            Some(used) if step <= used => TotpOutcome::Replayed,
            _ => {
                last.insert(user.to_string(), (step, std::time::Instant::now()));
                TotpOutcome::Accepted
            }
        }
    }

    /// Steps accepted here within [`SHARE_FOR`] (what this pod reports to its peers).
    pub fn local_steps(&self, now: std::time::Instant) -> Vec<(String, u64)> {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        last.retain(|_, (_, at)| now.saturating_duration_since(*at) < SHARE_FOR * 2);
        last.iter()
            .filter(|(_, (_, at))| now.saturating_duration_since(*at) < SHARE_FOR)
            .map(|(user, (step, _))| (user.clone(), *step))
            .collect()
    }

    /// The steps imported from the other replicas.
    pub fn peer_steps(&self) -> Vec<(String, u64)> {
        self.peers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(user, step)| (user.clone(), *step))
            .collect()
    }

    /// Replaces the imported steps (the operator sends the other replicas' latest per user).
    pub fn replace_peer_steps(&self, steps: impl IntoIterator<Item = (String, u64)>) {
        *self.peers.lock().unwrap_or_else(|p| p.into_inner()) = steps.into_iter().collect();
    }

    /// [`verify`](Self::verify) at the current system time.
    pub fn verify_now(&self, user: &str, config: &TotpConfig, code: &str) -> TotpOutcome {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        self.verify(user, config, code, now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(secret: &[u8], algorithm: TotpAlgorithm, digits: u8) -> TotpConfig {
        TotpConfig {
            secret: data_encoding::BASE32_NOPAD.encode(secret),
            digits,
            period: 30,
            algorithm,
        }
    }

    /// RFC 6238 Appendix B.
    #[test]
    fn rfc6238_test_vectors() {
        let sha1 = config(b"12345678901234567890", TotpAlgorithm::Sha1, 8);
        let sha256 = config(
            b"12345678901234567890123456789012",
            TotpAlgorithm::Sha256,
            8,
        );
        let sha512 = config(
            b"1234567890123456789012345678901234567890123456789012345678901234",
            TotpAlgorithm::Sha512,
            8,
        );
        let vectors: [(u64, &str, &str, &str); 6] = [
            (59, "94287082", "46119246", "90693936"),
            (1111111109, "07081804", "68084774", "25091201"),
            (1111111111, "14050471", "67062674", "99943326"),
            (1234567890, "89005924", "91819424", "93441116"),
            (2000000000, "69279037", "90698825", "38618901"),
            (20000000000, "65353130", "77737706", "47863826"),
        ];
        for (time, one, two, five) in vectors {
            let step = time / 30;
            assert_eq!(matching_step(&sha1, one, time), Some(step), "{time}");
            assert_eq!(matching_step(&sha256, two, time), Some(step), "{time}");
            assert_eq!(matching_step(&sha512, five, time), Some(step), "{time}");
            // The SHA-1 code is not the SHA-256 one.
            assert_eq!(matching_step(&sha256, one, time), None, "{time}");
        }
    }

    #[test]
    fn skew_is_one_step_either_way() {
        let sha1 = config(b"12345678901234567890", TotpAlgorithm::Sha1, 8);
        // "14050471" is the code of step 37037037 (t = 1111111110..1111111139).
        let t = 1111111111;
        assert!(matching_step(&sha1, "14050471", t - 30).is_some());
        assert!(matching_step(&sha1, "14050471", t + 30).is_some());
        assert!(matching_step(&sha1, "14050471", t - 60).is_none());
        assert!(matching_step(&sha1, "14050471", t + 60).is_none());
        assert!(matching_step(&sha1, "1405047", t).is_none());
        assert!(matching_step(&sha1, "+4050471", t).is_none());
    }

    #[test]
    fn a_step_another_replica_accepted_is_a_replay_here_and_is_not_re_exported() {
        let sha1 = config(b"12345678901234567890", TotpAlgorithm::Sha1, 8);
        let t = 1111111111;
        let guard = ReplayGuard::default();
        // Another replica accepted step 37037037 ("14050471") for alice.
        guard.replace_peer_steps([("alice".to_string(), 37037037)]);
        assert_eq!(
            guard.verify("alice", &sha1, "14050471", t),
            TotpOutcome::Replayed
        );
        assert!(guard.local_steps(std::time::Instant::now()).is_empty());
        assert_eq!(guard.peer_steps(), [("alice".to_string(), 37037037)]);
        // Not for another user; and once the import is replaced, the code is fresh here.
        assert_eq!(
            guard.verify("bob", &sha1, "14050471", t),
            TotpOutcome::Accepted
        );
        guard.replace_peer_steps([]);
        assert_eq!(
            guard.verify("alice", &sha1, "14050471", t),
            TotpOutcome::Accepted
        );
        let now = std::time::Instant::now();
        let mut local = guard.local_steps(now);
        local.sort();
        assert_eq!(
            local,
            [
                ("alice".to_string(), 37037037),
                ("bob".to_string(), 37037037)
            ]
        );
        // Reported for SHARE_FOR only.
        assert!(guard.local_steps(now + SHARE_FOR).is_empty());
    }

    #[test]
    fn a_code_is_accepted_once_and_older_steps_are_refused() {
        let sha1 = config(b"12345678901234567890", TotpAlgorithm::Sha1, 8);
        let guard = ReplayGuard::default();
        let t = 1111111111;
        assert_eq!(
            guard.verify("alice", &sha1, "14050471", t),
            TotpOutcome::Accepted
        );
        assert_eq!(
            guard.verify("alice", &sha1, "14050471", t),
            TotpOutcome::Replayed
        );
        // Another user with the same secret has their own record.
        assert_eq!(
            guard.verify("bob", &sha1, "14050471", t),
            TotpOutcome::Accepted
        );
        // The previous step's code, still inside the skew window, is older: refused.
        assert_eq!(
            guard.verify("alice", &sha1, "07081804", 1111111109 + 1),
            TotpOutcome::Replayed
        );
        assert_eq!(
            guard.verify("alice", &sha1, "00000000", t),
            TotpOutcome::Invalid
        );
    }

    #[test]
    fn password_and_code_split_at_the_digits() {
        assert_eq!(
            split_password_and_code("secret123456", 6),
            Some(("secret", "123456"))
        );
        assert_eq!(split_password_and_code("123456", 6), Some(("", "123456")));
        assert_eq!(split_password_and_code("12345", 6), None);
        assert_eq!(split_password_and_code("pässwörd€", 2), None);
    }
}
