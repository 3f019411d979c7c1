//! The wire format of ban sync between the operator and the pods (`GET /bans`,
//! `PUT /bans/peers` on the health listener, docs/bans.md): one definition for both sides.

use serde::{Deserialize, Serialize};

/// Most entries in one list (`bans` or `totpSteps`): the pods refuse longer `PUT` bodies and the
/// operator caps what it merges to this.
pub const MAX_SYNC_ENTRIES: usize = 10_000;

/// One ban: of an `address` or of a `username`, exactly one of the two.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct WireBan {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// RFC 3339 instant the ban ends.
    pub expires_at: String,
    /// The replica that imposed it (informational, for the audit log).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
}

/// The last TOTP time step a replica accepted for a user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WireTotpStep {
    pub username: String,
    pub step: u64,
}
