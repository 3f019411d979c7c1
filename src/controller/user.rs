//! The TransferUser controller: a user's status is written by its server's reconcile (so that
//! duplicate usernames are decided in one place); this controller only reports users whose
//! server does not exist, and objects the types reject.

use std::sync::Arc;
use std::time::Duration;

use kube::runtime::controller::Action;
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
    let servers: Api<Lenient<FileTransferServer>> =
        Api::namespaced(context.client.clone(), &namespace);
    if servers
        .get_opt(&user.spec.server_ref.name)
        .await
        .map_err(status::StatusError::from)?
        .is_some()
    {
        // The server's reconcile owns this user's status.
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
    status::update_user_status(&api, user, &verdict, (context.now)(), &context).await?;
    Ok(Action::requeue(Duration::from_secs(60)))
}

pub fn error_policy(_: Arc<Lenient<TransferUser>>, _: &ControllerError, _: Arc<Context>) -> Action {
    Action::requeue(Duration::from_secs(30))
}
