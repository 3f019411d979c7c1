//! The reconcilers, as a pipeline a newcomer can read top to bottom: [`resolve`] reads what a
//! FileTransferServer references (its users, the Secrets marked for Sluice, the deployed
//! users.yaml shards, load-balancer addresses) → [`validate`] decides each user's verdict and
//! hashes new passwords → [`certificate`] issues or inspects the serving certificate → [`build`]
//! renders every child, purely → [`apply`] applies each child on its own (one failure does not
//! stop the others) → [`crate::sink_health`] asks the pods how their event sinks fare (only
//! with `spec.events`) → [`status`] writes conditions, Events and metrics from what was applied.
//! TransferUsers are resolved by their server's reconcile (so duplicate usernames are decided
//! in one place); [`user`] marks users whose server does not exist.
//!
//! Least privilege: the operator watches only the namespaces it is given, reads only Secrets
//! labelled [`REFERABLE_LABEL`] (a label selector on the watch, so no other Secret passes
//! through its memory) and watches its own Secrets as metadata only.

pub mod apply;
pub mod build;
pub mod certificate;
pub mod events;
pub mod loaded;
pub mod resolve;
pub mod status;
pub mod user;
pub mod validate;

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use jiff::Timestamp;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use kube::core::PartialObjectMeta;
use kube::runtime::controller::{self, Action, Controller};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use tracing::{debug, info, warn};

use crate::crd::{FileTransferServer, TransferUser};
use crate::lenient::Lenient;

/// User reconciles in flight at once (see [`user`]).
const USER_RECONCILE_CONCURRENCY: u16 = 4;

pub use events::Announced;

pub const FIELD_MANAGER: &str = "sluice-operator";
/// The label a Secret must carry (value `"true"`) before a TransferUser or FileTransferServer
/// may reference it: the operator reads no other Secret.
pub const REFERABLE_LABEL: &str = "sluice.dev/referable";
/// Selects the Secrets the operator created itself.
pub const MANAGED_SELECTOR: &str = "app.kubernetes.io/managed-by=sluice-operator";

