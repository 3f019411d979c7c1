//! The SSH answer to a connection refused before the handshake (session limits, bans): our
//! identification line and one unencrypted `SSH_MSG_DISCONNECT` packet (RFC 4253 §4.2, §6,
//! §11.1), so clients report why ("Received disconnect ...: 12: too many sessions ...") instead
//! of a bare connection reset. Written by hand because russh only sends a disconnect after a
//! full key exchange, which would spend a handshake's CPU on every refused connection.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::limits::LimitError;

/// RFC 4253 §11.1 reason codes.
const SSH_DISCONNECT_HOST_NOT_ALLOWED_TO_CONNECT: u32 = 1;
const SSH_DISCONNECT_TOO_MANY_CONNECTIONS: u32 = 12;
const SSH_MSG_DISCONNECT: u8 = 1;

/// The bytes sent to a refused client: identification line, then the disconnect packet
/// (no cipher or MAC yet: block size 8, at least 4 bytes of padding).
pub fn refusal_bytes(server_id: &str, refused: LimitError) -> Vec<u8> {
    let code = match refused {
        LimitError::Banned | LimitError::NotAllowed => SSH_DISCONNECT_HOST_NOT_ALLOWED_TO_CONNECT,
        LimitError::Total | LimitError::PerIp | LimitError::PerUser | LimitError::Rate => {
            SSH_DISCONNECT_TOO_MANY_CONNECTIONS
        }
    };
    let text = match refused {
        LimitError::NotAllowed => refused.to_string(),
        _ => format!("{refused}; try again later"),
    };
    let mut payload = vec![SSH_MSG_DISCONNECT];
    payload.extend_from_slice(&code.to_be_bytes());
    payload.extend_from_slice(&(text.len() as u32).to_be_bytes());
    payload.extend_from_slice(text.as_bytes());
    payload.extend_from_slice(&0u32.to_be_bytes()); // language tag: empty
    // packet_length (4) + padding_length (1) + payload + padding must be a multiple of 8.
    let mut padding = 8 - (5 + payload.len()) % 8;
    if padding < 4 {
        padding += 8;
    }
    let packet_length = (1 + payload.len() + padding) as u32;
    let mut out = format!("{server_id}\r\n").into_bytes();
    out.extend_from_slice(&packet_length.to_be_bytes());
    out.push(padding as u8);
    out.extend_from_slice(&payload);
    out.extend(std::iter::repeat_n(0u8, padding));
    out
}

/// Sends the refusal, then reads (and discards) what the client sends until it closes, so the
/// close does not turn into a reset that could destroy the unread reply. Bounded to 2 s.
pub async fn refuse(mut stream: TcpStream, server_id: &str, refused: LimitError) {
    let bytes = refusal_bytes(server_id, refused);
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        stream.write_all(&bytes).await?;
        stream.shutdown().await?;
        let mut sink = [0u8; 2048];
        while stream.read(&mut sink).await? > 0 {}
        Ok::<(), std::io::Error>(())
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disconnect_packet_is_well_formed() {
        let bytes = refusal_bytes("SSH-2.0-Sluice", LimitError::PerIp);
        let line_end = bytes.windows(2).position(|w| w == b"\r\n").unwrap();
        assert_eq!(&bytes[..line_end], b"SSH-2.0-Sluice");
        let packet = &bytes[line_end + 2..];
        let length = u32::from_be_bytes(packet[..4].try_into().unwrap()) as usize;
        assert_eq!(packet.len(), 4 + length);
        assert_eq!(packet.len() % 8, 0);
        let padding = packet[4] as usize;
        assert!(padding >= 4);
        let payload = &packet[5..packet.len() - padding];
        assert_eq!(payload[0], SSH_MSG_DISCONNECT);
        assert_eq!(u32::from_be_bytes(payload[1..5].try_into().unwrap()), 12);
        let text_len = u32::from_be_bytes(payload[5..9].try_into().unwrap()) as usize;
        assert_eq!(
            &payload[9..9 + text_len],
            b"too many sessions from your address; try again later"
        );
        assert_eq!(&payload[9 + text_len..], &[0, 0, 0, 0]);
    }

    #[test]
    fn banned_uses_host_not_allowed() {
        let bytes = refusal_bytes("SSH-2.0-Sluice", LimitError::Banned);
        let packet = &bytes[b"SSH-2.0-Sluice\r\n".len()..];
        assert_eq!(u32::from_be_bytes(packet[6..10].try_into().unwrap()), 1);
    }
}
