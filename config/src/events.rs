//! `events` in server.yaml: file events (CloudEvents) written to a durable outbox and delivered
//! to HTTPS webhooks and NATS JetStream. It lives in the contract crate because the operator renders it from
//! `spec.events`, and because every default and bound must be stated once for both sides.
//!
//! Absent means no events and no outbox. Changes need a restart (like `audit`): the outbox and
//! the sinks' cursors are opened once.

use serde::{Deserialize, Serialize};

use crate::FieldError;

/// Every event type the server emits; filters may only name these.
pub const EVENT_TYPES: &[&str] = &[
    "dev.sluice.file.uploaded",
    "dev.sluice.file.downloaded",
    "dev.sluice.file.deleted",
    "dev.sluice.file.renamed",
    "dev.sluice.dir.created",
    "dev.sluice.dir.removed",
    "dev.sluice.upload.refused",
    "dev.sluice.file.expired",
];

/// Smallest outbox we accept: a few thousand events.
pub const MIN_OUTBOX_BYTES: u64 = 1 << 20;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct EventsConfig {
    /// Directory of the outbox (segment files and the sinks' cursors), on the server's own
    /// volume but outside `dataRoot`, so that no user can read or fill it. Relative to
    /// server.yaml.
    pub outbox_dir: String,
    /// Bytes of undelivered events the outbox may hold; at this size new uploads are refused
    /// until sinks catch up (docs/events.md, "When the outbox is full").
    #[serde(default = "default_max_outbox_bytes")]
    pub max_outbox_bytes: u64,
    /// HTTPS webhooks that receive every event matching their filters.
    #[serde(default)]
    pub webhooks: Vec<WebhookConfig>,
    /// NATS JetStream subjects that receive every event matching their filters.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nats: Vec<NatsConfig>,
}

/// Names of the files a NATS sink's `credentialsDir` may hold: the keys of a Kubernetes
/// Secret mounted there. Exactly one kind must be present.
pub const NATS_CREDENTIAL_FILES: &[&str] = &["token", "username", "password", "nkey", "creds"];

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NatsConfig {
    /// Names the sink in metrics, logs and its cursor file: 1-63 of `a-z 0-9 -`, unique among
    /// all sinks (webhooks included).
    pub name: String,
    /// `nats://host:port` or `tls://host:port` (several separated by commas, one cluster).
    pub url: String,
    /// Subject every event is published to; a JetStream stream must capture it.
    pub subject: String,
    /// When set, a publish is accepted only by this stream (`Nats-Expected-Stream`): a subject
    /// captured by no stream or another one is an error, not a silent success.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<String>,
    /// PEM CA bundle the NATS server's certificate must chain to; set means TLS is required.
    /// Relative to server.yaml. Required for `tls://`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<String>,
    /// Directory holding the credentials as files (a mounted Secret): `token`, or `username`
    /// and `password`, or `nkey` (a seed), or `creds` (a .creds file). Absent: no credentials.
    /// Relative to server.yaml.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_dir: Option<String>,
    /// Event types to deliver (see [`EVENT_TYPES`]); empty means all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub types: Vec<String>,
    /// Deliver only events whose `data.storedPath` starts with one of these; empty means all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub path_prefixes: Vec<String>,
    /// Attempts per event before it is counted as dead-lettered and skipped.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// Delay before the first retry; doubles with each attempt, with jitter.
    #[serde(default = "default_initial_backoff_ms")]
    pub initial_backoff_ms: u64,
    /// Longest delay between two attempts.
    #[serde(default = "default_max_backoff_ms")]
    pub max_backoff_ms: u64,
    /// Limit on one attempt (publish and JetStream acknowledgement).
    #[serde(default = "default_timeout_seconds")]
    pub timeout_seconds: u64,
}

/// What every sink kind shares, for one validation.
struct Delivery<'a> {
    name: &'a str,
    types: &'a [String],
    path_prefixes: &'a [String],
    max_attempts: u32,
    initial_backoff_ms: u64,
    max_backoff_ms: u64,
    timeout_seconds: u64,
}

