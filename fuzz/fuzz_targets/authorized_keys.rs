//! `authorized_keys` lines: the config validator (`validate_authorized_key`, run when
//! users.yaml is loaded) and the server's key parser (`parse_authorized_key`, run when a
//! snapshot is built). Invariants: no panic; a line the parser accepts re-encodes to an
//! OpenSSH line that parses to the same key with the same fingerprint.

#![no_main]

use libfuzzer_sys::fuzz_target;
use russh::keys::PublicKey;
use sluice_server::sftp::keys;

fuzz_target!(|data: &[u8]| {
    let Ok(line) = std::str::from_utf8(data) else {
        return;
    };
    let _ = sluice_config::validate_authorized_key(line);
    let Ok(key) = keys::parse_authorized_key(line) else {
        return;
    };
    let fingerprint = keys::fingerprint(&key);
    assert!(fingerprint.starts_with("SHA256:"), "{fingerprint}");
    let encoded = key.to_openssh().expect("a parsed key encodes");
    let again = keys::parse_authorized_key(&encoded).expect("an encoded key parses");
    assert_eq!(again.key_data(), key.key_data(), "{line:?}");
    assert_eq!(keys::fingerprint(&again), fingerprint);
    // The key blob a client offers (SSH wire format) identifies the same key.
    let blob = key.to_bytes().expect("a parsed key has a wire form");
    let from_wire = PublicKey::from_bytes(&blob).expect("a key's own wire form parses");
    assert_eq!(from_wire.key_data(), key.key_data(), "{line:?}");
});
