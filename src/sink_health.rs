//! The `EventsDelivering` condition: whether every event sink of a FileTransferServer has been
//! delivering, as the pods themselves report it.
//!
//! Each pod knows how long each of its sinks has been failing
//! (`sluice_events_sink_failing_seconds{sink}` on its health port, the port the operator already
//! talks to for bans). The operator reads `/metrics` of every ready pod during a reconcile of a
//! server with `spec.events` (and requeues such servers at least every [`RECHECK`]), and the
//! condition turns False once one sink of one pod has failed for [`FAILING_AFTER`] (or
//! `spec.events.failingAfterSeconds`): a brief
//! blip (a receiver restarting) is what the outbox is for and is not worth a condition. No
//! pod answering means Unknown, not False: the pods' readiness is `EndpointsReady`'s business.
//! Parsing and the verdict are pure; only [`observe`] does I/O.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use kube::{Client, ResourceExt};

use crate::conditions::Reason;
use crate::crd::FileTransferServer;
use crate::render;

/// A sink failing at least this long makes the condition False (unless
/// `spec.events.failingAfterSeconds` says otherwise).
pub const FAILING_AFTER: Duration = Duration::from_secs(120);
/// Servers with sinks are reconciled at least this often (or at half their
/// `failingAfterSeconds`), so the condition follows.
pub const RECHECK: Duration = Duration::from_secs(60);

/// The spec's threshold, else [`FAILING_AFTER`].
pub fn failing_after(server: &FileTransferServer) -> Duration {
    server
        .spec
        .events
        .as_ref()
        .and_then(|e| e.failing_after_seconds)
        .and_then(|s| u64::try_from(s).ok())
        .map(Duration::from_secs)
        .unwrap_or(FAILING_AFTER)
}

/// How soon a server with sinks is reconciled again.
pub fn recheck(server: &FileTransferServer) -> Duration {
    RECHECK.min(failing_after(server) / 2)
}
/// The metric the pods publish.
const METRIC: &str = "sluice_events_sink_failing_seconds";

#[derive(Debug, thiserror::Error)]
pub enum SinkHealthError {
    #[error("pod {pod}: {message}")]
    Pod { pod: String, message: String },
}

/// What the pods said: per pod, sink → seconds failing, or why the pod did not answer.
pub type Observations = BTreeMap<String, Result<BTreeMap<String, u64>, SinkHealthError>>;

/// The condition's status, reason and message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// `Some(true)` delivering, `Some(false)` failing, `None` unknown.
    pub delivering: Option<bool>,
    pub reason: Reason,
    pub message: String,
}

/// `sink → seconds` from a Prometheus text exposition (pure).
pub fn parse_failing(text: &str) -> BTreeMap<String, u64> {
    text.lines()
        .filter_map(|line| {
            let rest = line.strip_prefix(METRIC)?.strip_prefix("{")?;
            let (labels, value) = rest.split_once("} ")?;
            let sink = labels
                .split(',')
                .find_map(|l| l.strip_prefix("sink=\""))?
                .strip_suffix('"')?;
            let seconds = value.split_whitespace().next()?.parse::<f64>().ok()?;
            Some((sink.to_string(), seconds.max(0.0) as u64))
        })
        .collect()
}

/// The verdict over every pod's report (pure).
pub fn verdict(observations: &Observations, failing_after: Duration) -> Verdict {
    let answered: Vec<(&String, &BTreeMap<String, u64>)> = observations
        .iter()
        .filter_map(|(pod, result)| result.as_ref().ok().map(|sinks| (pod, sinks)))
        .collect();
    if answered.is_empty() {
        let why: Vec<String> = observations
            .values()
            .filter_map(|r| r.as_ref().err().map(|e| e.to_string()))
            .collect();
        return Verdict {
            delivering: None,
            reason: Reason::SinkHealthUnknown,
            message: if why.is_empty() {
                "no ready pod to ask".to_string()
            } else {
                format!("no pod answered: {}", why.join("; "))
            },
        };
    }
    let failing: Vec<String> = answered
        .iter()
        .flat_map(|(pod, sinks)| {
            sinks
                .iter()
                .filter(|(_, seconds)| **seconds >= failing_after.as_secs())
                .map(move |(sink, seconds)| format!("{pod}: sink {sink} failing for {seconds}s"))
        })
        .collect();
    if failing.is_empty() {
        Verdict {
            delivering: Some(true),
            reason: Reason::SinksDelivering,
            message: format!(
                "no sink has been failing for {}s or more on {} pod(s)",
                failing_after.as_secs(),
                answered.len()
            ),
        }
    } else {
        Verdict {
            delivering: Some(false),
            reason: Reason::SinkFailing,
            message: format!(
                "{} (events wait in the outbox; see the pod's log and docs/events.md)",
                failing.join("; ")
            ),
        }
    }
}