impl WebhookConfig {
    fn delivery(&self) -> Delivery<'_> {
        Delivery {
            name: &self.name,
            types: &self.types,
            path_prefixes: &self.path_prefixes,
            max_attempts: self.max_attempts,
            initial_backoff_ms: self.initial_backoff_ms,
            max_backoff_ms: self.max_backoff_ms,
            timeout_seconds: self.timeout_seconds,
        }
    }
}

impl NatsConfig {
    fn delivery(&self) -> Delivery<'_> {
        Delivery {
            name: &self.name,
            types: &self.types,
            path_prefixes: &self.path_prefixes,
            max_attempts: self.max_attempts,
            initial_backoff_ms: self.initial_backoff_ms,
            max_backoff_ms: self.max_backoff_ms,
            timeout_seconds: self.timeout_seconds,
        }
    }

    /// True when events travel in clear text (no `caFile`): an opt-in worth a warning.
    pub fn plaintext(&self) -> bool {
        self.ca_file.is_none()
    }
}

/// A NATS subject: dot-separated non-empty tokens of printable characters, no wildcards.
fn valid_subject(subject: &str) -> bool {
    !subject.is_empty()
        && subject.len() <= 255
        && subject.split('.').all(|token| {
            !token.is_empty()
                && token
                    .bytes()
                    .all(|b| b.is_ascii_graphic() && b != b'*' && b != b'>')
        })
}

/// A JetStream stream name: what the server accepts in its API subjects.
fn valid_stream(stream: &str) -> bool {
    !stream.is_empty()
        && stream.len() <= 255
        && stream
            .bytes()
            .all(|b| b.is_ascii_graphic() && !matches!(b, b'.' | b'*' | b'>' | b'/' | b'\\'))
}

