//! Hot reload: polls `server.yaml`, `users.yaml` and the TLS files, and swaps in a new snapshot
//! when their contents change and are valid. An invalid change is logged and audited once and
//! the previous snapshot keeps serving.
//!
//! Polling contents (not inotify) is deliberate: Kubernetes updates Secret and ConfigMap volumes
//! by swapping a `..data` symlink, which inotify watches on the file paths miss, and a content
//! digest also ignores touches that change nothing.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::sync::watch;

use crate::audit::Audit;
use crate::metrics::Metrics;
use crate::snapshot::{self, Snapshot};

pub async fn watch_files(
    config_path: PathBuf,
    sender: watch::Sender<Arc<Snapshot>>,
    audit: Audit,
    metrics: Arc<Metrics>,
) {
    let mut last_seen = sender.borrow().digest;
    loop {
        let interval = sender.borrow().config.reload.interval_ms;
        tokio::time::sleep(Duration::from_millis(interval)).await;
        let path = config_path.clone();
        let Ok((digest, result)) = tokio::task::spawn_blocking(move || snapshot::load(&path)).await
        else {
            continue;
        };
        if digest == last_seen {
            continue;
        }
        last_seen = digest;
        match result {
            Ok(new) => {
                let old = sender.borrow().clone();
                if old.config.listeners != new.config.listeners {
                    tracing::warn!("listener addresses changed; they take effect after a restart");
                }
                let users = new.users.len();
                metrics
                    .sessions_max
                    .set(i64::from(new.config.limits.max_sessions));
                sender.send_replace(Arc::new(new));
                Metrics::inc(&metrics.reloads, &[("result", "applied")]);
                tracing::info!(users, "configuration reloaded");
                audit.server_event(
                    "config_reload",
                    json!({"result": "applied", "users": users}),
                );
            }
            Err(error) => {
                Metrics::inc(&metrics.reloads, &[("result", "rejected")]);
                tracing::error!(%error, "configuration change rejected; the previous configuration keeps serving");
                audit.server_event(
                    "config_reload",
                    json!({"result": "rejected", "error": error.to_string()}),
                );
            }
        }
    }
}
