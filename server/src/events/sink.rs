//! What every sink shares, whatever it talks to: the order of delivery, filters, retries with
//! backoff, dead letters, the cursor and the health the operator and alerts read.
//!
//! A sink walks the outbox in order and acknowledges an event only once its transport said
//! the event is stored on the other side (a webhook's 2xx, a JetStream publish ack), it was
//! filtered out, or it was dead-lettered. Keeping this loop in one place means a new transport
//! is one `send` function, and both kinds keep exactly the same guarantees (docs/events.md).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rand::Rng;

use super::nats::Nats;
use super::outbox::{Entry, Outbox, write_cursor};
use super::webhook::Webhook;
use crate::metrics::Metrics;

/// The cursor file is rewritten at most this often while events flow (and when idle).
const CURSOR_FLUSH: Duration = Duration::from_millis(200);

/// Which events a sink wants: by type and by stored-path prefix (empty lists mean all).
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub types: Vec<String>,
    pub path_prefixes: Vec<String>,
}

impl Filter {
    pub fn wants(&self, kind: &str, stored_path: &str) -> bool {
        (self.types.is_empty() || self.types.iter().any(|t| t == kind))
            && (self.path_prefixes.is_empty()
                || self
                    .path_prefixes
                    .iter()
                    .any(|p| stored_path.starts_with(p.as_str())))
    }
}

/// How hard a sink tries one event.
#[derive(Debug, Clone, Copy)]
pub struct Retry {
    pub max_attempts: u32,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    /// Limit on one attempt.
    pub timeout: Duration,
}

