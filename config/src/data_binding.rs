//! How an FTPS data connection is tied to the control session that asked for it (H11).
//!
//! The hardened default asks the data connection's TLS handshake to resume the control
//! connection's session: only the party that completed the control handshake holds that
//! session. Some widely deployed clients cannot do that: Apache Commons Net `FTPSClient` (inside
//! Spring Integration, Apache Camel and many MFT connectors) opens data sockets without the
//! control connection's session, and Java's TLS 1.3 client does not resume across ports. Turning
//! resumption off for the whole server (`tls.requireSessionResumption: false`) would weaken every
//! account for one partner, so the exception is per user, named in users.yaml and in the
//! TransferUser, warned about at load and audited on every data connection.

use serde::{Deserialize, Serialize};

use crate::UserList;

/// Seconds after the passive reply within which a user with
/// [`FtpsDataBinding::AddressAndLease`] must open the data connection.
pub const UNRESUMED_DATA_WINDOW_SECONDS: u64 = 5;

/// What ties a user's FTPS data connections to the control session.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub enum FtpsDataBinding {
    /// The data connection's TLS handshake resumes the control connection's session (default).
    #[default]
    TlsResumption,
    /// For clients that cannot resume TLS sessions (Apache Commons Net `FTPSClient`, Java's
    /// TLS 1.3 client): a full handshake is accepted on a passive data connection that comes
    /// from the control connection's address, to the passive port leased to this session alone,
    /// as the first connection within 5 seconds of the passive reply, presenting the control
    /// connection's client certificate when that had one. Active mode still needs resumption.
    AddressAndLease,
}

impl FtpsDataBinding {
    /// The name used in users.yaml, the CRD and the audit log.
    pub fn name(self) -> &'static str {
        match self {
            FtpsDataBinding::TlsResumption => "tlsResumption",
            FtpsDataBinding::AddressAndLease => "addressAndLease",
        }
    }

    /// Whether a data connection of this user may skip TLS session resumption.
    pub fn allows_unresumed(self) -> bool {
        self == FtpsDataBinding::AddressAndLease
    }
}

impl UserList {
    /// Users whose settings are weaker than the hardened default, one warning each, for the log
    /// whenever users.yaml is loaded (and `check-config`).
    pub fn insecure_opt_ins(&self) -> Vec<String> {
        self.users
            .iter()
            .filter(|user| user.ftps_data_binding.allows_unresumed())
            .map(|user| {
                format!(
                    "users.yaml: user {:?} has ftpsDataBinding: addressAndLease: its FTPS data \
                     connections need not resume the control connection's TLS session",
                    user.username
                )
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const USERS: &str = r#"
apiVersion: sluice.dev/v1alpha1
kind: UserList
users:
  - username: legacy
    home: legacy
    permissions: [upload]
    ftpsDataBinding: addressAndLease
  - username: modern
    home: modern
    permissions: [upload]
"#;

    #[test]
    fn default_is_resumption_and_the_opt_in_is_warned_about() {
        let list = UserList::parse("users.yaml", USERS).unwrap();
        assert_eq!(
            list.users[0].ftps_data_binding,
            FtpsDataBinding::AddressAndLease
        );
        assert_eq!(
            list.users[1].ftps_data_binding,
            FtpsDataBinding::TlsResumption
        );
        let warnings = list.insecure_opt_ins();
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].contains("\"legacy\"") && warnings[0].contains("ftpsDataBinding"));
    }

    #[test]
    fn the_default_is_not_written_and_unknown_values_are_refused() {
        let list = UserList::parse("users.yaml", USERS).unwrap();
        let text = serde_saphyr::to_string(&list).unwrap();
        assert_eq!(text.matches("ftpsDataBinding").count(), 1, "{text}");
        let wrong = USERS.replace("addressAndLease", "none");
        let error = UserList::parse("users.yaml", &wrong)
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("ftpsDataBinding") || error.contains("none"),
            "{error}"
        );
    }
}
