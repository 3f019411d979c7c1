//! File events: what the systems behind a drop folder need to know, without polling it.
//!
//! A completed upload, download, delete, rename, mkdir, rmdir or refused upload becomes a
//! CloudEvents 1.0 event (structured JSON, docs/events.md). Protocol code calls [`Events::emit`]
//! once at each completion point, *after* the operation succeeded (for an upload: after the
//! file was published under its final name), and awaits it: the call returns once the event
//! is fsync'd in the [`outbox`], so a client that saw its upload complete can rely on the
//! event surviving a kill -9. Sinks ([`webhook`], [`nats`], sharing [`sink`]) deliver from the
//! outbox at least once and acknowledge; duplicates carry the same `id`.
//!
//! Events are separate from the audit log on purpose: the audit log is a record for humans
//! and auditors and may lose lines on a crash; events drive other systems and may not.

pub mod nats;
pub mod outbox;
pub mod sink;
pub mod webhook;

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde_json::json;

use crate::audit::SessionTag;
use crate::vpath::VirtualPath;

pub use outbox::Outbox;

#[derive(Debug, thiserror::Error)]
pub enum EventsError {
    #[error("events.outboxDir: cannot use {path}: {source}")]
    OutboxDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("events.outboxDir: cannot read {path}: {source}")]
    Segment {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("events.webhooks[{index}].caFile: {message}")]
    CaFile { index: usize, message: String },
    #[error("events.webhooks[{index}].secretFile: cannot read {path}: {source}")]
    SecretFile {
        index: usize,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("events.webhooks[{index}].url: {message}")]
    Url { index: usize, message: String },
    #[error("events.nats[{index}].caFile: {message}")]
    NatsCaFile { index: usize, message: String },
    #[error("events.nats[{index}].credentialsDir: {message}")]
    NatsCredentials { index: usize, message: String },
    #[error("events.nats[{index}].url: {message}")]
    NatsUrl { index: usize, message: String },
    #[error("events: the outbox writer stopped")]
    WriterStopped,
    #[error("events: cannot write the outbox: {0}")]
    Write(String),
}

/// What happened; the CloudEvents `type` is [`Kind::type_name`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Uploaded,
    Downloaded,
    Deleted,
    Renamed,
    DirCreated,
    DirRemoved,
    UploadRefused,
    /// Deleted by a retention rule (`data.reason`: `max_age` or `after_download`).
    Expired,
}

impl Kind {
    pub fn type_name(self) -> &'static str {
        match self {
            Kind::Uploaded => "dev.sluice.file.uploaded",
            Kind::Downloaded => "dev.sluice.file.downloaded",
            Kind::Deleted => "dev.sluice.file.deleted",
            Kind::Renamed => "dev.sluice.file.renamed",
            Kind::DirCreated => "dev.sluice.dir.created",
            Kind::DirRemoved => "dev.sluice.dir.removed",
            Kind::UploadRefused => "dev.sluice.upload.refused",
            Kind::Expired => "dev.sluice.file.expired",
        }
    }
}

/// What an event says beyond who and where; every field is optional.
#[derive(Debug, Default, Clone, Copy)]
pub struct Detail<'a> {
    pub size: Option<u64>,
    pub sha256: Option<&'a str>,
    /// The target of a rename.
    pub to: Option<&'a VirtualPath>,
    /// Why an upload was refused.
    pub reason: Option<&'a str>,
    /// The malware signature clamd found (a refused upload with reason `infected`).
    pub signature: Option<&'a str>,
}

impl<'a> Detail<'a> {
    pub fn upload(size: u64, sha256: &'a str) -> Self {
        Detail {
            size: Some(size),
            sha256: Some(sha256),
            ..Detail::default()
        }
    }
    pub fn size(size: u64) -> Self {
        Detail {
            size: Some(size),
            ..Detail::default()
        }
    }
    pub fn renamed(to: &'a VirtualPath) -> Self {
        Detail {
            to: Some(to),
            ..Detail::default()
        }
    }
    pub fn refused(reason: &'a str) -> Self {
        Detail {
            reason: Some(reason),
            ..Detail::default()
        }
    }
}

