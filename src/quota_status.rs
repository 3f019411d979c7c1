//! Quota usage in the TransferUser status, and a Warning Event at the threshold.
//!
//! The servers enforce quotas and know the usage; the operator only reports it. Every
//! [`PERIOD`] it reads `/metrics` on the health port of each ready pod of a FileTransferServer
//! that has users with `spec.quota`, takes for each user the largest usage any pod reports
//! (a replica knows only the homes its own sessions used, and each one's number is the disk
//! scan plus its own deltas, so the largest is the most conservative), writes it to
//! `status.quota` when it changed, and records a `QuotaThreshold` Warning Event when the usage
//! crosses `spec.quota.warnAtPercent` upwards. Parsing, merging and the threshold decision are
//! pure; the loop is I/O at the edge. See docs/quotas-and-retention.md.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::EventType;
use kube::runtime::reflector::Store;
use kube::{Client, ResourceExt};
use serde_json::json;
use tracing::{debug, warn};

use crate::conditions::Reason;
use crate::controller::Context;
use crate::crd::{FileTransferServer, QuotaStatus, TransferUser};
use crate::lenient::Lenient;
use crate::render::{self, Names};

/// How often usage is collected.
pub const PERIOD: Duration = Duration::from_secs(30);
/// Longest `/metrics` answer read from a pod.
const MAX_RESPONSE_BYTES: usize = 8 * 1024 * 1024;
/// Deadline of one call to a pod.
const CALL_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Debug, thiserror::Error)]
pub enum QuotaStatusError {
    #[error("kubernetes api: {0}")]
    Kube(#[from] kube::Error),
    #[error("{0}")]
    Render(#[from] render::RenderError),
}

/// Usage of one user as one pod reports it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub bytes: i64,
    pub files: i64,
}

/// The `sluice_quota_used_bytes` and `sluice_quota_used_files` samples of a scrape, by user.
pub fn parse_metrics(text: &str) -> BTreeMap<String, Usage> {
    let mut usage: BTreeMap<String, Usage> = BTreeMap::new();
    for line in text.lines() {
        let (field, rest) = if let Some(rest) = line.strip_prefix("sluice_quota_used_bytes{") {
            (0, rest)
        } else if let Some(rest) = line.strip_prefix("sluice_quota_used_files{") {
            (1, rest)
        } else {
            continue;
        };
        let Some((labels, value)) = rest.split_once("} ") else {
            continue;
        };
        let Some(user) = labels
            .split(',')
            .find_map(|pair| pair.strip_prefix("user=\""))
            .and_then(|v| v.strip_suffix('"'))
        else {
            continue;
        };
        let Ok(value) = value.trim().parse::<i64>() else {
            continue;
        };
        let entry = usage.entry(user.to_string()).or_default();
        if field == 0 {
            entry.bytes = value;
        } else {
            entry.files = value;
        }
    }
    usage
}

/// The largest usage per user over the pods' reports.
pub fn merge(reports: &[BTreeMap<String, Usage>]) -> BTreeMap<String, Usage> {
    let mut merged: BTreeMap<String, Usage> = BTreeMap::new();
    for report in reports {
        for (user, usage) in report {
            let entry = merged.entry(user.clone()).or_default();
            entry.bytes = entry.bytes.max(usage.bytes);
            entry.files = entry.files.max(usage.files);
        }
    }
    merged
}

/// The status of a user with `quota` (bytes as users.yaml has them) and `usage`.
pub fn status_for(quota: &sluice_config::Quota, usage: Usage) -> QuotaStatus {
    let percent = |used: i64, limit: Option<u64>| match limit {
        Some(limit) if limit > 0 => {
            (i128::from(used.max(0)) * 100 / i128::from(limit)).min(i128::from(i64::MAX)) as i64
        }
        _ => 0,
    };
    QuotaStatus {
        used_bytes: usage.bytes,
        used_files: usage.files,
        percent: percent(usage.bytes, quota.max_bytes.map(|b| b.0))
            .max(percent(usage.files, quota.max_files)),
    }
}

/// Whether going from `previous` to `now` crosses the threshold upwards (a Warning Event).
pub fn crossed(previous: Option<&QuotaStatus>, now: &QuotaStatus, warn_at_percent: u8) -> bool {
    let threshold = i64::from(warn_at_percent);
    now.percent >= threshold && previous.is_none_or(|p| p.percent < threshold)
}

/// The user's quota as users.yaml carries it (`None` when the spec has none or it is invalid:
/// the user controller reports that).
fn quota_of(user: &TransferUser) -> Option<sluice_config::Quota> {
    let spec = user.spec.quota.as_ref()?;
    Some(sluice_config::Quota {
        max_bytes: match &spec.max_bytes {
            Some(text) => Some(sluice_config::ByteSize(
                sluice_config::parse_byte_quantity(&text.0).ok()?,
            )),
            None => None,
        },
        max_files: spec.max_files.and_then(|f| u64::try_from(f).ok()),
        warn_at_percent: spec
            .warn_at_percent
            .and_then(|p| u8::try_from(p).ok())
            .unwrap_or(sluice_config::DEFAULT_QUOTA_WARN_PERCENT),
    })
}

/// A pod's `/metrics` on its health port (quota usage here; sink health in
/// [`crate::sink_health`]).
pub(crate) async fn scrape(address: &str) -> Result<String, String> {
    let exchange = async {
        let stream = tokio::net::TcpStream::connect(address)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(|e| format!("handshake: {e}"))?;
        tokio::spawn(connection);
        let request = hyper::Request::builder()
            .uri("/metrics")
            .header(hyper::header::HOST, address)
            .body(Empty::<Bytes>::new())
            .map_err(|e| format!("request: {e}"))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| format!("request: {e}"))?;
        if !response.status().is_success() {
            return Err(format!("status {}", response.status()));
        }
        let bytes = Limited::new(response.into_body(), MAX_RESPONSE_BYTES)
            .collect()
            .await
            .map_err(|e| format!("response: {e}"))?
            .to_bytes();
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    };
    tokio::time::timeout(CALL_TIMEOUT, exchange)
        .await
        .map_err(|_| format!("no answer within {CALL_TIMEOUT:?}"))?
}

