//! Login windows and password aging as the sessions apply them (shared by FTPS and SFTP): the
//! clock they read, why a verified login is still refused, and when an open session must end.
//! The window arithmetic itself is the pure `sluice_config::window_state`.

use std::sync::OnceLock;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use sluice_config::{PasswordsConfig, User, WindowState, password_expired, window_state};

/// Environment variable that shifts the clock of login windows and password aging, for tests
/// only (so that a window edge can be a few seconds away). Logged as a warning when set.
pub const TEST_CLOCK_OFFSET_ENV: &str = "SLUICE_TEST_ONLY_CLOCK_OFFSET_SECONDS";

#[derive(Debug, thiserror::Error)]
pub enum ClockError {
    #[error("{TEST_CLOCK_OFFSET_ENV}: {0:?} is not a whole number of seconds")]
    BadOffset(String),
}

static OFFSET: OnceLock<SignedDuration> = OnceLock::new();

/// Reads the test-only clock offset once at start-up; returns it when one is set.
pub fn init_clock() -> Result<Option<i64>, ClockError> {
    let Ok(text) = std::env::var(TEST_CLOCK_OFFSET_ENV) else {
        return Ok(None);
    };
    let seconds: i64 = text
        .trim()
        .parse()
        .map_err(|_| ClockError::BadOffset(text.clone()))?;
    let _ = OFFSET.set(SignedDuration::from_secs(seconds));
    Ok(Some(seconds))
}

/// The time login windows and password aging are evaluated at.
pub fn now() -> Timestamp {
    let now = Timestamp::now();
    match OFFSET.get() {
        Some(offset) => now.checked_add(*offset).unwrap_or(now),
        None => now,
    }
}

/// Why a user whose credentials were verified may still not log in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The password is older than `passwords.maxAgeDays` (password logins only). Answered
    /// like a wrong password, and counted towards bans like one.
    PasswordExpired,
    /// Outside every login window. Told to the client (who proved the credentials) and not
    /// counted towards bans: it is not a guessing attempt.
    OutsideWindow { next_open: Option<Timestamp> },
}

impl Refusal {
    /// The `reason` of the audit event.
    pub fn audit_reason(&self) -> &'static str {
        match self {
            Refusal::PasswordExpired => "PasswordExpired",
            Refusal::OutsideWindow { .. } => "outside login window",
        }
    }

    /// Whether the ban engine counts this refusal as a failed login.
    pub fn counts_for_bans(&self) -> bool {
        matches!(self, Refusal::PasswordExpired)
    }

    /// Text of the FTPS 530 reply.
    pub fn ftps_reply(&self) -> String {
        match self {
            Refusal::PasswordExpired => "login incorrect".into(),
            Refusal::OutsideWindow {
                next_open: Some(at),
            } => {
                format!("login not allowed at this time (window: next opens at {at})")
            }
            Refusal::OutsideWindow { next_open: None } => {
                "login not allowed at this time (window: none opens in the next week)".into()
            }
        }
    }
}

/// Password aging first (so that an expired password looks like a wrong one whatever the
/// time), then the login windows.
pub fn login_refusal(
    user: &User,
    passwords: &PasswordsConfig,
    password_used: bool,
    now: Timestamp,
) -> Option<Refusal> {
    if password_used && password_expired(passwords, user.password_changed_at.as_deref(), now) {
        return Some(Refusal::PasswordExpired);
    }
    match window_state(&user.login_windows, now) {
        WindowState::Allowed { .. } => None,
        WindowState::Refused { next_open } => Some(Refusal::OutsideWindow { next_open }),
    }
}

/// Whether an open session of `user` must end now because no login window is open.
pub fn outside_window(user: &User, now: Timestamp) -> bool {
    matches!(
        window_state(&user.login_windows, now),
        WindowState::Refused { .. }
    )
}

/// How long until an open session of `user` must be checked against its windows again:
/// `None` without windows; zero when outside one.
pub fn until_edge(user: &User, now: Timestamp) -> Option<Duration> {
    match window_state(&user.login_windows, now) {
        WindowState::Allowed { until: None } => None,
        WindowState::Allowed { until: Some(end) } => {
            Some(Duration::try_from(end.duration_since(now)).unwrap_or(Duration::ZERO))
        }
        WindowState::Refused { .. } => Some(Duration::ZERO),
    }
}

/// The message an ended session is given (FTPS 421 text, SSH disconnect description).
pub const WINDOW_CLOSED: &str = "login window closed, session ended";

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_config::LoginWindow;

    fn user(windows: Vec<LoginWindow>, changed: Option<&str>) -> User {
        User {
            username: "u".into(),
            password_hash: None,
            ssh_authorized_keys: vec![],
            home: "u".into(),
            permissions: vec![],
            allowed_cidrs: vec![],
            protocols: vec![],
            expires_at: None,
            disabled: false,
            password_authentication: true,
            required_auth: vec![],
            login_windows: windows,
            password_changed_at: changed.map(Into::into),
            totp: None,
            client_certificates: vec![],
            ftps_auth: Default::default(),
            ftps_data_binding: Default::default(),
            quota: None,
            retention: Vec::new(),
        }
    }

    fn ts(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    #[test]
    fn refusals_and_edges() {
        let nine_to_five = LoginWindow {
            days: vec![],
            from: "09:00".into(),
            to: "17:00".into(),
            time_zone: "UTC".into(),
        };
        let aging = PasswordsConfig {
            max_age_days: Some(30),
            ..PasswordsConfig::default()
        };
        let u = user(vec![nine_to_five], Some("2026-01-01T00:00:00Z"));
        let noon = ts("2026-01-10T12:00:00Z");
        assert_eq!(login_refusal(&u, &aging, true, noon), None);
        assert_eq!(until_edge(&u, noon), Some(Duration::from_secs(5 * 3600)));
        let night = ts("2026-01-10T20:00:00Z");
        let refusal = login_refusal(&u, &aging, false, night).unwrap();
        assert_eq!(refusal.audit_reason(), "outside login window");
        assert!(!refusal.counts_for_bans());
        assert!(
            refusal
                .ftps_reply()
                .starts_with("login not allowed at this time (window")
        );
        assert!(refusal.ftps_reply().contains("2026-01-11T09:00:00Z"));
        assert_eq!(until_edge(&u, night), Some(Duration::ZERO));
        assert!(outside_window(&u, night));
        // Past the maximum age: password logins refused, key logins not.
        let late = ts("2026-02-10T12:00:00Z");
        let refusal = login_refusal(&u, &aging, true, late).unwrap();
        assert_eq!(refusal, Refusal::PasswordExpired);
        assert!(refusal.counts_for_bans());
        assert_eq!(refusal.ftps_reply(), "login incorrect");
        assert_eq!(login_refusal(&u, &aging, false, late), None);
        // No windows: never an edge.
        assert_eq!(until_edge(&user(vec![], None), night), None);
    }
}