/// Event metrics, registered with the server's others.
#[derive(Default)]
pub struct EventMetrics {
    pub outbox_events: Gauge,
    pub outbox_bytes: Gauge,
    pub oldest_undelivered_seconds: Gauge,
    pub deliveries: Family<Vec<(&'static str, String)>, Counter>,
    pub dropped: Family<Vec<(&'static str, String)>, Counter>,
    pub uploads_refused: Counter,
    /// Per sink: seconds since its current streak of failed attempts began (0 while healthy).
    pub sink_failing_seconds: Family<Vec<(&'static str, String)>, Gauge>,
}

impl EventMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "events_outbox_events",
            "Events in the outbox not yet delivered to every sink",
            self.outbox_events.clone(),
        );
        registry.register(
            "events_outbox_bytes",
            "Bytes of events in the outbox not yet delivered to every sink",
            self.outbox_bytes.clone(),
        );
        registry.register(
            "events_oldest_undelivered_seconds",
            "Age of the oldest event not yet delivered to every sink",
            self.oldest_undelivered_seconds.clone(),
        );
        registry.register(
            "events_deliveries",
            "Delivery attempts by sink and result (ok, failed, dead_letter)",
            self.deliveries.clone(),
        );
        registry.register(
            "events_dropped",
            "Events not written to the outbox, by reason (full, io)",
            self.dropped.clone(),
        );
        registry.register(
            "events_sink_failing_seconds",
            "Seconds since the sink's current streak of failed delivery attempts began (0 while it delivers)",
            self.sink_failing_seconds.clone(),
        );
        registry.register(
            "events_uploads_refused",
            "Uploads refused because the event outbox was full",
            self.uploads_refused.clone(),
        );
    }
}

/// The process's event emitter: disabled until [`Events::install`] (no `events` section).
#[derive(Clone, Default)]
pub struct Events(Arc<OnceLock<Arc<Outbox>>>);

impl Events {
    pub fn install(&self, outbox: Arc<Outbox>) {
        let _ = self.0.set(outbox);
    }

    /// Why a new upload must be refused now (the outbox is full), if it must.
    pub fn upload_refusal(&self) -> Option<&'static str> {
        let outbox = self.0.get()?;
        outbox.is_full().then(|| {
            outbox.metrics().uploads_refused.inc();
            "event outbox full, try again later"
        })
    }

    /// Records one event durably; returns once it is fsync'd (or counted as dropped). `home`
    /// is the user's home relative to dataRoot, to name the path as stored.
    pub async fn emit(
        &self,
        kind: Kind,
        tag: &SessionTag,
        home: &str,
        path: &VirtualPath,
        detail: Detail<'_>,
    ) {
        let Some(outbox) = self.0.get() else {
            return;
        };
        let event = cloud_event(outbox.source(), &new_id(), kind, tag, home, path, detail);
        outbox.append(kind, event).await;
    }
}

