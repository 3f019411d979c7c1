//! Events on transitions, announced once: the status a reconcile reads may lag behind the
//! status patch it wrote (the watch has not delivered it yet), so the last reason announced per
//! object and condition is also kept in memory.

use std::collections::HashMap;

use kube::Resource;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use tracing::warn;

use super::{Context, FIELD_MANAGER};
use crate::conditions::Reason;

pub fn recorder(client: &kube::Client) -> Recorder {
    let reporter = Reporter {
        controller: FIELD_MANAGER.into(),
        instance: std::env::var("POD_NAME").ok(),
    };
    Recorder::new(client.clone(), reporter)
}

/// The reasons last announced by Events, per `<object uid>/<condition>`.
#[derive(Default)]
pub struct Announced(std::sync::Mutex<HashMap<String, String>>);

impl Announced {
    /// Whether `reason` is news for `key` given the `stored` reason of the status the
    /// reconcile read: it differs from the stored one and from the one this process announced
    /// last. Records `reason` either way.
    pub fn is_news(&self, key: &str, stored: Option<&str>, reason: &str) -> bool {
        let mut announced = self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let last = announced.insert(key.to_string(), reason.to_string());
        stored != Some(reason) && last.as_deref() != Some(reason)
    }

    /// Forgets `key`, so that the same reason is news again (a failure that recurs after a
    /// success).
    pub fn forget(&self, key: &str) {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .remove(key);
    }
}

pub async fn publish<K: Resource<DynamicType = ()>>(
    context: &Context,
    object: &K,
    type_: EventType,
    reason: Reason,
    note: &str,
) {
    let event = Event {
        type_,
        reason: reason.as_str().into(),
        note: Some(note.chars().take(1000).collect()),
        action: "Reconcile".into(),
        secondary: None,
    };
    if let Err(error) = context
        .recorder
        .publish(&event, &object.object_ref(&()))
        .await
    {
        warn!(%error, "cannot publish event");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_transition_is_announced_once_even_when_the_cache_still_shows_the_old_status() {
        let announced = Announced::default();
        assert!(announced.is_news(
            "u/CertificateReady",
            Some("Issued"),
            "CertificateExpiringSoon"
        ));
        assert!(!announced.is_news(
            "u/CertificateReady",
            Some("Issued"),
            "CertificateExpiringSoon"
        ));
        assert!(!announced.is_news(
            "u/CertificateReady",
            Some("CertificateExpiringSoon"),
            "CertificateExpiringSoon"
        ));
        assert!(!Announced::default().is_news(
            "u/CertificateReady",
            Some("CertificateExpiringSoon"),
            "CertificateExpiringSoon"
        ));
        assert!(announced.is_news(
            "u/CertificateReady",
            Some("CertificateExpiringSoon"),
            "Issued"
        ));
        assert!(announced.is_news(
            "u/CertificateReady",
            Some("Issued"),
            "CertificateExpiringSoon"
        ));
        assert!(announced.is_news("v/CertificateReady", None, "CertificateExpiringSoon"));
        announced.forget("v/CertificateReady");
        assert!(announced.is_news("v/CertificateReady", None, "CertificateExpiringSoon"));
    }
}
