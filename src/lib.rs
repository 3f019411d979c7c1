//! sluice-operator as a library: the custom resources, the pure builders of every child
//! object, and the controller entry point (which takes a client, so tests can start it).

#![forbid(unsafe_code)]

pub mod aging;
pub mod backoff;
pub mod ban_sync;
pub mod certmanager;
pub mod certs;
pub mod conditions;
pub mod controller;
pub mod crd;
pub mod crdgen;
pub mod events;
pub mod lenient;
pub mod metrics;
pub mod object_store;
pub mod policy;
pub mod quota_status;
pub mod render;
pub mod shards;
pub mod sink_health;
pub mod users;
