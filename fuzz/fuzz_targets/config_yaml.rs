//! `server.yaml` and `users.yaml`: YAML parsing plus field validation (`ServerConfig::parse`,
//! `UserList::parse`), as `check-config` and every reload run them. The first byte picks the
//! file. Invariants: no panic; an accepted file has no validation errors, and writing it back
//! as YAML (as the operator does) and parsing that again gives an equal, still valid value;
//! a rejected file names a field or says why in every error.

#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use libfuzzer_sys::fuzz_target;
use sluice_config::{ConfigError, Protocol, ServerConfig, UserList};

fn check_error(error: &ConfigError) {
    assert!(!error.to_string().is_empty());
    for field in error.field_errors() {
        assert!(!field.message.is_empty(), "{field:?}");
    }
}

fn server(text: &str) {
    let config = match ServerConfig::parse("server.yaml", text) {
        Ok(config) => config,
        Err(error) => return check_error(&error),
    };
    assert!(config.validate("server.yaml").is_empty());
    let _ = config.insecure_opt_ins();
    let _ = config.passive.advertised_for("pod-0");
    let yaml = serde_saphyr::to_string(&config).expect("a valid config serialises");
    let again = ServerConfig::parse("server.yaml", &yaml)
        .unwrap_or_else(|e| panic!("re-rendered server.yaml is refused: {e}\n{yaml}"));
    assert_eq!(again, config, "{yaml}");
}

fn users(text: &str) {
    let list = match UserList::parse("users.yaml", text) {
        Ok(list) => list,
        Err(error) => return check_error(&error),
    };
    assert!(list.validate("users.yaml").is_empty());
    let now = jiff::Timestamp::now();
    for user in &list.users {
        assert!(list.find(&user.username).is_some(), "{}", user.username);
        for ip in [
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(Ipv6Addr::LOCALHOST),
            IpAddr::V6(Ipv4Addr::new(192, 0, 2, 1).to_ipv6_mapped()),
        ] {
            let _ = user.login_refusal(Protocol::Sftp, ip, now);
            let _ = user.login_refusal(Protocol::Ftps, ip, now);
        }
        let _ = user.expiry();
    }
    let yaml = serde_saphyr::to_string(&list).expect("a valid users list serialises");
    let again = UserList::parse("users.yaml", &yaml)
        .unwrap_or_else(|e| panic!("re-rendered users.yaml is refused: {e}\n{yaml}"));
    assert_eq!(again, list, "{yaml}");
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
        users(text);
    }
});
