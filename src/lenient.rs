//! Custom resources read one object at a time: [`Lenient<K>`] deserializes every object of a
//! list or watch on its own, so one object the Rust types reject (stored while the CRD's schema
//! was looser, or through a field the schema accepts and the types do not) is carried with its
//! error instead of failing the whole list — a typed watch would stop for every object. The
//! error names the field path (`spec.replicas: invalid type: ...`), via `serde_path_to_error`.

use std::borrow::Cow;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, ObjectMeta};
use kube::Resource;
use serde::de::{DeserializeOwned, Error as _};
use serde::{Deserialize, Deserializer};

/// An object of kind `K` as read from the API server: its metadata always, the typed object
/// when it deserializes, otherwise the error naming the offending field.
#[derive(Clone, Debug)]
pub struct Lenient<K> {
    pub metadata: ObjectMeta,
    pub parsed: Result<K, Invalid>,
}

/// Why an object could not be read as its Rust type.
#[derive(Clone, Debug, PartialEq)]
pub struct Invalid {
    /// `<field path>: <what is wrong>`, e.g. `spec.replicas: invalid type: string "two",
    /// expected i32`.
    pub message: String,
    /// The conditions of the object's status as stored, for stable transition times.
    pub conditions: Vec<Condition>,
}

/// Deserializes `value` as `K`; the error message starts with the path of the field at fault.
pub fn parse<K: DeserializeOwned>(value: serde_json::Value) -> Result<K, String> {
    serde_path_to_error::deserialize(value).map_err(|error| {
        let path = error.path().to_string();
        format!("{path}: {}", error.inner())
    })
}

impl<K: DeserializeOwned> Lenient<K> {
    /// Reads any JSON object: only a broken `metadata` is an error.
    pub fn from_value(value: serde_json::Value) -> Result<Self, String> {
        let metadata: ObjectMeta = match value.get("metadata") {
            Some(meta) => parse(meta.clone()).map_err(|e| format!("metadata.{e}"))?,
            None => ObjectMeta::default(),
        };
        let conditions = value
            .pointer("/status/conditions")
            .and_then(|c| serde_json::from_value::<Vec<Condition>>(c.clone()).ok())
            .unwrap_or_default();
        let parsed = parse::<K>(value).map_err(|message| Invalid {
            message,
            conditions,
        });
        Ok(Lenient { metadata, parsed })
    }
}

/// Drops what the operator never reads from an object it keeps in a watch cache: the
/// `managedFields` (often larger than the spec) and `kubectl apply`'s copy of the whole object
/// in the last-applied annotation. With 50,000 TransferUsers in the cache both add up.
pub fn trim_for_cache(meta: &mut ObjectMeta) {
    meta.managed_fields = None;
    if let Some(annotations) = meta.annotations.as_mut() {
        annotations.remove(LAST_APPLIED);
    }
}

const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

impl<K: Resource> Lenient<K> {
    /// [`trim_for_cache`] on both copies of the metadata.
    pub fn trim_for_cache(&mut self) {
        trim_for_cache(&mut self.metadata);
        if let Ok(object) = self.parsed.as_mut() {
            trim_for_cache(object.meta_mut());
        }
    }
}

impl<'de, K: DeserializeOwned> Deserialize<'de> for Lenient<K> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = serde_json::Value::deserialize(deserializer)?;
        Lenient::from_value(value).map_err(D::Error::custom)
    }
}

impl<K: Resource> Resource for Lenient<K> {
    type DynamicType = K::DynamicType;
    type Scope = K::Scope;

