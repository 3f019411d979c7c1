//! What the server pods have loaded: a TransferUser is reported Ready only once every ready
//! pod of its server serves the users.yaml shard that holds it. Writing the shard Secret is not
//! enough (the kubelet updates Secret volumes about a minute later, and a pod keeps its
//! previous snapshot while a shard is invalid), so each ready pod is asked over its health port
//! (`GET /loaded`: the SHA-256 of each users file it serves) and compared with what was
//! rendered.

use std::collections::BTreeMap;
use std::time::Duration;

use kube::Client;
use serde::Deserialize;
use tracing::debug;

use crate::crd::FileTransferServer;
use crate::render::Names;

/// How soon a reconcile looks again while a pod has not loaded a shard yet.
pub const RECHECK: Duration = Duration::from_secs(5);

/// `GET /loaded` of one pod.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Answer {
    users_files: BTreeMap<String, String>,
}

/// The users files each ready pod serves (file name → SHA-256 hex); a pod that did not
/// answer serves nothing as far as the operator knows.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Loaded {
    pub pods: BTreeMap<String, BTreeMap<String, String>>,
}

/// The name of shard `index`'s file in the pods' users directory.
pub fn shard_file(index: usize) -> String {
    format!("users-{index:02}.yaml")
}

/// Whether every ready pod serves `digest` as `file`: `Ok` or the reason it is not (for the
/// user's `Ready` message).
pub fn served(loaded: &Loaded, file: &str, digest: &str) -> Result<(), String> {
    if loaded.pods.is_empty() {
        return Err("no pod of the server is ready yet to load it".to_string());
    }
    let lagging: Vec<&str> = loaded
        .pods
        .iter()
        .filter(|(_, files)| files.get(file).map(String::as_str) != Some(digest))
        .map(|(pod, _)| pod.as_str())
        .collect();
    if lagging.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "users.yaml shard {file} is not loaded yet by pod(s) {} (the kubelet updates Secret volumes within about a minute)",
            lagging.join(", ")
        ))
    }
}

/// Asks every ready pod of `server`; a pod that does not answer counts as serving no file.
pub async fn observe(client: &Client, server: &FileTransferServer) -> Result<Loaded, kube::Error> {
    let Ok(names) = Names::of(server) else {
        return Ok(Loaded::default());
    };
    let endpoints = crate::ban_sync::ready_endpoints(client, server, &names.namespace).await?;
    let calls = endpoints.into_iter().map(|(pod, address)| async move {
        let answer = crate::ban_sync::call(&address, hyper::Method::GET, "/loaded", "", None).await;
        let files = match answer {
            Ok((status, body)) if status == hyper::StatusCode::OK => {
                serde_json::from_slice::<Answer>(&body)
                    .map(|a| a.users_files)
                    .unwrap_or_default()
            }
            other => {
                debug!(%pod, %address, ?other, "GET /loaded failed");
                BTreeMap::new()
            }
        };
        (pod, files)
    });
    Ok(Loaded {
        pods: futures::future::join_all(calls).await.into_iter().collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loaded(pods: &[(&str, &[(&str, &str)])]) -> Loaded {
        Loaded {
            pods: pods
                .iter()
                .map(|(pod, files)| {
                    (
                        pod.to_string(),
                        files
                            .iter()
                            .map(|(f, d)| (f.to_string(), d.to_string()))
                            .collect(),
                    )
                })
                .collect(),
        }
    }

    #[test]
    fn a_shard_is_served_when_every_ready_pod_has_loaded_its_rendered_content() {
        let both = loaded(&[
            (
                "files-0",
                &[("users-00.yaml", "aa"), ("users-01.yaml", "bb")],
            ),
            (
                "files-1",
                &[("users-00.yaml", "aa"), ("users-01.yaml", "b0")],
            ),
        ]);
        assert_eq!(served(&both, "users-00.yaml", "aa"), Ok(()));
        let lagging = served(&both, "users-01.yaml", "bb").unwrap_err();
        assert!(lagging.contains("users-01.yaml"), "{lagging}");
        assert!(
            lagging.contains("files-1") && !lagging.contains("files-0"),
            "{lagging}"
        );
        assert!(served(&both, "users-02.yaml", "cc").is_err());
        let none = served(&Loaded::default(), "users-00.yaml", "aa").unwrap_err();
        assert!(none.contains("no pod"), "{none}");
        assert_eq!(shard_file(2), "users-02.yaml");
    }
}
