//! A transparent wrapper around the TCP stream that keeps a copy of the first bytes the client
//! sends: its version line and its (cleartext) KEXINIT. russh does not expose the negotiated
//! algorithms, so the audit log derives them from the client's lists and ours with the same
//! rule SSH uses (RFC 4253 §7.1: the first client algorithm the server also supports).

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// How much of the client's first bytes to keep: enough for a version line and a KEXINIT.
const CAPTURE_BYTES: usize = 16 * 1024;

#[derive(Default)]
pub struct Capture {
    bytes: Vec<u8>,
    done: bool,
}

pub type SharedCapture = Arc<Mutex<Capture>>;

/// Ends a connection from outside russh: once fired, every read and write of the stream
/// fails, so the session task ends even when the peer never answers a DISCONNECT.
#[derive(Default)]
pub struct KillSwitch {
    fired: AtomicBool,
    waker: Mutex<Option<Waker>>,
}

impl KillSwitch {
    pub fn fire(&self) {
        self.fired.store(true, Ordering::SeqCst);
        if let Some(waker) = self.waker.lock().ok().and_then(|mut w| w.take()) {
            waker.wake();
        }
    }

    fn check(&self, cx: &Context<'_>) -> Option<std::io::Error> {
        if self.fired.load(Ordering::SeqCst) {
            return Some(std::io::Error::new(
                std::io::ErrorKind::ConnectionAborted,
                "connection ended by the server",
            ));
        }
        if let Ok(mut slot) = self.waker.lock() {
            match slot.as_ref() {
                Some(waker) if waker.will_wake(cx.waker()) => {}
                _ => *slot = Some(cx.waker().clone()),
            }
        }
        None
    }
}

pub struct Tap<S> {
    inner: S,
    capture: Option<SharedCapture>,
    kill: Arc<KillSwitch>,
}

impl<S> Tap<S> {
    pub fn new(inner: S, capture: SharedCapture, kill: Arc<KillSwitch>) -> Self {
        Tap {
            inner,
            capture: Some(capture),
            kill,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Tap<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if let Some(error) = self.kill.check(cx) {
            return Poll::Ready(Err(error));
        }
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Some(capture) = &self.capture {
            let mut stop = false;
            if let Ok(mut guard) = capture.lock() {
                let room = CAPTURE_BYTES.saturating_sub(guard.bytes.len());
                let new = &buf.filled()[before..];
                guard.bytes.extend_from_slice(&new[..new.len().min(room)]);
                if guard.bytes.len() >= CAPTURE_BYTES || guard.done {
                    guard.done = true;
                    stop = true;
                }
            }
            if stop {
                self.capture = None;
            }
        }
        result
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tap<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if let Some(error) = self.kill.check(cx) {
            return Poll::Ready(Err(error));
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        if let Some(error) = self.kill.check(cx) {
            return Poll::Ready(Err(error));
        }
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// What the client offered, from its version line and KEXINIT.
#[derive(Debug, Default, Clone)]
pub struct ClientHello {
    pub version: String,
    pub kex: Vec<String>,
    pub host_key: Vec<String>,
    pub cipher: Vec<String>,
    pub mac: Vec<String>,
}

/// Stops capturing and parses what was captured.
pub fn client_hello(capture: &SharedCapture) -> Option<ClientHello> {
    let mut guard = capture.lock().ok()?;
    guard.done = true;
    parse(&guard.bytes)
}

fn parse(bytes: &[u8]) -> Option<ClientHello> {
    // Lines before the version line are allowed (RFC 4253 §4.2).
    let mut rest = bytes;
    let version = loop {
        let end = rest.iter().position(|&b| b == b'\n')?;
        let line = String::from_utf8_lossy(&rest[..end])
            .trim_end_matches('\r')
            .to_string();
        rest = &rest[end + 1..];
        if line.starts_with("SSH-") {
            break line;
        }
    };
    let mut hello = ClientHello {
        version: version.chars().take(255).collect(),
        ..Default::default()
    };
    // uint32 packet_length, byte padding_length, payload (byte SSH_MSG_KEXINIT = 20,
    // byte[16] cookie, name-lists...).
    let length = u32::from_be_bytes(rest.get(..4)?.try_into().ok()?) as usize;
    let packet = rest.get(4..4 + length.min(rest.len().saturating_sub(4)))?;
    let payload = packet.get(1..)?;
    if payload.first() != Some(&20) {
        return Some(hello);
    }
    let mut cursor = payload.get(17..)?;
    let mut lists = Vec::new();
    for _ in 0..5 {
        let len = u32::from_be_bytes(cursor.get(..4)?.try_into().ok()?) as usize;
        let text = cursor.get(4..4 + len)?;
        lists.push(
            String::from_utf8_lossy(text)
                .split(',')
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect::<Vec<_>>(),
        );
        cursor = &cursor[4 + len..];
    }
    // kex, host key, cipher c->s, cipher s->c, mac c->s
    hello.kex = std::mem::take(&mut lists[0]);
    hello.host_key = std::mem::take(&mut lists[1]);
    hello.cipher = std::mem::take(&mut lists[2]);
    hello.mac = std::mem::take(&mut lists[4]);
    Some(hello)
}

/// RFC 4253 §7.1: the first algorithm on the client's list that the server also supports.
pub fn negotiate(client: &[String], server: &[String]) -> Option<String> {
    client.iter().find(|c| server.contains(c)).cloned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name_list(out: &mut Vec<u8>, names: &str) {
        out.extend_from_slice(&(names.len() as u32).to_be_bytes());
        out.extend_from_slice(names.as_bytes());
    }

    #[test]
    fn parses_version_and_kexinit() {
        let mut payload = vec![20u8];
        payload.extend_from_slice(&[7; 16]);
        name_list(&mut payload, "sntrup761x25519-sha512,curve25519-sha256");
        name_list(&mut payload, "ssh-ed25519");
        name_list(&mut payload, "aes128-ctr,chacha20-poly1305@openssh.com");
        name_list(&mut payload, "aes128-ctr");
        name_list(&mut payload, "hmac-sha2-256-etm@openssh.com");
        let mut bytes = b"banner\r\nSSH-2.0-OpenSSH_9.2p1 Debian\r\n".to_vec();
        bytes.extend_from_slice(&((payload.len() + 1) as u32).to_be_bytes());
        bytes.push(0);
        bytes.extend_from_slice(&payload);
        let hello = parse(&bytes).unwrap();
        assert_eq!(hello.version, "SSH-2.0-OpenSSH_9.2p1 Debian");
        assert_eq!(hello.kex.len(), 2);
        assert_eq!(hello.mac, vec!["hmac-sha2-256-etm@openssh.com"]);
        let server = vec![
            "chacha20-poly1305@openssh.com".to_string(),
            "aes128-ctr".to_string(),
        ];
        assert_eq!(negotiate(&hello.cipher, &server).unwrap(), "aes128-ctr");
    }
}