/// Asks every ready pod of `server` for its sinks' health; `None` when it has no sinks.
pub async fn observe(server: &FileTransferServer, client: &Client) -> Option<Verdict> {
    server.spec.events.as_ref()?;
    let namespace = server.namespace().unwrap_or_default();
    let selector = render::selector_labels(server)
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",");
    let pods: Api<Pod> = Api::namespaced(client.clone(), &namespace);
    let listed = match pods.list(&ListParams::default().labels(&selector)).await {
        Ok(list) => list.items,
        Err(error) => {
            return Some(Verdict {
                delivering: None,
                reason: Reason::SinkHealthUnknown,
                message: format!("cannot list the pods: {error}"),
            });
        }
    };
    let calls =
        listed
            .iter()
            .filter_map(crate::ban_sync::endpoint)
            .map(|(pod, address)| async move {
                let answer = crate::quota_status::scrape(&address)
                    .await
                    .map(|text| parse_failing(&text))
                    .map_err(|message| SinkHealthError::Pod {
                        pod: pod.clone(),
                        message,
                    });
                (pod, answer)
            });
    let observations: Observations = futures::future::join_all(calls).await.into_iter().collect();
    Some(verdict(&observations, failing_after(server)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "# HELP sluice_events_sink_failing_seconds Seconds since ...\n\
# TYPE sluice_events_sink_failing_seconds gauge\n\
sluice_events_sink_failing_seconds{sink=\"ingest\"} 0\n\
sluice_events_sink_failing_seconds{sink=\"bus\"} 300\n\
sluice_events_outbox_events 4\n";

    #[test]
    fn the_gauge_is_read_per_sink() {
        let parsed = parse_failing(TEXT);
        assert_eq!(parsed.get("ingest"), Some(&0));
        assert_eq!(parsed.get("bus"), Some(&300));
        assert_eq!(parsed.len(), 2);
    }

    /// One pod's answer in a test: its sinks' seconds, or why it did not answer.
    type Answer<'a> = Result<&'a [(&'a str, u64)], &'a str>;

    fn observed(pods: &[(&str, Answer<'_>)]) -> Observations {
        pods.iter()
            .map(|(pod, result)| {
                let value = match result {
                    Ok(sinks) => Ok(sinks.iter().map(|(s, v)| (s.to_string(), *v)).collect()),
                    Err(message) => Err(SinkHealthError::Pod {
                        pod: pod.to_string(),
                        message: message.to_string(),
                    }),
                };
                (pod.to_string(), value)
            })
            .collect()
    }

    #[test]
    fn a_sink_failing_long_enough_on_any_pod_makes_it_false() {
        let after = Duration::from_secs(120);
        let healthy = verdict(
            &observed(&[("s-0", Ok(&[("bus", 0), ("hook", 119)]))]),
            after,
        );
        assert_eq!(healthy.delivering, Some(true));
        let failing = verdict(
            &observed(&[
                ("s-0", Ok(&[("bus", 0)])),
                ("s-1", Ok(&[("bus", 130)])),
                ("s-2", Err("connect: refused")),
            ]),
            after,
        );
        assert_eq!(failing.delivering, Some(false));
        assert_eq!(failing.reason, Reason::SinkFailing);
        assert!(
            failing.message.contains("s-1: sink bus failing for 130s"),
            "{}",
            failing.message
        );
    }

    #[test]
    fn no_answer_is_unknown() {
        let none = verdict(&observed(&[]), Duration::from_secs(1));
        assert_eq!(none.delivering, None);
        let refused = verdict(
            &observed(&[("s-0", Err("connect: refused"))]),
            Duration::from_secs(1),
        );
        assert_eq!(refused.delivering, None);
        assert!(refused.message.contains("s-0"), "{}", refused.message);
    }
}