/// The delay before attempt `attempt + 1`: doubling from `initial`, capped, with jitter in
/// [delay/2, delay] so that many servers retrying one receiver spread out.
pub fn backoff(attempt: u32, initial: Duration, max: Duration) -> Duration {
    let factor = 1u64 << attempt.saturating_sub(1).min(30);
    let delay = initial
        .saturating_mul(u32::try_from(factor).unwrap_or(u32::MAX))
        .min(max);
    let half = delay / 2;
    half + delay
        .saturating_sub(half)
        .mul_f64(rand::thread_rng().r#gen::<f64>())
}

/// Since when a sink has been failing (unix milliseconds; 0 while it delivers). Shared with
/// the health endpoint, which reports it per sink.
#[derive(Debug, Default)]
pub struct Health {
    failing_since_ms: AtomicU64,
}

impl Health {
    fn now_ms() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    }

    fn failed(&self) {
        let _ = self.failing_since_ms.compare_exchange(
            0,
            Self::now_ms().max(1),
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
    }

    fn delivered(&self) {
        self.failing_since_ms.store(0, Ordering::Relaxed);
    }

    /// Seconds since the first failure of the current failing streak (0 while healthy).
    pub fn failing_seconds(&self) -> u64 {
        match self.failing_since_ms.load(Ordering::Relaxed) {
            0 => 0,
            since => Self::now_ms().saturating_sub(since) / 1000,
        }
    }
}

/// The thing at the other end (boxed: one of each per sink, and their sizes differ a lot).
pub enum Transport {
    Webhook(Box<Webhook>),
    Nats(Box<Nats>),
}

impl Transport {
    /// One attempt; `Ok` means the event is stored on the other side.
    async fn send(&mut self, entry: &Entry) -> Result<(), String> {
        match self {
            Transport::Webhook(hook) => hook.send(&entry.body).await.map_err(|e| e.to_string()),
            Transport::Nats(nats) => nats.send(entry).await.map_err(|e| e.to_string()),
        }
    }
}

pub struct Sink {
    pub name: String,
    pub filter: Filter,
    pub retry: Retry,
    pub transport: Transport,
    pub health: Arc<Health>,
}

impl Sink {
    /// Delivers from the outbox forever, in order, acknowledging each event once delivered,
    /// filtered out or dead-lettered.
    pub async fn run(mut self, outbox: Arc<Outbox>, index: usize) {
        let mut changes = outbox.subscribe();
        let mut cursor = outbox.cursor(index);
        let mut flushed = cursor;
        let mut flushed_at = Instant::now();
        loop {
            let Some(entry) = outbox.next_after(cursor) else {
                if flushed != cursor {
                    flushed = self.flush(&outbox, cursor).await;
                    flushed_at = Instant::now();
                }
                let _ = tokio::time::timeout(CURSOR_FLUSH, changes.changed()).await;
                continue;
            };
            if self.filter.wants(&entry.kind, &entry.stored_path) {
                self.deliver(&outbox, &entry).await;
            }
            cursor = entry.seq;
            outbox.ack(index, cursor);
            if flushed_at.elapsed() >= CURSOR_FLUSH {
                flushed = self.flush(&outbox, cursor).await;
                flushed_at = Instant::now();
            }
        }
    }

    async fn flush(&self, outbox: &Outbox, cursor: u64) -> u64 {
        let dir = outbox.dir().to_path_buf();
        let name = self.name.clone();
        match tokio::task::spawn_blocking(move || write_cursor(&dir, &name, cursor)).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                tracing::warn!(sink = %self.name, %error, "events: cannot write the sink's cursor (events may be delivered again after a restart)");
            }
            Err(error) => tracing::warn!(sink = %self.name, %error, "events: cursor writer failed"),
        }
        cursor
    }

    async fn deliver(&mut self, outbox: &Outbox, entry: &Entry) {
        let metrics = &outbox.metrics().deliveries;
        let retry = self.retry;
        for attempt in 1..=retry.max_attempts {
            let result = match tokio::time::timeout(retry.timeout, self.transport.send(entry)).await
            {
                Ok(result) => result,
                Err(_) => Err("timed out".to_string()),
            };
            match result {
                Ok(()) => {
                    Metrics::inc(metrics, &[("sink", &self.name), ("result", "ok")]);
                    self.health.delivered();
                    return;
                }
                Err(error) => {
                    Metrics::inc(metrics, &[("sink", &self.name), ("result", "failed")]);
                    self.health.failed();
                    tracing::warn!(sink = %self.name, seq = entry.seq, attempt, %error, "events: delivery failed");
                    if attempt < retry.max_attempts {
                        tokio::time::sleep(backoff(
                            attempt,
                            retry.initial_backoff,
                            retry.max_backoff,
                        ))
                        .await;
                    }
                }
            }
        }
        Metrics::inc(metrics, &[("sink", &self.name), ("result", "dead_letter")]);
        tracing::error!(
            sink = %self.name,
            seq = entry.seq,
            attempts = retry.max_attempts,
            event = %String::from_utf8_lossy(&entry.body),
            "events: DEAD LETTER: giving up on an event after maxAttempts"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_by_type_and_stored_path_prefix() {
        let all = Filter::default();
        assert!(all.wants("dev.sluice.file.deleted", "/x"));
        let filter = Filter {
            types: vec!["dev.sluice.file.uploaded".into()],
            path_prefixes: vec!["/partner-a/in/".into(), "/b/".into()],
        };
        assert!(filter.wants("dev.sluice.file.uploaded", "/partner-a/in/x.csv"));
        assert!(filter.wants("dev.sluice.file.uploaded", "/b/y"));
        assert!(!filter.wants("dev.sluice.file.uploaded", "/partner-a/out/x.csv"));
        assert!(!filter.wants("dev.sluice.file.deleted", "/b/y"));
    }

    #[test]
    fn backoff_doubles_is_capped_and_jittered_within_half() {
        let initial = Duration::from_millis(100);
        let max = Duration::from_secs(1);
        for _ in 0..50 {
            let first = backoff(1, initial, max);
            assert!(
                first >= Duration::from_millis(50) && first <= initial,
                "{first:?}"
            );
            let third = backoff(3, initial, max);
            assert!(third >= Duration::from_millis(200) && third <= Duration::from_millis(400));
            let late = backoff(40, initial, max);
            assert!(late >= max / 2 && late <= max, "{late:?}");
        }
    }

    #[test]
    fn health_counts_from_the_first_failure_and_resets_on_delivery() {
        let health = Health::default();
        assert_eq!(health.failing_seconds(), 0);
        health.failed();
        let since = health.failing_since_ms.load(Ordering::Relaxed);
        assert!(since > 0);
        health.failed();
        assert_eq!(
            health.failing_since_ms.load(Ordering::Relaxed),
            since,
            "a streak starts once"
        );
        health.delivered();
        assert_eq!(health.failing_seconds(), 0);
    }
}
