//! The backoff of the controllers' watches after an API error (e.g. the API server restarting).
//!
//! kube-runtime merges a controller's watches (its kind, `owns`, `watches`) into one stream and
//! pauses the whole stream for one backoff step after an error of any of them. After an API
//! server outage every watch fails once more with `410 Gone` (its resource version expired) when
//! it comes back, one after another; with the default backoff (up to 30 s, reset only after 120
//! s without errors) a controller with six watches took minutes to resume reconciling. This
//! backoff is capped at [`MAX_DELAY`] and resets after [`RESET_AFTER`] without errors.
//!
//! Written here because kube-runtime's configurable `ExponentialBackoff` can only be built from
//! a `backon` builder (another dependency for ten lines); its `Backoff` trait and
//! `ResetTimerBackoff` are used as they are.

use std::time::Duration;

use kube::runtime::utils::{Backoff, ResetTimerBackoff};

/// First delay after an error.
pub const MIN_DELAY: Duration = Duration::from_millis(500);
/// Longest delay between retries (an outage costs at most this much after the API is back,
/// per failing watch).
pub const MAX_DELAY: Duration = Duration::from_secs(4);
/// The delay starts from [`MIN_DELAY`] again after this long without errors.
pub const RESET_AFTER: Duration = Duration::from_secs(30);

/// Doubling delays from [`MIN_DELAY`] to [`MAX_DELAY`].
#[derive(Debug, Clone, Default)]
pub struct Capped {
    next: Option<Duration>,
}

impl Iterator for Capped {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let delay = self.next.unwrap_or(MIN_DELAY);
        self.next = Some((delay * 2).min(MAX_DELAY));
        Some(delay)
    }
}

impl Backoff for Capped {
    fn reset(&mut self) {
        self.next = None;
    }
}

/// The watch backoff of both controllers.
pub fn watches() -> ResetTimerBackoff<Capped> {
    ResetTimerBackoff::new(Capped::default(), RESET_AFTER)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_the_cap_and_reset() {
        let mut backoff = Capped::default();
        let delays: Vec<u64> = backoff
            .by_ref()
            .take(6)
            .map(|d| d.as_millis() as u64)
            .collect();
        assert_eq!(delays, [500, 1000, 2000, 4000, 4000, 4000]);
        backoff.reset();
        assert_eq!(backoff.next(), Some(MIN_DELAY));
    }
}