/// A random UUID (version 4): unique across restarts and replicas without coordination.
pub fn new_id() -> String {
    let version = (rand::random::<u128>() & !(0xf000_u128 << 64)) | (0x4000_u128 << 64);
    let bits = (version & !(0xc_u128 << 60)) | (0x8_u128 << 60);
    let hex = format!("{bits:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

/// `path` as stored: beneath dataRoot, with a leading `/` (`/partner-a/inbound/x.csv`).
pub fn stored_path(home: &str, path: &VirtualPath) -> String {
    let home = home.trim_matches('/');
    let relative = path.relative();
    match (home.is_empty(), relative.as_str()) {
        (true, ".") => "/".to_string(),
        (true, rel) => format!("/{rel}"),
        (false, ".") => format!("/{home}"),
        (false, rel) => format!("/{home}/{rel}"),
    }
}

/// The CloudEvents 1.0 structured-mode JSON of one event (pure: id and source are given).
pub fn cloud_event(
    source: &str,
    id: &str,
    kind: Kind,
    tag: &SessionTag,
    home: &str,
    path: &VirtualPath,
    detail: Detail<'_>,
) -> serde_json::Value {
    let mut data = json!({
        "user": tag.user,
        "protocol": tag.protocol,
        "path": path.to_string(),
        "storedPath": stored_path(home, path),
        "session": tag.session,
        "clientAddress": tag.ip,
    });
    if let Some(size) = detail.size {
        data["size"] = size.into();
    }
    if let Some(sha) = detail.sha256 {
        data["sha256"] = sha.into();
    }
    if let Some(to) = detail.to {
        data["to"] = to.to_string().into();
        data["toStoredPath"] = stored_path(home, to).into();
    }
    if let Some(reason) = detail.reason {
        data["reason"] = reason.into();
    }
    if let Some(signature) = detail.signature {
        data["signature"] = signature.into();
    }
    json!({
        "specversion": "1.0",
        "type": kind.type_name(),
        "source": source,
        "id": id,
        "time": jiff::Timestamp::now().to_string(),
        "subject": path.to_string(),
        "datacontenttype": "application/json",
        "data": data,
    })
}

/// Opens the outbox (replaying what an earlier run left), starts the sinks, and returns the
/// outbox to [`Events::install`].
pub async fn start(
    config: &sluice_config::EventsConfig,
    config_path: &Path,
    metrics: Arc<crate::metrics::Metrics>,
) -> Result<Arc<Outbox>, EventsError> {
    let dir = crate::snapshot::resolve_relative(config_path, &config.outbox_dir);
    let mut sinks = Vec::new();
    for (index, hook) in config.webhooks.iter().enumerate() {
        let (hook_sink, filter, retry) = webhook::Webhook::new(index, hook, config_path)?;
        sinks.push(sink::Sink {
            name: hook.name.clone(),
            filter,
            retry,
            transport: sink::Transport::Webhook(Box::new(hook_sink)),
            health: Arc::default(),
        });
    }
    for (index, nats) in config.nats.iter().enumerate() {
        let (nats_sink, filter, retry) = nats::Nats::new(index, nats, config_path)?;
        sinks.push(sink::Sink {
            name: nats.name.clone(),
            filter,
            retry,
            transport: sink::Transport::Nats(Box::new(nats_sink)),
            health: Arc::default(),
        });
    }
    let names: Vec<String> = sinks.iter().map(|s| s.name.clone()).collect();
    let health: Vec<(String, Arc<sink::Health>)> = sinks
        .iter()
        .map(|s| (s.name.clone(), s.health.clone()))
        .collect();
    let source = format!("/sluice/{}", crate::context::host_name());
    let max = config.max_outbox_bytes;
    let outbox =
        tokio::task::spawn_blocking(move || Outbox::open(dir, max, names, source, metrics))
            .await
            .map_err(|e| EventsError::Write(e.to_string()))??;
    for (index, sink) in sinks.into_iter().enumerate() {
        tokio::spawn(sink.run(outbox.clone(), index));
    }
    tokio::spawn(watch(outbox.clone(), health));
    Ok(outbox)
}

/// Keeps the age and sink-health gauges current while nothing is written or acknowledged.
async fn watch(outbox: Arc<Outbox>, health: Vec<(String, Arc<sink::Health>)>) {
    loop {
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        outbox.publish_depth();
        for (name, health) in &health {
            outbox
                .metrics()
                .sink_failing_seconds
                .get_or_create(&vec![("sink", name.clone())])
                .set(health.failing_seconds() as i64);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tag() -> SessionTag {
        SessionTag {
            session: "0badf00d-7".into(),
            protocol: "sftp",
            ip: "192.0.2.7".into(),
            user: Some("alice".into()),
        }
    }

    #[test]
    fn an_upload_event_is_a_cloud_event_with_both_paths_and_the_digest() {
        let path = VirtualPath::root().resolve("/inbound/a.csv").unwrap();
        let event = cloud_event(
            "/sluice/pod-0",
            "id-1",
            Kind::Uploaded,
            &tag(),
            "partners/alice",
            &path,
            Detail::upload(12, "ab12"),
        );
        assert_eq!(event["specversion"], "1.0");
        assert_eq!(event["type"], "dev.sluice.file.uploaded");
        assert_eq!(event["source"], "/sluice/pod-0");
        assert_eq!(event["id"], "id-1");
        assert!(event["time"].as_str().unwrap().ends_with('Z'));
        let data = &event["data"];
        assert_eq!(data["path"], "/inbound/a.csv");
        assert_eq!(data["storedPath"], "/partners/alice/inbound/a.csv");
        assert_eq!(data["size"], 12);
        assert_eq!(data["sha256"], "ab12");
        assert_eq!(data["user"], "alice");
        assert_eq!(data["session"], "0badf00d-7");
        assert_eq!(data["clientAddress"], "192.0.2.7");
        assert!(data.get("to").is_none());
    }

    #[test]
    fn a_rename_names_its_target() {
        let from = VirtualPath::root().resolve("/a").unwrap();
        let to = VirtualPath::root().resolve("/b/c").unwrap();
        let event = cloud_event(
            "s",
            "i",
            Kind::Renamed,
            &tag(),
            "h",
            &from,
            Detail::renamed(&to),
        );
        assert_eq!(event["data"]["to"], "/b/c");
        assert_eq!(event["data"]["toStoredPath"], "/h/b/c");
    }

    #[test]
    fn ids_are_version_4_uuids_and_differ() {
        let a = new_id();
        let b = new_id();
        assert_ne!(a, b);
        assert_eq!(a.len(), 36);
        assert_eq!(&a[14..15], "4");
        assert!(matches!(&a[19..20], "8" | "9" | "a" | "b"), "{a}");
    }

    #[test]
    fn every_kind_is_a_type_the_config_accepts() {
        for kind in [
            Kind::Uploaded,
            Kind::Downloaded,
            Kind::Deleted,
            Kind::Renamed,
            Kind::DirCreated,
            Kind::DirRemoved,
            Kind::UploadRefused,
            Kind::Expired,
        ] {
            assert!(sluice_config::EVENT_TYPES.contains(&kind.type_name()));
        }
    }
}
