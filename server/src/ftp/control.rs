//! The control connection: plain TCP until `AUTH TLS` (or TLS from the first byte on the
//! implicit listener), bounded line reading that survives oversized lines, and replies.

use std::io;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

pub enum ControlIo {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
    Gone,
}

/// What the next read produced.
pub enum Incoming {
    Line(Vec<u8>),
    /// A line longer than the limit was read and discarded up to its newline.
    TooLong,
    Eof,
}

/// Spare buffer capacity ensured before each read (a command line is rarely longer).
const READ_SIZE: usize = 256;

pub struct Control {
    pub io: ControlIo,
    buffer: Vec<u8>,
    discarding: bool,
    max_line: usize,
    pub last_code: u16,
}

impl Control {
    pub fn new(io: ControlIo, max_line: usize) -> Control {
        Control {
            io,
            buffer: Vec::with_capacity(READ_SIZE),
            discarding: false,
            max_line,
            last_code: 0,
        }
    }

    /// Bytes the client sent after the current line: must be empty when switching to TLS,
    /// or an attacker could inject commands that would run as if encrypted (CVE-2011-0411).
    pub fn has_buffered_input(&self) -> bool {
        !self.buffer.is_empty()
    }

    pub fn take_plain(&mut self) -> Option<TcpStream> {
        match std::mem::replace(&mut self.io, ControlIo::Gone) {
            ControlIo::Plain(stream) => Some(stream),
            other => {
                self.io = other;
                None
            }
        }
    }

    pub fn is_tls(&self) -> bool {
        matches!(self.io, ControlIo::Tls(_))
    }

    pub fn tls(&self) -> Option<&rustls::ServerConnection> {
        match &self.io {
            ControlIo::Tls(stream) => Some(stream.get_ref().1),
            _ => None,
        }
    }

    /// Reads the next line (without CRLF). Cancel-safe: partial input stays in the buffer.
    pub async fn next(&mut self) -> io::Result<Incoming> {
        loop {
            if let Some(position) = self.buffer.iter().position(|&b| b == b'\n') {
                let mut line: Vec<u8> = self.buffer.drain(..=position).collect();
                line.pop();
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                if self.discarding {
                    self.discarding = false;
                    return Ok(Incoming::TooLong);
                }
                if line.len() + 2 > self.max_line {
                    return Ok(Incoming::TooLong);
                }
                if self.buffer.capacity() > 4 * self.max_line {
                    self.buffer.shrink_to(READ_SIZE);
                }
                return Ok(Incoming::Line(line));
            }
            if self.buffer.len() > self.max_line {
                self.buffer.clear();
                self.buffer.shrink_to(READ_SIZE);
                self.discarding = true;
            }
            // Read straight into the buffer's spare capacity: a stack chunk would live in
            // every session's future while it waits, idle, for its next command.
            if self.buffer.capacity() - self.buffer.len() < 64 {
                self.buffer.reserve(READ_SIZE);
            }
            let read = match &mut self.io {
                ControlIo::Plain(stream) => stream.read_buf(&mut self.buffer).await,
                ControlIo::Tls(stream) => stream.read_buf(&mut self.buffer).await,
                ControlIo::Gone => Ok(0),
            };
            let n = match read {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => 0,
                Err(e) => return Err(e),
            };
            if n == 0 {
                return Ok(Incoming::Eof);
            }
        }
    }

    async fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        match &mut self.io {
            ControlIo::Plain(stream) => stream.write_all(bytes).await,
            ControlIo::Tls(stream) => {
                stream.write_all(bytes).await?;
                stream.flush().await
            }
            ControlIo::Gone => Err(io::ErrorKind::NotConnected.into()),
        }
    }

    /// A single-line reply. Newlines in `text` are replaced so a reply can never be split.
    pub async fn reply(&mut self, code: u16, text: &str) -> io::Result<()> {
        self.last_code = code;
        let text = text.replace(['\r', '\n'], " ");
        self.write(format!("{code} {text}\r\n").as_bytes()).await
    }

    /// A multi-line reply: `code-first`, ` line`..., `code last`.
    pub async fn reply_lines(
        &mut self,
        code: u16,
        first: &str,
        lines: &[String],
        last: &str,
    ) -> io::Result<()> {
        self.last_code = code;
        let mut text = format!("{code}-{first}\r\n");
        for line in lines {
            text.push(' ');
            text.push_str(&line.replace(['\r', '\n'], " "));
            text.push_str("\r\n");
        }
        text.push_str(&format!("{code} {last}\r\n"));
        self.write(text.as_bytes()).await
    }

    pub async fn shutdown(&mut self) {
        match &mut self.io {
            ControlIo::Plain(stream) => {
                let _ = stream.shutdown().await;
            }
            ControlIo::Tls(stream) => {
                let _ = stream.shutdown().await;
            }
            ControlIo::Gone => {}
        }
    }
}