async fn update_server(
    client: &Client,
    context: &Context,
    server: &FileTransferServer,
) -> Result<(), QuotaStatusError> {
    let names = Names::of(server)?;
    let users: Vec<Arc<Lenient<TransferUser>>> = context
        .users
        .state()
        .into_iter()
        .filter(|u| {
            u.namespace().as_deref() == Some(names.namespace.as_str())
                && u.parsed
                    .as_ref()
                    .is_ok_and(|u| u.spec.server_ref.name == names.server && u.spec.quota.is_some())
        })
        .collect();
    if users.is_empty() {
        return Ok(());
    }
    let mut reports = Vec::new();
    for (name, address) in
        crate::ban_sync::ready_endpoints(client, server, &names.namespace).await?
    {
        match scrape(&address).await {
            Ok(text) => reports.push(parse_metrics(&text)),
            Err(message) => debug!(pod = %name, %address, %message, "cannot read quota usage"),
        }
    }
    if reports.is_empty() {
        return Ok(());
    }
    let usage = merge(&reports);
    let api: Api<TransferUser> = Api::namespaced(client.clone(), &names.namespace);
    for user in users {
        let Ok(parsed) = user.parsed.as_ref() else {
            continue;
        };
        let Some(quota) = quota_of(parsed) else {
            continue;
        };
        // Only a user some pod knows about (it logged in since that pod started).
        let Some(seen) = usage.get(&parsed.spec.username) else {
            continue;
        };
        let status = status_for(&quota, *seen);
        let previous = parsed.status.as_ref().and_then(|s| s.quota.as_ref());
        if previous == Some(&status) {
            continue;
        }
        let name = parsed.name_any();
        api.patch_status(
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({ "status": { "quota": status } })),
        )
        .await?;
        if crossed(previous, &status, quota.warn_at_percent) {
            let note = format!(
                "quota {}% used ({} bytes, {} files); warnAtPercent is {}",
                status.percent, status.used_bytes, status.used_files, quota.warn_at_percent
            );
            crate::controller::events::publish(
                context,
                parsed,
                EventType::Warning,
                Reason::QuotaThreshold,
                &note,
            )
            .await;
        }
    }
    Ok(())
}

/// Reports quota usage of the users of every FileTransferServer in `servers`, forever.
pub async fn run(
    client: Client,
    servers: Store<Lenient<FileTransferServer>>,
    context: Arc<Context>,
) {
    let mut interval = tokio::time::interval(PERIOD);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        for server in servers
            .state()
            .iter()
            .filter_map(|s| s.parsed.as_ref().ok())
            .filter(|s| s.metadata.deletion_timestamp.is_none())
        {
            if let Err(error) = update_server(&client, &context, server).await {
                warn!(server = %server.name_any(), %error, "quota status round failed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCRAPE: &str = "# HELP sluice_quota_used_bytes Bytes\n# TYPE sluice_quota_used_bytes gauge\nsluice_quota_used_bytes{user=\"alice\"} 870400\nsluice_quota_used_bytes{user=\"bob\"} 10\nsluice_quota_used_files{user=\"alice\"} 3\nsluice_quota_max_bytes{user=\"alice\"} 1048576\nsluice_quota_used_bytes{user=\"broken\"} x\n";

    #[test]
    fn scrapes_parse_into_usage_by_user() {
        let usage = parse_metrics(SCRAPE);
        assert_eq!(
            usage["alice"],
            Usage {
                bytes: 870400,
                files: 3
            }
        );
        assert_eq!(
            usage["bob"],
            Usage {
                bytes: 10,
                files: 0
            }
        );
        assert!(!usage.contains_key("broken"));
    }

    #[test]
    fn the_largest_report_wins() {
        let a = parse_metrics(SCRAPE);
        let b = parse_metrics(
            "sluice_quota_used_bytes{user=\"alice\"} 5\nsluice_quota_used_files{user=\"alice\"} 9\n",
        );
        let merged = merge(&[a, b]);
        assert_eq!(
            merged["alice"],
            Usage {
                bytes: 870400,
                files: 9
            }
        );
    }

    #[test]
    fn percent_is_of_the_fuller_limit_and_the_event_fires_on_the_way_up_only() {
        let quota = sluice_config::Quota {
            max_bytes: Some(sluice_config::ByteSize(1 << 20)),
            max_files: Some(10),
            warn_at_percent: 80,
        };
        let low = status_for(
            &quota,
            Usage {
                bytes: 100,
                files: 1,
            },
        );
        assert_eq!(low.percent, 10);
        let high = status_for(
            &quota,
            Usage {
                bytes: 870400,
                files: 3,
            },
        );
        assert_eq!(high.percent, 83);
        let files = status_for(&quota, Usage { bytes: 0, files: 9 });
        assert_eq!(files.percent, 90);
        assert!(crossed(Some(&low), &high, 80));
        assert!(crossed(None, &high, 80));
        assert!(!crossed(Some(&files), &high, 80));
        assert!(!crossed(Some(&high), &low, 80));
    }
}