/// Errors of a reconcile that the pipeline could not turn into a status (the API server was
/// unreachable while reading, or the status itself could not be written).
#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    #[error("{0}")]
    Resolve(#[from] resolve::ResolveError),
    #[error("{0}")]
    Validate(#[from] validate::ValidateError),
    #[error("certificate: {0}")]
    Certificate(#[from] certificate::CertificateError),
    #[error("{0}")]
    Build(#[from] build::BuildError),
    #[error("status: {0}")]
    Status(#[from] status::StatusError),
}

impl ControllerError {
    pub fn reason(&self) -> &'static str {
        match self {
            ControllerError::Resolve(_) => "ResolveError",
            ControllerError::Validate(_) => "ValidateError",
            ControllerError::Certificate(_) => "CertificateError",
            ControllerError::Build(_) => "RenderError",
            ControllerError::Status(_) => "StatusError",
        }
    }
}

/// Shared state of the controllers of one namespace (or of the cluster).
pub struct Context {
    pub client: Client,
    pub metrics: Arc<crate::metrics::OperatorMetrics>,
    pub recorder: kube::runtime::events::Recorder,
    /// The clock, injectable for tests.
    pub now: fn() -> Timestamp,
    /// See [`Announced`].
    pub announced: Announced,
    /// Every TransferUser in scope, shared with the user controller (one watch).
    pub users: Store<Lenient<TransferUser>>,
    /// The Secrets marked [`REFERABLE_LABEL`], the only ones read.
    pub secrets: Store<Secret>,
    /// Every FileTransferServer in scope (the server controller's cache).
    pub servers: Store<Lenient<FileTransferServer>>,
    /// Set once `users` holds the first complete list.
    pub users_filled: Filled,
    /// Set once `secrets` holds the first complete list.
    pub secrets_filled: Filled,
}

/// Whether a cache has received its first complete list. `Store::wait_until_ready` is not
/// used: kube-runtime 5.0's `DelayedInit` keeps one waker (a oneshot receiver), so of several
/// tasks waiting at once (every server's reconcile, the user controller's own start) only the
/// last one is woken and the others wait forever (seen as an operator that never reconciles
/// after a restart; to report upstream).
#[derive(Clone)]
pub struct Filled(tokio::sync::watch::Receiver<bool>);

impl Filled {
    /// A flag and the setter the cache's watch stream calls on its first `InitDone`.
    pub fn new() -> (tokio::sync::watch::Sender<bool>, Self) {
        let (tx, rx) = tokio::sync::watch::channel(false);
        (tx, Filled(rx))
    }

    /// Returns once the cache is filled.
    pub async fn wait(&self, cache: &'static str) -> Result<(), resolve::ResolveError> {
        self.0
            .clone()
            .wait_for(|filled| *filled)
            .await
            .map(|_| ())
            .map_err(|_| resolve::ResolveError::CacheClosed(cache))
    }
}

/// An Api over every namespace, or over one.
fn scoped<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    <K as Resource>::DynamicType: Default,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// Runs the controllers until the streams end (i.e. forever): over every namespace when
/// `namespaces` is empty, else one set per namespace (the chart grants a Role in each).
pub async fn run(
    client: Client,
    metrics: Arc<crate::metrics::OperatorMetrics>,
    namespaces: Vec<String>,
) {
    if namespaces.is_empty() {
        run_scope(client, metrics, None).await;
    } else {
        futures::future::join_all(
            namespaces
                .into_iter()
                .map(|ns| run_scope(client.clone(), metrics.clone(), Some(ns))),
        )
        .await;
    }
}

async fn run_scope(
    client: Client,
    metrics: Arc<crate::metrics::OperatorMetrics>,
    namespace: Option<String>,
) {
    let ns = namespace.as_deref();
    info!(namespace = ns.unwrap_or("*"), "watching");
    let servers: Api<Lenient<FileTransferServer>> = scoped(&client, ns);
    let server_controller = Controller::new(servers, watcher::Config::default())
        .trigger_backoff(crate::backoff::watches());
    let store = server_controller.store();
    // Shared streams carry applied objects only: a deleted user or Secret (or one that lost
    // its mark) reaches the servers through this channel.
    let (deleted_tx, deleted_rx) =
        futures::channel::mpsc::unbounded::<ObjectRef<Lenient<FileTransferServer>>>();

    // One watch of TransferUsers feeds both controllers and the store the server reconcile
    // reads (no list of every user per reconcile).
    let (user_reader, user_writer) = reflector::store_shared::<Lenient<TransferUser>>(1024);
    let user_events_for_servers = user_writer.subscribe().expect("a shared store");
    let user_events_for_users = user_writer.subscribe().expect("a shared store");
    let user_deleted = deleted_tx.clone();
    let (users_filled_tx, users_filled) = Filled::new();
    let (secrets_filled_tx, secrets_filled) = Filled::new();
    let user_watch = watcher(
        scoped::<Lenient<TransferUser>>(&client, ns),
        watcher::Config::default(),
    )
    .default_backoff()
    .modify(Lenient::trim_for_cache)
    .inspect(move |event| {
        if let Ok(watcher::Event::Delete(user)) = event
            && let Some(server) = server_of(user)
        {
            let _ = user_deleted.unbounded_send(server);
        }
    })
    .reflect_shared(user_writer)
    .for_each(move |event| {
        if let Ok(watcher::Event::InitDone) = event {
            users_filled_tx.send_replace(true);
        }
        futures::future::ready(())
    });
    // Marked Secrets only: the label selector keeps every other Secret out of the operator.
    let (secret_reader, secret_writer) = reflector::store_shared::<Secret>(256);
    let secret_events = secret_writer.subscribe().expect("a shared store");
    let deleted_store = store.clone();
    let secret_watch = watcher(
        scoped::<Secret>(&client, ns),
        watcher::Config::default().labels(&format!("{REFERABLE_LABEL}=true")),
    )
    .default_backoff()
    .modify(|secret: &mut Secret| crate::lenient::trim_for_cache(&mut secret.metadata))
    .inspect(move |event| {
        if let Ok(watcher::Event::Delete(secret)) = event {
            for server in servers_of_namespace(&deleted_store, secret.namespace()) {
                let _ = deleted_tx.unbounded_send(server);
            }
        }
    })
    .reflect_shared(secret_writer)
    .for_each(move |event| {
        if let Ok(watcher::Event::InitDone) = event {
            secrets_filled_tx.send_replace(true);
        }
        futures::future::ready(())
    });

    let context = Arc::new(Context {
        recorder: events::recorder(&client),
        client: client.clone(),
        metrics,
        now: Timestamp::now,
        announced: Announced::default(),
        users: user_reader.clone(),
        secrets: secret_reader,
        servers: store.clone(),
        users_filled,
        secrets_filled,
    });
    let secret_store = store.clone();
    let ban_sync = crate::ban_sync::run(client.clone(), store.clone(), context.metrics.clone());
    let quota_status = crate::quota_status::run(client.clone(), store.clone(), context.clone());
    // Owned Secrets (users.yaml shards, certificates, keys) as metadata only.
    let owned_secrets = watcher(
        scoped::<PartialObjectMeta<Secret>>(&client, ns),
        watcher::Config::default().labels(MANAGED_SELECTOR),
    )
    .default_backoff()
    .touched_objects();
    let server_loop = server_controller
        // Children are watched by the operator's label only.
        .owns(
            scoped::<StatefulSet>(&client, ns),
            watcher::Config::default().labels(MANAGED_SELECTOR),
        )
        .owns(
            scoped::<Service>(&client, ns),
            watcher::Config::default().labels(MANAGED_SELECTOR),
        )
        .owns(
            scoped::<ConfigMap>(&client, ns),
            watcher::Config::default().labels(MANAGED_SELECTOR),
        )
        .owns_stream(owned_secrets)
        .watches_shared_stream(
            user_events_for_servers,
            |user: Arc<Lenient<TransferUser>>| server_of(&user),
        )
        // A marked Secret changed: reconcile the servers of its namespace.
        .watches_shared_stream(secret_events, move |secret: Arc<Secret>| {
            servers_of_namespace(&secret_store, secret.namespace())
        })
        .reconcile_on(deleted_rx)
        .run(measured_reconcile_server, error_policy, context.clone())
        .for_each(|result| {
            let context = context.clone();
            async move {
                match result {
                    // The server is gone (or a child changed after it was deleted): its
                    // metric series go with it.
                    Err(kube::runtime::controller::Error::ObjectNotFound(object)) => {
                        debug!(%object, "server no longer exists");
                        status::forget(&context, object.namespace.as_deref(), &object.name);
                    }
                    Err(error) => warn!(%error, "server reconcile failed"),
                    Ok(_) => {}
                }
            }
        });
    let user_store = user_reader.clone();
    let user_loop = Controller::for_shared_stream(user_events_for_users, user_reader)
        // A deleted server or namespace wakes every one of its users at once; a bound keeps
        // them from crowding out other servers' requests on the shared client.
        .with_config(controller::Config::default().concurrency(USER_RECONCILE_CONCURRENCY))
        .trigger_backoff(crate::backoff::watches())
        // A server that appears or goes changes the status of the users that reference it.
        .watches(
            scoped::<Lenient<FileTransferServer>>(&client, ns),
            watcher::Config::default(),
            move |server: Lenient<FileTransferServer>| {
                let namespace = server.namespace();
                let name = server.name_any();
                user_store
                    .state()
                    .into_iter()
                    .filter(|user| {
                        user.namespace() == namespace
                            && user
                                .parsed
                                .as_ref()
                                .is_ok_and(|u| u.spec.server_ref.name == name)
                    })
                    .map(|user| ObjectRef::from_obj(user.as_ref()))
                    .collect::<Vec<_>>()
            },
        )
        .run(user::reconcile, user::error_policy, context.clone())
        .for_each(|result| async move {
            match result {
                Err(kube::runtime::controller::Error::ObjectNotFound(_)) | Ok(_) => {}
                Err(error) => warn!(%error, "user reconcile failed"),
            }
        });
    futures::join!(
        user_watch,
        secret_watch,
        server_loop,
        user_loop,
        ban_sync,
        quota_status
    );
}

/// The server a user names.
fn server_of(user: &Lenient<TransferUser>) -> Option<ObjectRef<Lenient<FileTransferServer>>> {
    let server = user.parsed.as_ref().ok()?.spec.server_ref.name.clone();
    user.namespace()
        .map(|ns| ObjectRef::new(&server).within(&ns))
}

/// Every server of `namespace`.
fn servers_of_namespace(
    servers: &Store<Lenient<FileTransferServer>>,
    namespace: Option<String>,
) -> Vec<ObjectRef<Lenient<FileTransferServer>>> {
    servers
        .state()
        .into_iter()
        .filter(|server| server.namespace() == namespace)
        .map(|server| ObjectRef::from_obj(server.as_ref()))
        .collect()
}

async fn measured_reconcile_server(
    object: Arc<Lenient<FileTransferServer>>,
    context: Arc<Context>,
) -> Result<Action, ControllerError> {
    let started = std::time::Instant::now();
    let result = match &object.parsed {
        Ok(server) => match validate::past_admission_check(server) {
            None => reconcile_server(server, &context).await,
            Some(invalid) => Ok(status::report_invalid(&object, &invalid, &context).await?),
        },
        Err(invalid) => Ok(status::report_invalid(&object, invalid, &context).await?),
    };
    context.metrics.observe(
        "FileTransferServer",
        started.elapsed(),
        result.as_ref().err().map(|e| e.reason()),
    );
    result
}

/// The pipeline of one server.
async fn reconcile_server(
    server: &FileTransferServer,
    context: &Context,
) -> Result<Action, ControllerError> {
    if server.metadata.deletion_timestamp.is_some() {
        // Being deleted: the garbage collector removes the children; re-creating them would
        // only fight it.
        status::forget(context, server.namespace().as_deref(), &server.name_any());
        return Ok(Action::await_change());
    }
    let now = (context.now)();
    let references = resolve::resolve(server, context).await?;
    let validated = validate::validate(server, &references, now).await?;
    let certificate = certificate::ensure(server, &references, context).await?;
    let prepared = build::build(server, &references, &validated)?;
    let applied = apply::apply(server, prepared, context).await;
    let sinks = crate::sink_health::observe(server, &context.client).await;
    status::update(server, &validated, &certificate, &applied, sinks, context).await
}

/// A reconcile that failed before it could write a status: logged, counted, announced as a
/// Warning Event (once per reason), and retried.
fn error_policy(
    server: Arc<Lenient<FileTransferServer>>,
    error: &ControllerError,
    context: Arc<Context>,
) -> Action {
    warn!(server = %server.name_any(), reason = error.reason(), %error, "reconcile failed; retrying");
    let key = format!("{}/ReconcileError", server.uid().unwrap_or_default());
    if context.announced.is_news(&key, None, error.reason()) {
        let message = error.to_string();
        let server = server.clone();
        tokio::spawn(async move {
            events::publish(
                &context,
                server.as_ref(),
                kube::runtime::events::EventType::Warning,
                crate::conditions::Reason::ReconcileError,
                &message,
            )
            .await;
        });
    }
    Action::requeue(Duration::from_secs(15))
}

#[cfg(test)]
mod tests {
    use super::Filled;
    use futures::StreamExt;
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::ResourceExt;
    use kube::runtime::{WatchStreamExt, reflector, watcher};

    fn config_map(name: &str) -> ConfigMap {
        let mut object = ConfigMap::default();
        object.metadata.name = Some(name.into());
        object.metadata.namespace = Some("tenant".into());
        object
    }

    /// The CI failure of 2026-12-07 (12 e2e tests: new TransferUsers never reached users.yaml
    /// after a namespace with 3,000 users was deleted): a subscriber of the shared user watch
    /// that read the reference of an object already deleted from the store returned `Pending`
    /// without a waker, never ran again, and once the broadcast buffer was full the watch
    /// itself stopped. patches/README.md (kube-runtime).
    #[tokio::test]
    async fn a_subscriber_goes_past_an_object_deleted_before_it_read_it_and_the_watch_goes_on() {
        let buffer = 4;
        let (_reader, writer) = reflector::store_shared::<ConfigMap>(buffer);
        let mut subscriber = writer.subscribe().expect("a shared store");
        let later: Vec<String> = (0..3 * buffer).map(|i| format!("later-{i}")).collect();
        let mut events = vec![
            watcher::Event::Apply(config_map("deleted")),
            watcher::Event::Delete(config_map("deleted")),
        ];
        events.extend(
            later
                .iter()
                .map(|name| watcher::Event::Apply(config_map(name))),
        );
        let last = later.last().cloned().expect("events after the deletion");
        let consumer = tokio::spawn(async move {
            let mut seen = Vec::new();
            while let Some(object) = subscriber.next().await {
                seen.push(object.name_any());
                if seen.last() == Some(&last) {
                    break;
                }
            }
            seen
        });
        let watch = tokio::spawn(
            futures::stream::iter(events.into_iter().map(Ok))
                .reflect_shared(writer)
                .for_each(|_| futures::future::ready(())),
        );
        let seen = tokio::time::timeout(std::time::Duration::from_secs(5), consumer)
            .await
            .expect("the subscriber stalled on the deleted object")
            .expect("the consumer ran");
        assert_eq!(seen, later);
        tokio::time::timeout(std::time::Duration::from_secs(5), watch)
            .await
            .expect("the watch stalled behind its subscriber")
            .expect("the watch ran");
    }

    #[tokio::test]
    async fn every_task_waiting_for_a_cache_is_woken_when_it_is_filled() {
        let (filled_tx, filled) = Filled::new();
        let waiters: Vec<_> = (0..8)
            .map(|_| {
                let filled = filled.clone();
                tokio::spawn(async move { filled.wait("TransferUser").await })
            })
            .collect();
        tokio::task::yield_now().await;
        filled_tx.send_replace(true);
        for waiter in waiters {
            tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
                .await
                .expect("a waiter was never woken")
                .expect("the task ran")
                .expect("the cache was filled");
        }
    }

    #[tokio::test]
    async fn a_cache_closed_before_it_was_filled_is_an_error_naming_it() {
        let (filled_tx, filled) = Filled::new();
        drop(filled_tx);
        let error = filled.wait("Secret").await.unwrap_err();
        assert!(error.to_string().contains("Secret cache"), "{error}");
    }
}
