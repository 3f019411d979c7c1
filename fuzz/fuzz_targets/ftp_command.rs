//! The FTP command line parser and the argument parsers behind it (PORT, EPRT, LIST options,
//! virtual paths), fed arbitrary bytes. Invariants: no panic; a parsed command has a 3-8
//! character upper-case alphanumeric verb and an argument without control characters, and
//! re-rendering `VERB argument` parses to the same command; PORT/EPRT addresses re-render to
//! themselves; stripped LIST options are a suffix of the argument.

#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice_server::ftp::command::{self, CommandLine};
use sluice_server::vpath::VirtualPath;

fn render(command: &CommandLine) -> String {
    if command.argument.is_empty() {
        command.verb.clone()
    } else {
        format!("{} {}", command.verb, command.argument)
    }
}

fn check_argument(argument: &str) {
    let stripped = command::strip_list_options(argument);
    assert!(argument.ends_with(stripped), "{argument:?} -> {stripped:?}");
    assert!(
        stripped.is_empty()
            || !(stripped.starts_with('-') || stripped.starts_with(char::is_whitespace)),
        "{argument:?} -> {stripped:?}"
    );
    if let Some(address) = command::parse_port(argument) {
        let std::net::IpAddr::V4(ip) = address.ip() else {
            panic!("PORT {argument:?} gave a non-IPv4 address {address}");
        };
        let [a, b, c, d] = ip.octets();
        let (p1, p2) = (address.port() >> 8, address.port() & 0xff);
        let again = command::parse_port(&format!("{a},{b},{c},{d},{p1},{p2}"));
        assert_eq!(again, Some(address), "PORT {argument:?}");
    }
    if let Some(address) = command::parse_eprt(argument) {
        let family = if address.is_ipv4() { 1 } else { 2 };
        let again = command::parse_eprt(&format!("|{family}|{}|{}|", address.ip(), address.port()));
        assert_eq!(again, Some(address), "EPRT {argument:?}");
    }
    if let Ok(path) = VirtualPath::root().resolve(argument) {
        let text = path.to_string();
        assert!(text.starts_with('/'), "{argument:?} -> {text:?}");
        assert_eq!(VirtualPath::root().resolve(&text), Ok(path), "{argument:?}");
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(parsed) = command::parse(data) else {
        return;
    };
    assert!((3..=8).contains(&parsed.verb.len()), "{parsed:?}");
    assert!(
        parsed
            .verb
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit()),
        "{parsed:?}"
    );
    assert!(
        !parsed.argument.chars().any(|c| c.is_control() && c != '\t'),
        "{parsed:?}"
    );
    let rendered = render(&parsed);
    assert_eq!(
        command::parse(rendered.as_bytes()),
        Ok(parsed.clone()),
        "{rendered:?}"
    );
    check_argument(&parsed.argument);
});
