//! Login time windows (`users[].loginWindows`) and password aging (`passwords.maxAgeDays`,
//! `users[].passwordChangedAt`): the types, their validation, and pure functions of an
//! injected `now` that say whether a login is allowed and until when.
//!
//! Window semantics (documented in docs/server-config.md):
//! - `days` are the days a window *starts* on; an empty list means every day.
//! - `from`/`to` are wall-clock `HH:MM` in `timeZone` (IANA, default `UTC`). `to` after `from`
//!   ends the same day; `to` at or before `from` crosses midnight and ends on the next day
//!   (`from == to` is a 24-hour window).
//! - A wall-clock time that does not exist on a DST change day (spring forward) is moved
//!   forward by the gap; one that exists twice (fall back) is the earlier instant (jiff's
//!   "compatible" rule, as RFC 5545 and java.time do).
//! - Several windows are a union; touching or overlapping windows form one continuous span.

use jiff::civil::{Date, Weekday};
use jiff::tz::TimeZone;
use jiff::{Timestamp, ToSpan};
use serde::{Deserialize, Serialize};

/// A day of the week as written in `users.yaml`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub enum Day {
    Mon,
    Tue,
    Wed,
    Thu,
    Fri,
    Sat,
    Sun,
}

impl Day {
    fn weekday(self) -> Weekday {
        match self {
            Day::Mon => Weekday::Monday,
            Day::Tue => Weekday::Tuesday,
            Day::Wed => Weekday::Wednesday,
            Day::Thu => Weekday::Thursday,
            Day::Fri => Weekday::Friday,
            Day::Sat => Weekday::Saturday,
            Day::Sun => Weekday::Sunday,
        }
    }
}

/// One recurring period in which a user may log in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LoginWindow {
    /// Days the window starts on (`Mon` ... `Sun`); empty means every day.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub days: Vec<Day>,
    /// Start, wall-clock `HH:MM` (24-hour) in `timeZone`.
    #[cfg_attr(
        feature = "schema",
        schemars(regex(pattern = r"^([01][0-9]|2[0-3]):[0-5][0-9]$"))
    )]
    pub from: String,
    /// End, `HH:MM`; at or before `from` means the window crosses midnight into the next day.
    #[cfg_attr(
        feature = "schema",
        schemars(regex(pattern = r"^([01][0-9]|2[0-3]):[0-5][0-9]$"))
    )]
    pub to: String,
    /// IANA time zone such as `Europe/Berlin` (default `UTC`).
    #[serde(default = "utc")]
    pub time_zone: String,
}

fn utc() -> String {
    "UTC".into()
}

/// Whether a login is allowed at a given instant, and until when / from when.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowState {
    /// Allowed; `until` is where the current continuous span of windows ends (`None`: no
    /// windows configured, always allowed; a span longer than the look-ahead ends at the
    /// look-ahead, so callers re-evaluate there).
    Allowed { until: Option<Timestamp> },
    /// Refused; `next_open` is the next window start within the look-ahead (a week).
    Refused { next_open: Option<Timestamp> },
}

/// Parses `HH:MM` (24-hour, two digits each).
pub fn parse_hhmm(text: &str) -> Result<(i8, i8), String> {
    let bad = || format!("{text:?} is not a time such as 08:00 or 18:30 (HH:MM, 24-hour)");
    let (h, m) = text.split_once(':').ok_or_else(bad)?;
    if h.len() != 2 || m.len() != 2 || !(h.bytes().chain(m.bytes())).all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let (h, m): (i8, i8) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
    if h > 23 || m > 59 {
        return Err(bad());
    }
    Ok((h, m))
}

/// Checks one window; each error is `(field, message)` with the field relative to the window.
pub fn validate_window(window: &LoginWindow) -> Vec<(&'static str, String)> {
    let mut errors = Vec::new();
    if let Err(message) = parse_hhmm(&window.from) {
        errors.push(("from", message));
    }
    if let Err(message) = parse_hhmm(&window.to) {
        errors.push(("to", message));
    }
    if let Err(error) = TimeZone::get(&window.time_zone) {
        errors.push((
            "timeZone",
            format!(
                "{:?} is not a known IANA time zone such as Europe/Berlin: {error}",
                window.time_zone
            ),
        ));
    }
    let mut seen = Vec::new();
    for day in &window.days {
        if seen.contains(day) {
            errors.push(("days", format!("{day:?} is listed twice")));
        }
        seen.push(*day);
    }
    errors
}

