//! Parsing one FTP command line (RFC 959 and extensions) into a verb and an argument, purely.
//!
//! No library parses FTP commands on their own (libunftp's parser is internal to its server
//! loop), so this is ours; it is small and fuzzable.

/// A parsed command line: the verb upper-cased, the argument verbatim (may contain spaces).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandLine {
    pub verb: String,
    pub argument: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    #[error("empty command line")]
    Empty,
    #[error("command is not valid UTF-8")]
    NotUtf8,
    #[error("command verb {0:?} is not 3-8 letters or digits")]
    BadVerb(String),
    #[error("command contains a control character")]
    ControlCharacter,
}

/// Telnet IAC sequences (RFC 854) that some clients send before ABOR (IP, DM, SYNCH).
fn strip_telnet(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        if bytes[index] == 0xFF && index + 1 < bytes.len() {
            index += 2;
            continue;
        }
        if bytes[index] == 0xF2 && out.is_empty() {
            index += 1;
            continue;
        }
        out.push(bytes[index]);
        index += 1;
    }
    out
}

/// Parses a line without its CRLF.
pub fn parse(line: &[u8]) -> Result<CommandLine, CommandError> {
    let line = strip_telnet(line);
    let text = std::str::from_utf8(&line).map_err(|_| CommandError::NotUtf8)?;
    if text.chars().any(|c| c.is_control() && c != '\t') {
        return Err(CommandError::ControlCharacter);
    }
    let text = text.trim_start();
    if text.trim().is_empty() {
        return Err(CommandError::Empty);
    }
    let (verb, argument) = match text.split_once(' ') {
        Some((verb, argument)) => (verb, argument),
        None => (text, ""),
    };
    if !(3..=8).contains(&verb.len()) || !verb.chars().all(|c| c.is_ascii_alphanumeric()) {
        let shown: String = verb.chars().take(16).collect();
        return Err(CommandError::BadVerb(shown));
    }
    Ok(CommandLine {
        verb: verb.to_ascii_uppercase(),
        argument: argument.to_string(),
    })
}

/// The argument of LIST/NLST/STAT without `ls`-style options (`-la`), which clients send.
pub fn strip_list_options(argument: &str) -> &str {
    let mut rest = argument.trim_start();
    while rest.starts_with('-') {
        match rest.split_once(' ') {
            Some((_, tail)) => rest = tail.trim_start(),
            None => return "",
        }
    }
    rest
}

/// Parses a `PORT h1,h2,h3,h4,p1,p2` argument.
pub fn parse_port(argument: &str) -> Option<std::net::SocketAddr> {
    let numbers: Vec<u8> = argument
        .trim()
        .split(',')
        .map(|n| n.trim().parse().ok())
        .collect::<Option<_>>()?;
    if numbers.len() != 6 {
        return None;
    }
    let ip = std::net::Ipv4Addr::new(numbers[0], numbers[1], numbers[2], numbers[3]);
    let port = u16::from(numbers[4]) << 8 | u16::from(numbers[5]);
    Some(std::net::SocketAddr::new(ip.into(), port))
}

/// Parses an `EPRT |1|h|port|` argument (RFC 2428).
pub fn parse_eprt(argument: &str) -> Option<std::net::SocketAddr> {
    let argument = argument.trim();
    let delimiter = argument.chars().next()?;
    let parts: Vec<&str> = argument.split(delimiter).collect();
    if parts.len() != 5 || !parts[0].is_empty() || !parts[4].is_empty() {
        return None;
    }
    let ip: std::net::IpAddr = parts[2].parse().ok()?;
    match (parts[1], ip) {
        ("1", std::net::IpAddr::V4(_)) | ("2", std::net::IpAddr::V6(_)) => {}
        _ => return None,
    }
    let port: u16 = parts[3].parse().ok()?;
    Some(std::net::SocketAddr::new(ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verbs_are_upper_cased_and_arguments_kept() {
        let parsed = parse(b"stor my file.txt").unwrap();
        assert_eq!(parsed.verb, "STOR");
        assert_eq!(parsed.argument, "my file.txt");
        assert_eq!(parse(b"PWD").unwrap().argument, "");
    }

    #[test]
    fn hostile_lines_are_errors() {
        assert_eq!(parse(b""), Err(CommandError::Empty));
        assert_eq!(parse(b"RETR a\0b"), Err(CommandError::ControlCharacter));
        assert_eq!(parse(b"RETR \xc3\x28"), Err(CommandError::NotUtf8));
        assert!(matches!(
            parse(b"TOOLONGVERB x"),
            Err(CommandError::BadVerb(_))
        ));
        assert!(matches!(parse(b"../ x"), Err(CommandError::BadVerb(_))));
    }

    #[test]
    fn telnet_interrupt_before_abor_is_ignored() {
        assert_eq!(parse(b"\xff\xf4\xff\xf2ABOR").unwrap().verb, "ABOR");
    }

    #[test]
    fn list_options_are_stripped() {
        assert_eq!(strip_list_options("-la"), "");
        assert_eq!(strip_list_options("-l -a dir"), "dir");
        assert_eq!(strip_list_options("dir name"), "dir name");
    }

    #[test]
    fn port_and_eprt_parse() {
        assert_eq!(
            parse_port("127,0,0,1,4,1").unwrap().to_string(),
            "127.0.0.1:1025"
        );
        assert!(parse_port("127,0,0,1,4").is_none());
        assert!(parse_port("300,0,0,1,4,1").is_none());
        assert_eq!(
            parse_eprt("|1|127.0.0.1|2000|").unwrap().to_string(),
            "127.0.0.1:2000"
        );
        assert!(parse_eprt("|2|127.0.0.1|2000|").is_none());
    }
}