/// `nats://host:port` or `tls://host:port`, comma-separated; what is wrong, if anything.
fn url_problem(url: &str, tls: bool) -> Option<String> {
    for part in url.split(',') {
        let part = part.trim();
        let rest = match (part.strip_prefix("nats://"), part.strip_prefix("tls://")) {
            (Some(rest), _) => rest,
            (None, Some(rest)) => {
                if !tls {
                    return Some(format!("{part:?} is tls:// but caFile is not set"));
                }
                rest
            }
            _ => {
                return Some(format!(
                    "{part:?} must be nats://host:port or tls://host:port"
                ));
            }
        };
        if rest.is_empty() || rest.starts_with(':') || rest.contains('/') {
            return Some(format!(
                "{part:?} must be nats://host:port or tls://host:port"
            ));
        }
    }
    None
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct WebhookConfig {
    /// Names the sink in metrics, logs and its cursor file: 1-63 of `a-z 0-9 -`.
    pub name: String,
    /// `https://host[:port]/path`; plain HTTP is not accepted.
    pub url: String,
    /// PEM CA bundle the receiver's certificate must chain to. Relative to server.yaml.
    pub ca_file: String,
    /// File holding the HMAC-SHA256 key (a mounted Secret); surrounding whitespace is ignored.
    /// Relative to server.yaml.
    pub secret_file: String,
    /// Event types to deliver (see [`EVENT_TYPES`]); empty means all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub types: Vec<String>,
    /// Deliver only events whose `data.storedPath` starts with one of these; empty means all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub path_prefixes: Vec<String>,
    /// Attempts per event before it is counted as dead-lettered and skipped.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// Delay before the first retry; doubles with each attempt, with jitter.
    #[serde(default = "default_initial_backoff_ms")]
    pub initial_backoff_ms: u64,
    /// Longest delay between two attempts.
    #[serde(default = "default_max_backoff_ms")]
    pub max_backoff_ms: u64,
    /// Limit on one attempt (connect, TLS, request and response).
    #[serde(default = "default_timeout_seconds")]
    pub timeout_seconds: u64,
}

/// Defaults of every sink (and the outbox), stated once for the server and the operator.
pub const DEFAULT_MAX_OUTBOX_BYTES: u64 = 64 << 20;
pub const DEFAULT_MAX_ATTEMPTS: u32 = 20;
pub const DEFAULT_INITIAL_BACKOFF_MS: u64 = 1000;
pub const DEFAULT_MAX_BACKOFF_MS: u64 = 300_000;
pub const DEFAULT_TIMEOUT_SECONDS: u64 = 10;

fn default_max_outbox_bytes() -> u64 {
    DEFAULT_MAX_OUTBOX_BYTES
}
fn default_max_attempts() -> u32 {
    DEFAULT_MAX_ATTEMPTS
}
fn default_initial_backoff_ms() -> u64 {
    DEFAULT_INITIAL_BACKOFF_MS
}
fn default_max_backoff_ms() -> u64 {
    DEFAULT_MAX_BACKOFF_MS
}
fn default_timeout_seconds() -> u64 {
    DEFAULT_TIMEOUT_SECONDS
}

impl EventsConfig {
    /// Every invalid value under `events`, each naming its field. `data_root` is compared
    /// lexically: the outbox must not be inside it.
    pub fn validate(&self, file: &str, data_root: &str, errors: &mut Vec<FieldError>) {
        let mut err = |field: String, message: String| {
            errors.push(FieldError::new(file, field, message));
        };
        let outbox = self.outbox_dir.trim().trim_end_matches('/');
        if outbox.is_empty() {
            err("events.outboxDir".into(), "must not be empty".into());
        } else {
            let root = data_root.trim().trim_end_matches('/');
            if !root.is_empty() && (outbox == root || outbox.starts_with(&format!("{root}/"))) {
                err(
                    "events.outboxDir".into(),
                    format!("must not be inside dataRoot ({root}): users could read or fill it"),
                );
            }
        }
        if self.max_outbox_bytes < MIN_OUTBOX_BYTES {
            err(
                "events.maxOutboxBytes".into(),
                format!(
                    "must be at least {MIN_OUTBOX_BYTES}, got {}",
                    self.max_outbox_bytes
                ),
            );
        }
        if self.webhooks.is_empty() && self.nats.is_empty() {
            err(
                "events.webhooks".into(),
                "must name at least one sink here or in events.nats (leave events out for no events)"
                    .into(),
            );
        }
        let names: Vec<&str> = self
            .webhooks
            .iter()
            .map(|h| h.name.as_str())
            .chain(self.nats.iter().map(|n| n.name.as_str()))
            .collect();
        for (index, hook) in self.webhooks.iter().enumerate() {
            let at = |name: &str| format!("events.webhooks[{index}].{name}");
            validate_delivery(
                &format!("events.webhooks[{index}]"),
                &hook.delivery(),
                &names[..index],
                &mut err,
            );
            match hook.url.strip_prefix("https://") {
                Some(rest) if !rest.is_empty() && !rest.starts_with('/') => {}
                _ => err(
                    at("url"),
                    format!("{:?} must be https://host[:port]/path", hook.url),
                ),
            }
            if hook.ca_file.trim().is_empty() {
                err(at("caFile"), "must not be empty".into());
            }
            if hook.secret_file.trim().is_empty() {
                err(at("secretFile"), "must not be empty".into());
            }
        }
        for (index, nats) in self.nats.iter().enumerate() {
            let at = |name: &str| format!("events.nats[{index}].{name}");
            validate_delivery(
                &format!("events.nats[{index}]"),
                &nats.delivery(),
                &names[..self.webhooks.len() + index],
                &mut err,
            );
            let tls = nats.ca_file.is_some();
            if let Some(problem) = url_problem(&nats.url, tls) {
                err(at("url"), problem);
            }
            if !valid_subject(&nats.subject) {
                err(
                    at("subject"),
                    format!(
                        "{:?} must be dot-separated tokens without spaces or wildcards",
                        nats.subject
                    ),
                );
            }
            if let Some(stream) = &nats.stream
                && !valid_stream(stream)
            {
                err(
                    at("stream"),
                    format!("{stream:?} is not a JetStream stream name"),
                );
            }
            if nats.ca_file.as_deref().is_some_and(|f| f.trim().is_empty()) {
                err(at("caFile"), "must not be empty when set".into());
            }
            if nats
                .credentials_dir
                .as_deref()
                .is_some_and(|f| f.trim().is_empty())
            {
                err(at("credentialsDir"), "must not be empty when set".into());
            }
        }
    }

    /// Sinks that send events without TLS, for the server's start-up warnings.
    pub fn insecure_opt_ins(&self) -> Vec<String> {
        self.nats
            .iter()
            .enumerate()
            .filter(|(_, n)| n.plaintext())
            .map(|(i, n)| {
                format!(
                    "events.nats[{i}] ({}) has no caFile: events are sent to NATS without TLS",
                    n.name
                )
            })
            .collect()
    }
}

/// Name, filters and retry bounds of one sink; `taken` are the names of the sinks before it.
fn validate_delivery(
    at: &str,
    sink: &Delivery<'_>,
    taken: &[&str],
    err: &mut impl FnMut(String, String),
) {
    let name_ok = !sink.name.is_empty()
        && sink.name.len() <= 63
        && sink
            .name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if !name_ok {
        err(
            format!("{at}.name"),
            format!("{:?} must be 1-63 of a-z 0-9 -", sink.name),
        );
    }
    if taken.contains(&sink.name) {
        err(
            format!("{at}.name"),
            format!(
                "{:?} is used twice (sink names are unique across kinds)",
                sink.name
            ),
        );
    }
    for (i, kind) in sink.types.iter().enumerate() {
        if !EVENT_TYPES.contains(&kind.as_str()) {
            err(
                format!("{at}.types[{i}]"),
                format!(
                    "unknown event type {kind:?}; known: {}",
                    EVENT_TYPES.join(", ")
                ),
            );
        }
    }
    for (i, prefix) in sink.path_prefixes.iter().enumerate() {
        if !prefix.starts_with('/') {
            err(
                format!("{at}.pathPrefixes[{i}]"),
                format!("{prefix:?} must start with /"),
            );
        }
    }
    if sink.max_attempts == 0 {
        err(format!("{at}.maxAttempts"), "must be at least 1".into());
    }
    if !(10..=3_600_000).contains(&sink.initial_backoff_ms) {
        err(
            format!("{at}.initialBackoffMs"),
            format!(
                "must be between 10 and 3600000, got {}",
                sink.initial_backoff_ms
            ),
        );
    }
    if sink.max_backoff_ms < sink.initial_backoff_ms || sink.max_backoff_ms > 86_400_000 {
        err(
            format!("{at}.maxBackoffMs"),
            "must be between initialBackoffMs and 86400000".into(),
        );
    }
    if !(1..=300).contains(&sink.timeout_seconds) {
        err(
            format!("{at}.timeoutSeconds"),
            format!("must be between 1 and 300, got {}", sink.timeout_seconds),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hook() -> WebhookConfig {
        WebhookConfig {
            name: "ingest".into(),
            url: "https://hooks.example:8443/in".into(),
            ca_file: "ca.crt".into(),
            secret_file: "secret".into(),
            types: vec![],
            path_prefixes: vec![],
            max_attempts: default_max_attempts(),
            initial_backoff_ms: default_initial_backoff_ms(),
            max_backoff_ms: default_max_backoff_ms(),
            timeout_seconds: default_timeout_seconds(),
        }
    }

    fn nats() -> NatsConfig {
        NatsConfig {
            name: "bus".into(),
            url: "nats://nats.example:4222".into(),
            subject: "sluice.events".into(),
            stream: None,
            ca_file: None,
            credentials_dir: None,
            types: vec![],
            path_prefixes: vec![],
            max_attempts: default_max_attempts(),
            initial_backoff_ms: default_initial_backoff_ms(),
            max_backoff_ms: default_max_backoff_ms(),
            timeout_seconds: default_timeout_seconds(),
        }
    }

    #[test]
    fn a_nats_sink_alone_is_enough_and_its_bad_fields_are_named() {
        let mut tls = nats();
        tls.name = "tls-bus".into();
        tls.url = "tls://a.example:4222,tls://b.example:4222".into();
        tls.ca_file = Some("ca.crt".into());
        tls.stream = Some("SLUICE".into());
        tls.credentials_dir = Some("/etc/sluice/events/bus".into());
        let good = EventsConfig {
            outbox_dir: "/events".into(),
            max_outbox_bytes: default_max_outbox_bytes(),
            webhooks: vec![],
            nats: vec![tls],
        };
        assert!(
            fields(&good, "/data").is_empty(),
            "{:?}",
            fields(&good, "/data")
        );
        assert!(good.insecure_opt_ins().is_empty());

        let mut bad = nats();
        bad.name = "ingest".into(); // the webhook's name
        bad.url = "tls://nats.example:4222".into(); // tls:// without caFile
        bad.subject = "sluice.*".into();
        bad.stream = Some("a.b".into());
        bad.types = vec!["nope".into()];
        bad.timeout_seconds = 0;
        let mut http = nats();
        http.name = "http".into();
        http.url = "http://nats.example/".into();
        let config = EventsConfig {
            outbox_dir: "/events".into(),
            max_outbox_bytes: default_max_outbox_bytes(),
            webhooks: vec![hook()],
            nats: vec![bad, http],
        };
        let named = fields(&config, "/data");
        for want in [
            "events.nats[0].name",
            "events.nats[0].url",
            "events.nats[0].subject",
            "events.nats[0].stream",
            "events.nats[0].types[0]",
            "events.nats[0].timeoutSeconds",
            "events.nats[1].url",
        ] {
            assert!(
                named.contains(&want.to_string()),
                "{want} missing: {named:?}"
            );
        }
        assert!(
            !named.iter().any(|f| f.starts_with("events.webhooks")),
            "{named:?}"
        );
    }

    #[test]
    fn subjects_and_streams() {
        assert!(valid_subject("sluice.events.partner-a"));
        for bad in ["", "a..b", ".a", "a.", "a b", "a.>", "*"] {
            assert!(!valid_subject(bad), "{bad:?}");
        }
        assert!(valid_stream("SLUICE_EVENTS"));
        for bad in ["", "a.b", "a b", "a*"] {
            assert!(!valid_stream(bad), "{bad:?}");
        }
    }

    fn fields(config: &EventsConfig, data_root: &str) -> Vec<String> {
        let mut errors = Vec::new();
        config.validate("server.yaml", data_root, &mut errors);
        errors.into_iter().map(|e| e.field).collect()
    }

    #[test]
    fn a_valid_section_has_no_errors() {
        let config = EventsConfig {
            outbox_dir: "/var/lib/sluice/events".into(),
            max_outbox_bytes: default_max_outbox_bytes(),
            webhooks: vec![hook()],
            nats: vec![nats()],
        };
        assert!(fields(&config, "/var/lib/sluice/data").is_empty());
        assert_eq!(
            config.insecure_opt_ins().len(),
            1,
            "the NATS sink has no caFile"
        );
    }

    #[test]
    fn every_bad_field_is_named() {
        let mut bad = hook();
        bad.name = "In Gest".into();
        bad.url = "http://plain.example/".into();
        bad.types = vec!["dev.sluice.file.exploded".into()];
        bad.path_prefixes = vec!["inbound".into()];
        bad.max_attempts = 0;
        let config = EventsConfig {
            outbox_dir: "/data/events".into(),
            max_outbox_bytes: 10,
            webhooks: vec![bad, hook(), hook()],
            nats: vec![],
        };
        let named = fields(&config, "/data/");
        for want in [
            "events.outboxDir",
            "events.maxOutboxBytes",
            "events.webhooks[0].name",
            "events.webhooks[0].url",
            "events.webhooks[0].types[0]",
            "events.webhooks[0].pathPrefixes[0]",
            "events.webhooks[0].maxAttempts",
            "events.webhooks[2].name",
        ] {
            assert!(
                named.contains(&want.to_string()),
                "{want} missing: {named:?}"
            );
        }
        assert!(!named.contains(&"events.webhooks[1].name".to_string()));
    }

    #[test]
    fn no_sink_is_an_error() {
        let config = EventsConfig {
            outbox_dir: "/events".into(),
            max_outbox_bytes: default_max_outbox_bytes(),
            webhooks: vec![],
            nats: vec![],
        };
        assert_eq!(
            fields(&config, "/data"),
            vec!["events.webhooks".to_string()]
        );
    }
}