/// How far ahead (in days) windows are expanded.
const LOOK_AHEAD_DAYS: i64 = 8;

/// The concrete `[start, end)` intervals of `window` that start between two days before and
/// [`LOOK_AHEAD_DAYS`] after `now`'s local date. Invalid windows yield nothing.
fn intervals(window: &LoginWindow, now: Timestamp) -> Vec<(Timestamp, Timestamp)> {
    let (Ok(from), Ok(to), Ok(tz)) = (
        parse_hhmm(&window.from),
        parse_hhmm(&window.to),
        TimeZone::get(&window.time_zone),
    ) else {
        return Vec::new();
    };
    let today = tz.to_datetime(now).date();
    let crosses_midnight = to <= from;
    let at = |date: Date, (h, m): (i8, i8)| {
        date.at(h, m, 0, 0)
            .to_zoned(tz.clone())
            .ok()
            .map(|z| z.timestamp())
    };
    let mut out = Vec::new();
    for offset in -2..=LOOK_AHEAD_DAYS {
        let Ok(date) = today.checked_add(offset.days()) else {
            continue;
        };
        if !window.days.is_empty() && !window.days.iter().any(|d| d.weekday() == date.weekday()) {
            continue;
        }
        let end_date = if crosses_midnight {
            match date.tomorrow() {
                Ok(next) => next,
                Err(_) => continue,
            }
        } else {
            date
        };
        if let (Some(start), Some(end)) = (at(date, from), at(end_date, to))
            && start < end
        {
            out.push((start, end));
        }
    }
    out
}

/// Whether a login at `now` falls inside one of `windows` (none configured: always allowed).
pub fn window_state(windows: &[LoginWindow], now: Timestamp) -> WindowState {
    if windows.is_empty() {
        return WindowState::Allowed { until: None };
    }
    let mut spans: Vec<(Timestamp, Timestamp)> =
        windows.iter().flat_map(|w| intervals(w, now)).collect();
    spans.sort();
    // Merge touching and overlapping intervals into continuous spans.
    let mut merged: Vec<(Timestamp, Timestamp)> = Vec::new();
    for (start, end) in spans {
        match merged.last_mut() {
            Some(last) if start <= last.1 => last.1 = last.1.max(end),
            _ => merged.push((start, end)),
        }
    }
    if let Some(&(_, end)) = merged.iter().find(|(s, e)| *s <= now && now < *e) {
        return WindowState::Allowed { until: Some(end) };
    }
    WindowState::Refused {
        next_open: merged.iter().map(|(s, _)| *s).find(|s| *s > now),
    }
}

/// Password aging in `server.yaml`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PasswordsConfig {
    /// Password logins are refused (`PasswordExpired`) once `users[].passwordChangedAt` is
    /// more than this many days ago. Absent: passwords do not age. Key logins are unaffected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age_days: Option<u32>,
    /// For how long a password that verified is accepted again without a new argon2id
    /// verification (a keyed digest is kept in memory, never the password; a wrong password is
    /// always verified in full). 0: every login is verified. Absent: 300.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verified_cache_seconds: Option<u32>,
}

/// `passwords.verifiedCacheSeconds` when absent.
pub const DEFAULT_VERIFIED_CACHE_SECONDS: u32 = 300;
/// Longest `passwords.verifiedCacheSeconds`: a removed or disabled user is refused at once
/// whatever this is (those checks follow the password's), but a changed hash is the only thing
/// that ends an entry early.
pub const MAX_VERIFIED_CACHE_SECONDS: u32 = 86_400;

impl PasswordsConfig {
    pub fn is_default(&self) -> bool {
        self == &PasswordsConfig::default()
    }

