//! The audit log: one JSON object per line for every connection, TLS handshake, login, command
//! and transfer, written by a dedicated thread to stdout and optionally a file. The schema is
//! documented in docs/audit-log.md and kept stable: fields are only ever added.

use std::io::Write;
use std::sync::mpsc;

use serde_json::{Map, Value};

/// Who an event is about: filled in as the session learns it.
#[derive(Debug, Clone, Default)]
pub struct SessionTag {
    pub session: String,
    pub protocol: &'static str,
    pub ip: String,
    pub user: Option<String>,
}

#[derive(Clone)]
pub struct Audit {
    tx: mpsc::Sender<String>,
}

impl Audit {
    /// Starts the writer thread. Events are queued without bound so that a slow log consumer
    /// slows nothing down and loses nothing; the thread flushes after each burst.
    pub fn start(stdout: bool, file: Option<std::fs::File>) -> Audit {
        let (tx, rx) = mpsc::channel::<String>();
        std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || {
                let mut out = std::io::stdout().lock();
                let mut file = file.map(std::io::BufWriter::new);
                while let Ok(first) = rx.recv() {
                    let mut line = Some(first);
                    while let Some(text) = line {
                        if stdout {
                            let _ = out.write_all(text.as_bytes());
                        }
                        if let Some(f) = file.as_mut() {
                            let _ = f.write_all(text.as_bytes());
                        }
                        line = rx.try_recv().ok();
                    }
                    let _ = out.flush();
                    if let Some(f) = file.as_mut() {
                        let _ = f.flush();
                    }
                }
            })
            .ok();
        Audit { tx }
    }

    /// Writes an event with the common fields (`ts`, `event`, `session`, `protocol`, `ip`,
    /// `user`) followed by `fields`.
    pub fn event(&self, tag: &SessionTag, event: &str, fields: Value) {
        let mut map = Map::new();
        map.insert("ts".into(), jiff::Timestamp::now().to_string().into());
        map.insert("event".into(), event.into());
        if !tag.session.is_empty() {
            map.insert("session".into(), tag.session.clone().into());
            map.insert("protocol".into(), tag.protocol.into());
            map.insert("ip".into(), tag.ip.clone().into());
        }
        if let Some(user) = &tag.user {
            map.insert("user".into(), user.clone().into());
        }
        if let Value::Object(extra) = fields {
            map.extend(extra);
        }
        let mut line = Value::Object(map).to_string();
        line.push('\n');
        let _ = self.tx.send(line);
    }

    /// An event that belongs to no session (reloads, start-up).
    pub fn server_event(&self, event: &str, fields: Value) {
        self.event(&SessionTag::default(), event, fields);
    }
}
