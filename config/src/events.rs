//! `events` in server.yaml: file events (CloudEvents) written to a durable outbox and delivered
//! to webhooks. It lives in the contract crate because the operator renders it from
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

fn default_max_outbox_bytes() -> u64 {
    64 << 20
}
fn default_max_attempts() -> u32 {
    20
}
fn default_initial_backoff_ms() -> u64 {
    1000
}
fn default_max_backoff_ms() -> u64 {
    300_000
}
fn default_timeout_seconds() -> u64 {
    10
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
        if self.webhooks.is_empty() {
            err(
                "events.webhooks".into(),
                "must name at least one sink (leave events out for no events)".into(),
            );
        }
        for (index, hook) in self.webhooks.iter().enumerate() {
            let at = |name: &str| format!("events.webhooks[{index}].{name}");
            let name_ok = !hook.name.is_empty()
                && hook.name.len() <= 63
                && hook
                    .name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
            if !name_ok {
                err(
                    at("name"),
                    format!("{:?} must be 1-63 of a-z 0-9 -", hook.name),
                );
            }
            if self.webhooks[..index].iter().any(|o| o.name == hook.name) {
                err(at("name"), format!("{:?} is used twice", hook.name));
            }
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
            for (i, kind) in hook.types.iter().enumerate() {
                if !EVENT_TYPES.contains(&kind.as_str()) {
                    err(
                        format!("events.webhooks[{index}].types[{i}]"),
                        format!(
                            "unknown event type {kind:?}; known: {}",
                            EVENT_TYPES.join(", ")
                        ),
                    );
                }
            }
            for (i, prefix) in hook.path_prefixes.iter().enumerate() {
                if !prefix.starts_with('/') {
                    err(
                        format!("events.webhooks[{index}].pathPrefixes[{i}]"),
                        format!("{prefix:?} must start with /"),
                    );
                }
            }
            if hook.max_attempts == 0 {
                err(at("maxAttempts"), "must be at least 1".into());
            }
            if !(10..=3_600_000).contains(&hook.initial_backoff_ms) {
                err(
                    at("initialBackoffMs"),
                    format!(
                        "must be between 10 and 3600000, got {}",
                        hook.initial_backoff_ms
                    ),
                );
            }
            if hook.max_backoff_ms < hook.initial_backoff_ms || hook.max_backoff_ms > 86_400_000 {
                err(
                    at("maxBackoffMs"),
                    "must be between initialBackoffMs and 86400000".into(),
                );
            }
            if !(1..=300).contains(&hook.timeout_seconds) {
                err(
                    at("timeoutSeconds"),
                    format!("must be between 1 and 300, got {}", hook.timeout_seconds),
                );
            }
        }
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
        };
        assert!(fields(&config, "/var/lib/sluice/data").is_empty());
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
        };
        assert_eq!(
            fields(&config, "/data"),
            vec!["events.webhooks".to_string()]
        );
    }
}
