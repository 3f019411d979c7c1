//! The configuration contract between the operator (which writes) and sluice-server (which reads):
//! `server.yaml` ([`ServerConfig`]) and `users.yaml` ([`UserList`]), strict parsing and validation.
//!
//! This crate is deliberately free of runtime dependencies (no tokio, no TLS) so that the
//! operator can render these files from the very same types the server parses.

mod ban_wire;
mod bans;
mod budgets;
mod data_binding;
mod error;
mod events;
mod hygiene;
mod proxy;
mod scanning;
mod second_factor;
mod server;
mod ssh;
mod storage;
mod users;
mod windows;

pub use ban_wire::{MAX_SYNC_ENTRIES, WireBan, WireTotpStep};
pub use bans::{BanConfig, BanSyncConfig};
pub use budgets::*;
pub use data_binding::{FtpsDataBinding, UNRESUMED_DATA_WINDOW_SECONDS};
pub use error::{ConfigError, FieldError};
pub use events::{
    DEFAULT_INITIAL_BACKOFF_MS, DEFAULT_MAX_ATTEMPTS, DEFAULT_MAX_BACKOFF_MS,
    DEFAULT_MAX_OUTBOX_BYTES, DEFAULT_TIMEOUT_SECONDS, EVENT_TYPES, EventsConfig, MIN_OUTBOX_BYTES,
    NATS_CREDENTIAL_FILES, NatsConfig, WebhookConfig,
};
pub use hygiene::*;
pub use proxy::*;
pub use scanning::*;
pub use second_factor::*;
pub use server::*;
pub use ssh::*;
pub use storage::*;
pub use users::*;
pub use windows::*;

/// The only `apiVersion` both files accept today.
pub const API_VERSION: &str = "sluice.dev/v1alpha1";

/// Parses YAML strictly (unknown fields are errors) into `T`, naming `file` in every error.
fn parse_yaml<T: serde::de::DeserializeOwned>(file: &str, text: &str) -> Result<T, ConfigError> {
    serde_saphyr::from_str::<T>(text).map_err(|source| ConfigError::Syntax {
        file: file.to_string(),
        message: source.to_string(),
    })
}

/// Checks the `apiVersion`/`kind` header shared by both files.
fn check_header(
    errors: &mut Vec<FieldError>,
    file: &str,
    api_version: &str,
    kind: &str,
    want_kind: &str,
) {
    if api_version != API_VERSION {
        errors.push(FieldError::new(
            file,
            "apiVersion",
            format!("must be {API_VERSION:?}, got {api_version:?}"),
        ));
    }
    if kind != want_kind {
        errors.push(FieldError::new(
            file,
            "kind",
            format!("must be {want_kind:?}, got {kind:?}"),
        ));
    }
}