    fn kind(dt: &Self::DynamicType) -> Cow<'_, str> {
        K::kind(dt)
    }
    fn group(dt: &Self::DynamicType) -> Cow<'_, str> {
        K::group(dt)
    }
    fn version(dt: &Self::DynamicType) -> Cow<'_, str> {
        K::version(dt)
    }
    fn api_version(dt: &Self::DynamicType) -> Cow<'_, str> {
        K::api_version(dt)
    }
    fn plural(dt: &Self::DynamicType) -> Cow<'_, str> {
        K::plural(dt)
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{FileTransferServer, TransferUser};
    use serde_json::json;

    fn server(spec: serde_json::Value) -> serde_json::Value {
        json!({
            "apiVersion": "sluice.dev/v1alpha1",
            "kind": "FileTransferServer",
            "metadata": {"name": "broken", "namespace": "transfer", "generation": 3},
            "spec": spec,
            "status": {"conditions": [{"type": "Ready", "status": "True", "reason": "Ready",
                "message": "ok", "lastTransitionTime": "2026-01-01T00:00:00Z"}]}
        })
    }

    #[test]
    fn a_wrong_type_names_the_field_and_keeps_the_metadata() {
        let object: Lenient<FileTransferServer> = Lenient::from_value(server(
            json!({"protocols": ["ftpsExplicit"], "replicas": "two"}),
        ))
        .unwrap();
        assert_eq!(object.metadata.name.as_deref(), Some("broken"));
        assert_eq!(object.metadata.generation, Some(3));
        let invalid = object.parsed.unwrap_err();
        assert!(
            invalid.message.starts_with("spec.replicas: invalid type"),
            "{}",
            invalid.message
        );
        assert_eq!(invalid.conditions[0].type_, "Ready");
    }

    #[test]
    fn nested_and_list_paths_are_named() {
        let object: Lenient<FileTransferServer> = Lenient::from_value(server(
            json!({"protocols": ["ftpsExplicit", "gopher"], "replicas": 1}),
        ))
        .unwrap();
        let message = object.parsed.unwrap_err().message;
        assert!(
            message.starts_with("spec.protocols[1]: unknown variant"),
            "{message}"
        );
        let user: Lenient<TransferUser> = Lenient::from_value(json!({
            "apiVersion": "sluice.dev/v1alpha1", "kind": "TransferUser",
            "metadata": {"name": "u", "namespace": "transfer"},
            "spec": {"serverRef": {"name": "s"}, "username": "u", "auth": {},
                     "permissions": ["list"], "disabled": "yes"}
        }))
        .unwrap();
        let message = user.parsed.unwrap_err().message;
        assert!(
            message.starts_with("spec.disabled: invalid type"),
            "{message}"
        );
    }

    #[test]
    fn a_list_with_one_bad_object_still_yields_the_good_ones() {
        let list = json!({"apiVersion": "v1", "kind": "List", "metadata": {}, "items": [
            server(json!({"protocols": ["ftpsExplicit"], "replicas": "two"})),
            server(json!({"protocols": ["sftp"]})),
        ]});
        let list: kube::core::ObjectList<Lenient<FileTransferServer>> =
            serde_json::from_value(list).unwrap();
        assert!(list.items[0].parsed.is_err());
        let good = list.items[1].parsed.as_ref().unwrap();
        assert_eq!(good.spec.replicas, 1);
        // The typed list fails as a whole: what a typed watch would do.
        let typed = json!({"apiVersion": "v1", "kind": "List", "metadata": {}, "items": [
            server(json!({"protocols": ["ftpsExplicit"], "replicas": "two"})),
        ]});
        assert!(
            serde_json::from_value::<kube::core::ObjectList<FileTransferServer>>(typed).is_err()
        );
    }

    #[test]
    fn cached_objects_lose_managed_fields_and_the_last_applied_copy_only() {
        let mut user: Lenient<TransferUser> = Lenient::from_value(json!({
            "apiVersion": "sluice.dev/v1alpha1", "kind": "TransferUser",
            "metadata": {
                "name": "u", "namespace": "transfer",
                "annotations": {LAST_APPLIED: "{\"huge\": true}", "team": "payments"},
                "managedFields": [{"manager": "kubectl", "operation": "Apply"}]
            },
            "spec": {"serverRef": {"name": "s"}, "username": "u", "auth": {},
                     "permissions": ["list"]}
        }))
        .unwrap();
        assert!(user.metadata.managed_fields.is_some());
        user.trim_for_cache();
        let parsed = user.parsed.as_ref().unwrap();
        for meta in [&user.metadata, &parsed.metadata] {
            assert_eq!(meta.managed_fields, None);
            let annotations = meta.annotations.as_ref().unwrap();
            assert_eq!(annotations.len(), 1, "{annotations:?}");
            assert_eq!(annotations["team"], "payments");
        }
        assert_eq!(parsed.spec.username, "u");
    }
}