    /// How long a verified password is remembered.
    pub fn verified_cache(&self) -> std::time::Duration {
        std::time::Duration::from_secs(u64::from(
            self.verified_cache_seconds
                .unwrap_or(DEFAULT_VERIFIED_CACHE_SECONDS),
        ))
    }
}

/// When a password changed at `changed_at` expires under `max_age_days` (exactly that many
/// 24-hour days later).
pub fn password_expiry(changed_at: Timestamp, max_age_days: u32) -> Option<Timestamp> {
    changed_at
        .checked_add((i64::from(max_age_days) * 24).hours())
        .ok()
}

/// Whether a password changed at `changed_at` (RFC 3339; `None`: unknown, never ages) has
/// expired at `now` under `passwords`.
pub fn password_expired(
    passwords: &PasswordsConfig,
    changed_at: Option<&str>,
    now: Timestamp,
) -> bool {
    let (Some(days), Some(changed)) = (
        passwords.max_age_days,
        changed_at.and_then(|t| t.parse::<Timestamp>().ok()),
    ) else {
        return false;
    };
    password_expiry(changed, days).is_some_and(|expiry| now >= expiry)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(days: &[Day], from: &str, to: &str, tz: &str) -> LoginWindow {
        LoginWindow {
            days: days.to_vec(),
            from: from.into(),
            to: to.into(),
            time_zone: tz.into(),
        }
    }

    fn ts(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    fn allowed_until(state: WindowState) -> Timestamp {
        match state {
            WindowState::Allowed { until: Some(t) } => t,
            other => panic!("expected allowed with an end, got {other:?}"),
        }
    }

    fn next_open(state: WindowState) -> Timestamp {
        match state {
            WindowState::Refused { next_open: Some(t) } => t,
            other => panic!("expected refused with a next opening, got {other:?}"),
        }
    }

    #[test]
    fn no_windows_always_allowed() {
        assert_eq!(
            window_state(&[], ts("2026-01-01T00:00:00Z")),
            WindowState::Allowed { until: None }
        );
    }

    #[test]
    fn office_hours_in_berlin() {
        let w = [window(
            &[Day::Mon, Day::Tue, Day::Wed, Day::Thu, Day::Fri],
            "08:00",
            "18:00",
            "Europe/Berlin",
        )];
        // Wednesday 2026-01-14 10:00 Berlin (UTC+1) = 09:00Z.
        assert_eq!(
            allowed_until(window_state(&w, ts("2026-01-14T09:00:00Z"))),
            ts("2026-01-14T17:00:00Z")
        );
        // The start instant is inside, the end instant outside.
        assert!(matches!(
            window_state(&w, ts("2026-01-14T07:00:00Z")),
            WindowState::Allowed { .. }
        ));
        assert_eq!(
            next_open(window_state(&w, ts("2026-01-14T17:00:00Z"))),
            ts("2026-01-15T07:00:00Z")
        );
        // Friday evening: next opening is Monday 08:00 Berlin.
        assert_eq!(
            next_open(window_state(&w, ts("2026-01-16T20:00:00Z"))),
            ts("2026-01-19T07:00:00Z")
        );
    }

    #[test]
    fn window_across_midnight_belongs_to_its_start_day() {
        let w = [window(&[Day::Fri], "22:00", "06:00", "UTC")];
        // Friday 2026-01-16 23:00 and Saturday 05:59 are inside; Saturday 22:30 is not.
        assert_eq!(
            allowed_until(window_state(&w, ts("2026-01-16T23:00:00Z"))),
            ts("2026-01-17T06:00:00Z")
        );
        assert!(matches!(
            window_state(&w, ts("2026-01-17T05:59:59Z")),
            WindowState::Allowed { .. }
        ));
        assert_eq!(
            next_open(window_state(&w, ts("2026-01-17T22:30:00Z"))),
            ts("2026-01-23T22:00:00Z")
        );
        // Friday 21:00: not yet.
        assert_eq!(
            next_open(window_state(&w, ts("2026-01-16T21:00:00Z"))),
            ts("2026-01-16T22:00:00Z")
        );
    }

    #[test]
    fn equal_from_and_to_is_a_whole_day_and_adjacent_days_merge() {
        let w = [window(&[Day::Mon, Day::Tue], "00:00", "00:00", "UTC")];
        // Monday 2026-01-12 12:00: one span Monday 00:00 to Wednesday 00:00.
        assert_eq!(
            allowed_until(window_state(&w, ts("2026-01-12T12:00:00Z"))),
            ts("2026-01-14T00:00:00Z")
        );
        // Two overlapping windows form one span.
        let w = [
            window(&[], "08:00", "12:00", "UTC"),
            window(&[], "11:00", "13:00", "UTC"),
        ];
        assert_eq!(
            allowed_until(window_state(&w, ts("2026-01-12T09:00:00Z"))),
            ts("2026-01-12T13:00:00Z")
        );
    }

    #[test]
    fn dst_spring_forward_and_fall_back() {
        // Berlin springs forward on 2026-03-29 at 02:00 (to 03:00): a window of 01:00-04:00 that
        // day lasts two real hours, 00:00Z to 02:00Z.
        let w = [window(&[Day::Sun], "01:00", "04:00", "Europe/Berlin")];
        assert_eq!(
            allowed_until(window_state(&w, ts("2026-03-29T00:30:00Z"))),
            ts("2026-03-29T02:00:00Z")
        );
        // A start inside the gap (02:30 does not exist) moves forward by the gap: 03:30 CEST.
        let w = [window(&[Day::Sun], "02:30", "05:00", "Europe/Berlin")];
        assert_eq!(
            next_open(window_state(&w, ts("2026-03-29T00:00:00Z"))),
            ts("2026-03-29T01:30:00Z")
        );
        // Fall back on 2026-10-25 at 03:00 (to 02:00): 01:00-04:00 lasts four real hours.
        let w = [window(&[Day::Sun], "01:00", "04:00", "Europe/Berlin")];
        assert_eq!(
            next_open(window_state(&w, ts("2026-10-24T22:00:00Z"))),
            ts("2026-10-24T23:00:00Z")
        );
        assert_eq!(
            allowed_until(window_state(&w, ts("2026-10-25T00:00:00Z"))),
            ts("2026-10-25T03:00:00Z")
        );
        // Office hours keep their wall-clock meaning on both sides of the change.
        let w = [window(&[], "08:00", "18:00", "America/New_York")];
        assert_eq!(
            allowed_until(window_state(&w, ts("2026-03-06T14:00:00Z"))),
            ts("2026-03-06T23:00:00Z")
        );
        assert_eq!(
            allowed_until(window_state(&w, ts("2026-03-09T14:00:00Z"))),
            ts("2026-03-09T22:00:00Z")
        );
    }

    #[test]
    fn validation_names_fields() {
        let bad = window(&[Day::Mon, Day::Mon], "8:00", "24:00", "Mars/Olympus");
        let fields: Vec<&str> = validate_window(&bad).iter().map(|(f, _)| *f).collect();
        assert_eq!(fields, ["from", "to", "timeZone", "days"]);
        assert!(validate_window(&window(&[], "00:00", "23:59", "Asia/Kolkata")).is_empty());
        for bad in ["08:0", "0800", "08:60", "ab:cd", "-1:00", "08:00:00"] {
            assert!(parse_hhmm(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn passwords_age_from_their_change() {
        let aging = PasswordsConfig {
            max_age_days: Some(90),
            ..PasswordsConfig::default()
        };
        let changed = Some("2026-01-01T00:00:00Z");
        assert!(!password_expired(
            &aging,
            changed,
            ts("2026-03-31T23:59:59Z")
        ));
        assert!(password_expired(
            &aging,
            changed,
            ts("2026-04-01T00:00:00Z")
        ));
        assert!(!password_expired(&aging, None, ts("2099-01-01T00:00:00Z")));
        assert!(!password_expired(
            &PasswordsConfig::default(),
            changed,
            ts("2099-01-01T00:00:00Z")
        ));
    }
}
