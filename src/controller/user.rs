//! The TransferUser controller: a user's status is written by its server's reconcile (so that
//! duplicate usernames are decided in one place); this controller only reports users whose
//! server does not exist, and objects the types reject. It must stay cheap: deleting a
//! namespace or a server with thousands of users wakes it for every one of them, and other
//! tenants' reconciles share the operator's client and the API server's fairness queue with it.

use std::sync::Arc;
use std::time::Duration;

use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use kube::{Api, ResourceExt};

use super::{Context, ControllerError, status};
use crate::conditions::Reason;
use crate::crd::{FileTransferServer, TransferUser};
use crate::lenient::Lenient;
use crate::users;

pub async fn reconcile(
    object: Arc<Lenient<TransferUser>>,
    context: Arc<Context>,
) -> Result<Action, ControllerError> {
    let user = match &object.parsed {
        Ok(user) => user,
        Err(invalid) => return Ok(status::report_invalid(&object, invalid, &context).await?),
    };
    let Some(namespace) = user.namespace() else {
        return Ok(Action::await_change());
    };
    if user.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    // The watch cache answers the common case (the server exists) without a request; a
    // miss is confirmed with a GET, since the cache may not have seen a server just created.
    let server = ObjectRef::new(&user.spec.server_ref.name).within(&namespace);
    if context.servers.get(&server).is_some() {
        // The server's reconcile owns this user's status.
        return Ok(Action::await_change());
    }
    let servers: Api<Lenient<FileTransferServer>> =
        Api::namespaced(context.client.clone(), &namespace);
    if servers
        .get_opt(&user.spec.server_ref.name)
        .await
        .map_err(status::StatusError::from)?
        .is_some()
    {
        return Ok(Action::await_change());
    }
    let verdict = users::Verdict::refused(
        Reason::ServerNotFound,
        format!(
            "spec.serverRef: FileTransferServer {} not found in namespace {namespace}",
            user.spec.server_ref.name
        ),
    );
    let api: Api<TransferUser> = Api::namespaced(context.client.clone(), &namespace);
    match status::update_user_status(&api, user, &verdict, (context.now)(), &context).await {
        Ok(()) => Ok(Action::requeue(Duration::from_secs(60))),
        // Deleted meanwhile (a namespace being deleted removes its users and servers in no
        // particular order): nothing left to report, and nothing to retry.
        Err(status::StatusError::Kube(kube::Error::Api(response))) if response.code == 404 => {
            Ok(Action::await_change())
        }
        Err(error) => Err(error.into()),
    }
}

pub fn error_policy(_: Arc<Lenient<TransferUser>>, _: &ControllerError, _: Arc<Context>) -> Action {
    Action::requeue(Duration::from_secs(30))
}
