//! The operator's handling of FileTransferServer and TransferUser objects (`examples/*.yaml`
//! as users write them): YAML decoding, the CRD's CEL rules, every renderer, and the user
//! resolution with its field validation. The first byte picks the kind; for a TransferUser,
//! text after the first NUL is the password in its Secret. Invariants: no panic; for a
//! server the API server would admit (CEL rules pass), the rendered server.yaml is accepted
//! by the server's own validation; a resolved users.yaml always passes the server's
//! validation and survives a YAML round trip; each user gets exactly one verdict, ready if and
//! only if it is in users.yaml.

#![no_main]

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use libfuzzer_sys::fuzz_target;
use sluice_config::{ServerConfig, UserList};
use sluice_operator::crd::{FileTransferServer, PasswordPolicy, TransferUser};
use sluice_operator::users::{self, UserInputs};
use sluice_operator::{certs, render};

/// Stands in for argon2 hashing (too slow to fuzz through): a well-formed argon2id PHC string.
const MOCK_HASH: &str =
    "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHRzYWx0$0mvX4BqGgD1+5k3gHgrFhqQ2eFRjkY+v0LwCmMV7b3c";

fn server(text: &str) {
    let Ok(mut fts) = serde_saphyr::from_str::<FileTransferServer>(text) else {
        return;
    };
    fts.metadata.uid.get_or_insert_with(|| "fuzz-uid".into());
    let admitted = kube::core::cel::validate_cel(&fts).is_ok();
    let config = render::server_config(&fts, Some("192.0.2.10"), &BTreeMap::new());
    let yaml = render::to_yaml("server.yaml", &config).expect("server.yaml renders");
    let parsed = ServerConfig::parse("server.yaml", &yaml);
    if admitted {
        let parsed = parsed.unwrap_or_else(|e| {
            panic!("the server refuses the server.yaml rendered for an admitted spec: {e}\n{yaml}")
        });
        assert_eq!(parsed, config);
    }
    let _ = render::config_map(&fts, &yaml);
    let _ = render::stateful_set(&fts, "digest");
    let _ = render::client_service(&fts, None);
    let _ = render::client_service(&fts, Some(fts.spec.replicas.saturating_sub(1)));
    let _ = render::headless_service(&fts);
    let _ = render::network_policy(&fts);
    let _ = render::pod_disruption_budget(&fts);
    let _ = render::selector_labels(&fts);
    if let Some(duration) = &fts.spec.tls.duration {
        let _ = certs::parse_duration("spec.tls.duration", duration);
    }
    if let Some(renew) = &fts.spec.tls.renew_before {
        let _ = certs::parse_duration("spec.tls.renewBefore", renew);
    }
}

fn user(text: &str) {
    let (yaml, password) = text.split_once('\0').unwrap_or((text, "Correct-Horse-9"));
    let Ok(user) = serde_saphyr::from_str::<TransferUser>(yaml) else {
        return;
    };
    let mut secrets = BTreeMap::new();
    if let Some(reference) = &user.spec.auth.password_secret_ref {
        let key = reference.key.clone().unwrap_or_else(|| "password".into());
        let mut secret = Secret::default();
        secret.metadata.name = Some(reference.name.clone());
        secret.metadata.uid = Some("fuzz-secret".into());
        secret.data = Some(BTreeMap::from([(
            key,
            ByteString(password.as_bytes().to_vec()),
        )]));
        secrets.insert(reference.name.clone(), secret);
    }
    let policy = PasswordPolicy::default();
    let all = [user];
    let inputs = UserInputs {
        users: &all,
        secrets: &secrets,
        unmarked: &std::collections::BTreeSet::new(),
        digest_key: b"fuzz-digest-key",
        previous: None,
        policy: &policy,
        object_storage: false,
        now: jiff::Timestamp::from_second(1_800_000_000).expect("a fixed time"),
    };
    let resolved = users::resolve(&inputs, &|_| Some(MOCK_HASH.to_string()));
    assert_eq!(resolved.verdicts.len(), 1, "one verdict per user");
    let verdict = resolved.verdicts.values().next().expect("a verdict");
    assert_eq!(verdict.ready, resolved.list.users.len() == 1, "{verdict:?}");
    assert!(!verdict.message.is_empty());
    let errors = resolved.list.validate("users.yaml");
    assert!(
        errors.is_empty(),
        "the operator wrote an invalid users.yaml: {errors:?}"
    );
    let yaml = render::to_yaml("users.yaml", &resolved.list).expect("users.yaml renders");
    let parsed = UserList::parse("users.yaml", &yaml)
        .unwrap_or_else(|e| panic!("the server refuses the operator's users.yaml: {e}\n{yaml}"));
    assert_eq!(parsed, resolved.list);
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    if which & 1 == 0 {
        server(text);
    } else {
        user(text);
    }
});
