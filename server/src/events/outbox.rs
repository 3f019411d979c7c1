//! The durable outbox: events are appended to segment files and fsync'd before
//! [`Outbox::append`] returns, so that an event the server acknowledged to nobody yet but
//! whose operation completed survives a kill -9; a restart replays what the sinks had not
//! acknowledged.
//!
//! On disk, in `events.outboxDir`:
//! - `segment-<first seq>.jsonl`: one `{"seq":N,"event":{...}}` line per event, append-only.
//!   Every run starts a new segment, so a line torn by a crash is only ever the last of a
//!   closed segment and is skipped at replay.
//! - `cursor-<sink>`: the highest sequence number the sink acknowledged (written via a
//!   temporary file and a rename; a lost cursor update only means duplicates).
//!
//! A segment is deleted once every sink acknowledged its last event. One dedicated thread
//! owns the files: it writes each burst of events with one fsync (group commit), so the async
//! threads never block on the disk.
//!
//! When the undelivered events reach `events.maxOutboxBytes`, new uploads are refused
//! ([`super::Events::upload_refusal`]) while the events of operations already under way are
//! still written: an upload the client saw complete always has its event. Other events
//! (downloads, deletes, ...) are dropped, counted and logged while full.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use tokio::sync::{oneshot, watch};

use super::{EventMetrics, EventsError, Kind};
use crate::metrics::Metrics;

/// A segment is closed and a new one started past this size.
const SEGMENT_BYTES: u64 = 4 << 20;
/// Events written with one fsync at most.
const MAX_BATCH: usize = 1024;

/// One undelivered event, as the sinks need it.
#[derive(Debug, Clone)]
pub struct Entry {
    pub seq: u64,
    /// The CloudEvent's `id` (sinks that deduplicate use it).
    pub id: Option<String>,
    pub kind: String,
    pub stored_path: String,
    /// Milliseconds since the epoch when the event was written.
    pub written_ms: u64,
    /// The CloudEvent, serialised.
    pub body: Bytes,
}

struct Append {
    event: serde_json::Value,
    kind: &'static str,
    done: oneshot::Sender<Result<(), String>>,
}

enum Command {
    Append(Append),
    Compact(u64),
}

pub struct Outbox {
    dir: PathBuf,
    tx: Mutex<mpsc::Sender<Command>>,
    queue: Mutex<VecDeque<Entry>>,
    bytes: AtomicU64,
    max_bytes: u64,
    /// The last sequence number made durable; sinks wait on it.
    last_seq: watch::Sender<u64>,
    sinks: Vec<String>,
    cursors: Vec<AtomicU64>,
    source: String,
    metrics: Arc<Metrics>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn segment_name(first: u64) -> String {
    format!("segment-{first:020}.jsonl")
}

fn parse_line(line: &str) -> Option<Entry> {
    let value: serde_json::Value = serde_json::from_str(line).ok()?;
    let seq = value.get("seq")?.as_u64()?;
    let event = value.get("event")?;
    Some(Entry {
        seq,
        id: event.get("id").and_then(|i| i.as_str()).map(str::to_string),
        kind: event.get("type")?.as_str()?.to_string(),
        stored_path: event["data"]["storedPath"]
            .as_str()
            .unwrap_or("")
            .to_string(),
        written_ms: value.get("written").and_then(|w| w.as_u64()).unwrap_or(0),
        body: Bytes::from(event.to_string()),
    })
}

/// What an earlier run left: the closed segments (first, last seq, path) and the events past
/// the lowest cursor.
struct Replayed {
    segments: Vec<(u64, u64, PathBuf)>,
    entries: Vec<Entry>,
    next_seq: u64,
    torn: usize,
}

fn replay(dir: &Path, floor: u64) -> Result<Replayed, EventsError> {
    let read_err = |path: &Path, source| EventsError::Segment {
        path: path.to_path_buf(),
        source,
    };
    let mut names: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| read_err(dir, e))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("segment-") && n.ends_with(".jsonl"))
        })
        .collect();
    names.sort();
    let mut replayed = Replayed {
        segments: Vec::new(),
        entries: Vec::new(),
        next_seq: floor + 1,
        torn: 0,
    };
    for path in names {
        let file = File::open(&path).map_err(|e| read_err(&path, e))?;
        let (mut first, mut last) = (u64::MAX, 0);
        for line in std::io::BufReader::new(file).lines() {
            let line = line.map_err(|e| read_err(&path, e))?;
            match parse_line(&line) {
                Some(entry) => {
                    first = first.min(entry.seq);
                    last = last.max(entry.seq);
                    replayed.next_seq = replayed.next_seq.max(entry.seq + 1);
                    if entry.seq > floor {
                        replayed.entries.push(entry);
                    }
                }
                None => replayed.torn += 1,
            }
        }
        if last <= floor {
            // Fully acknowledged (or empty): gone.
            let _ = std::fs::remove_file(&path);
        } else {
            replayed.segments.push((first, last, path));
        }
    }
    replayed.entries.sort_by_key(|e| e.seq);
    replayed.entries.dedup_by_key(|e| e.seq);
    Ok(replayed)
}

fn read_cursor(dir: &Path, sink: &str) -> u64 {
    std::fs::read_to_string(dir.join(format!("cursor-{sink}")))
        .ok()
        .and_then(|text| text.trim().parse().ok())
        .unwrap_or(0)
}

/// Writes `cursor-<sink>` atomically (temporary file, fsync, rename).
pub fn write_cursor(dir: &Path, sink: &str, seq: u64) -> std::io::Result<()> {
    let temp = dir.join(format!(".cursor-{sink}.tmp"));
    let mut file = File::create(&temp)?;
    file.write_all(format!("{seq}\n").as_bytes())?;
    file.sync_data()?;
    std::fs::rename(&temp, dir.join(format!("cursor-{sink}")))
}

impl Outbox {
    /// Opens `dir` (creating it), replays undelivered events and starts the writer thread.
    /// Blocking: call it off the async threads.
    pub fn open(
        dir: PathBuf,
        max_bytes: u64,
        sinks: Vec<String>,
        source: String,
        metrics: Arc<Metrics>,
    ) -> Result<Arc<Outbox>, EventsError> {
        std::fs::create_dir_all(&dir).map_err(|source| EventsError::OutboxDir {
            path: dir.clone(),
            source,
        })?;
        let cursors: Vec<u64> = sinks.iter().map(|s| read_cursor(&dir, s)).collect();
        let floor = cursors.iter().copied().min().unwrap_or(0);
        let replayed = replay(&dir, floor)?;
        if replayed.torn > 0 {
            tracing::warn!(
                lines = replayed.torn,
                "events: skipped torn outbox lines (an earlier crash interrupted a write whose event was never acknowledged)"
            );
        }
        let first = replayed.next_seq;
        let path = dir.join(segment_name(first));
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|source| EventsError::OutboxDir {
                path: path.clone(),
                source,
            })?;
        let bytes: u64 = replayed.entries.iter().map(|e| e.body.len() as u64).sum();
        tracing::info!(
            dir = %dir.display(),
            undelivered = replayed.entries.len(),
            bytes,
            "events: outbox opened"
        );
        let (tx, rx) = mpsc::channel();
        let outbox = Arc::new(Outbox {
            dir: dir.clone(),
            tx: Mutex::new(tx),
            queue: Mutex::new(replayed.entries.into()),
            bytes: AtomicU64::new(bytes),
            max_bytes,
            last_seq: watch::channel(first - 1).0,
            sinks,
            cursors: cursors.into_iter().map(AtomicU64::new).collect(),
            source,
            metrics,
        });
        outbox.publish_depth();
        // Every series an alert selects exists at 0 from the start: `increase()` cannot see
        // the first event of a series that appears at 1.
        for reason in ["full", "io"] {
            Metrics::add(&outbox.metrics.events.dropped, &[("reason", reason)], 0);
        }
        for sink in &outbox.sinks {
            for result in ["ok", "failed", "dead_letter"] {
                Metrics::add(
                    &outbox.metrics.events.deliveries,
                    &[("sink", sink), ("result", result)],
                    0,
                );
            }
        }
        let writer = Writer {
            outbox: Arc::downgrade(&outbox),
            dir,
            segments: replayed.segments,
            current: (first, file, 0),
            next_seq: first,
        };
        std::thread::Builder::new()
            .name("events-outbox".into())
            .spawn(move || writer.run(rx))
            .map_err(|source| EventsError::OutboxDir {
                path: outbox.dir.clone(),
                source,
            })?;
        Ok(outbox)
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    pub fn metrics(&self) -> &EventMetrics {
        &self.metrics.events
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn sink_name(&self, index: usize) -> &str {
        &self.sinks[index]
    }

    pub fn is_full(&self) -> bool {
        self.bytes.load(Ordering::Relaxed) >= self.max_bytes
    }

    /// Writes `event` durably; returns when it is fsync'd. Upload events are written even
    /// when the outbox is full (their upload was admitted before it filled); others are then
    /// dropped and counted.
    pub async fn append(&self, kind: Kind, event: serde_json::Value) {
        if kind != Kind::Uploaded && self.is_full() {
            self.drop_event(kind, "full", "the outbox is full");
            return;
        }
        let (done, wait) = oneshot::channel();
        let sent = self
            .tx
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .send(Command::Append(Append {
                event,
                kind: kind.type_name(),
                done,
            }));
        let result = match sent {
            Ok(()) => wait
                .await
                .unwrap_or_else(|_| Err(EventsError::WriterStopped.to_string())),
            Err(_) => Err(EventsError::WriterStopped.to_string()),
        };
        if let Err(error) = result {
            self.drop_event(kind, "io", &error);
        }
    }

    fn drop_event(&self, kind: Kind, reason: &'static str, error: &str) {
        Metrics::inc(&self.metrics.events.dropped, &[("reason", reason)]);
        tracing::error!(
            event_type = kind.type_name(),
            reason,
            error,
            "events: EVENT DROPPED, not written to the outbox"
        );
    }

    /// The first event after `seq`, if one is durable.
    pub fn next_after(&self, seq: u64) -> Option<Entry> {
        let queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        let index = queue.partition_point(|e| e.seq <= seq);
        queue.get(index).cloned()
    }

    /// A receiver that changes whenever new events become durable.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.last_seq.subscribe()
    }

    pub fn cursor(&self, sink: usize) -> u64 {
        self.cursors[sink].load(Ordering::Relaxed)
    }

    /// Sink `sink` is done with every event up to `seq`: events every sink is done with leave
    /// memory, and their segments are deleted.
    pub fn ack(&self, sink: usize, seq: u64) {
        self.cursors[sink].fetch_max(seq, Ordering::Relaxed);
        let floor = self
            .cursors
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .min()
            .unwrap_or(seq);
        let mut freed = 0;
        {
            let mut queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
            while queue.front().is_some_and(|e| e.seq <= floor) {
                if let Some(entry) = queue.pop_front() {
                    freed += entry.body.len() as u64;
                }
            }
        }
        if freed > 0 {
            self.bytes.fetch_sub(freed, Ordering::Relaxed);
            self.publish_depth();
            let _ = self
                .tx
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .send(Command::Compact(floor));
        }
    }

    pub fn publish_depth(&self) {
        let queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        self.metrics.events.outbox_events.set(queue.len() as i64);
        self.metrics
            .events
            .outbox_bytes
            .set(self.bytes.load(Ordering::Relaxed) as i64);
        let age = queue
            .front()
            .map(|e| now_ms().saturating_sub(e.written_ms) / 1000)
            .unwrap_or(0);
        self.metrics
            .events
            .oldest_undelivered_seconds
            .set(age as i64);
    }

    fn accept(&self, entries: Vec<Entry>, last: u64) {
        let added: u64 = entries.iter().map(|e| e.body.len() as u64).sum();
        let was_full = self.is_full();
        self.queue
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend(entries);
        self.bytes.fetch_add(added, Ordering::Relaxed);
        if !was_full && self.is_full() {
            tracing::error!(
                max_bytes = self.max_bytes,
                "events: the outbox is full (sinks are not keeping up): new uploads are refused until events are delivered"
            );
        }
        self.publish_depth();
        self.last_seq.send_replace(last);
    }
}

struct Writer {
    outbox: std::sync::Weak<Outbox>,
    dir: PathBuf,
    /// Closed segments: first seq, last seq, path.
    segments: Vec<(u64, u64, PathBuf)>,
    /// The open segment: first seq, file, bytes written.
    current: (u64, File, u64),
    next_seq: u64,
}

impl Writer {
    fn run(mut self, rx: mpsc::Receiver<Command>) {
        while let Ok(first) = rx.recv() {
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(command) => batch.push(command),
                    Err(_) => break,
                }
            }
            let mut appends = Vec::new();
            let mut compact = None;
            for command in batch {
                match command {
                    Command::Append(append) => appends.push(append),
                    Command::Compact(floor) => compact = Some(floor),
                }
            }
            if !appends.is_empty() {
                self.write(appends);
            }
            if let Some(floor) = compact {
                self.compact(floor);
            }
        }
    }

    fn write(&mut self, appends: Vec<Append>) {
        let written = now_ms();
        let mut text = Vec::new();
        let mut entries = Vec::new();
        let mut waiters = Vec::new();
        for Append { event, kind, done } in appends {
            let seq = self.next_seq;
            self.next_seq += 1;
            let line = serde_json::json!({"seq": seq, "written": written, "event": &event});
            text.extend_from_slice(line.to_string().as_bytes());
            text.push(b'\n');
            entries.push(Entry {
                seq,
                id: event.get("id").and_then(|i| i.as_str()).map(str::to_string),
                kind: kind.to_string(),
                stored_path: event["data"]["storedPath"]
                    .as_str()
                    .unwrap_or("")
                    .to_string(),
                written_ms: written,
                body: Bytes::from(event.to_string()),
            });
            waiters.push(done);
        }
        let last = self.next_seq - 1;
        let file = &mut self.current.1;
        let result = file
            .write_all(&text)
            .and_then(|()| file.sync_data())
            .map_err(|e| e.to_string());
        match &result {
            Ok(()) => {
                self.current.2 += text.len() as u64;
                if let Some(outbox) = self.outbox.upgrade() {
                    outbox.accept(entries, last);
                }
            }
            Err(error) => {
                tracing::error!(%error, "events: cannot write or fsync the outbox segment");
                // The segment may now end in a partial line; continue in a new one.
                self.roll();
            }
        }
        for done in waiters {
            let _ = done.send(result.clone());
        }
        if self.current.2 >= SEGMENT_BYTES {
            self.roll();
        }
    }

    fn roll(&mut self) {
        let first = self.next_seq;
        let path = self.dir.join(segment_name(first));
        match OpenOptions::new().create(true).append(true).open(&path) {
            Ok(file) => {
                let (old_first, _, _) = std::mem::replace(&mut self.current, (first, file, 0));
                if first > old_first {
                    self.segments.push((
                        old_first,
                        first - 1,
                        self.dir.join(segment_name(old_first)),
                    ));
                }
            }
            Err(error) => {
                tracing::error!(%error, path = %path.display(), "events: cannot start a new outbox segment");
            }
        }
    }

    fn compact(&mut self, floor: u64) {
        self.segments.retain(|(_, last, path)| {
            if *last <= floor {
                if let Err(error) = std::fs::remove_file(path) {
                    tracing::warn!(%error, path = %path.display(), "events: cannot delete a delivered segment");
                }
                false
            } else {
                true
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn open(dir: &Path, sinks: &[&str]) -> Arc<Outbox> {
        Outbox::open(
            dir.to_path_buf(),
            1 << 20,
            sinks.iter().map(|s| s.to_string()).collect(),
            "/sluice/test".into(),
            Metrics::new(),
        )
        .unwrap()
    }

    fn event(n: u64) -> serde_json::Value {
        serde_json::json!({"type": "dev.sluice.file.uploaded", "id": format!("e{n}"), "data": {"storedPath": format!("/u/{n}")}})
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn events_survive_a_restart_until_every_sink_acknowledged_them() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = open(dir.path(), &["a", "b"]);
        for n in 1..=3 {
            outbox.append(Kind::Uploaded, event(n)).await;
        }
        assert_eq!(outbox.next_after(0).unwrap().seq, 1);
        outbox.ack(0, 3);
        outbox.ack(1, 1);
        write_cursor(dir.path(), "a", 3).unwrap();
        write_cursor(dir.path(), "b", 1).unwrap();
        drop(outbox);
        let again = open(dir.path(), &["a", "b"]);
        assert_eq!(again.cursor(0), 3);
        let next = again.next_after(again.cursor(1)).unwrap();
        assert_eq!(next.seq, 2);
        assert!(String::from_utf8_lossy(&next.body).contains("\"e2\""));
        assert_eq!(next.stored_path, "/u/2");
        assert_eq!(next.id.as_deref(), Some("e2"));
        again.append(Kind::Uploaded, event(4)).await;
        assert_eq!(
            again.next_after(3).unwrap().seq,
            4,
            "sequence numbers continue"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_torn_last_line_is_skipped_and_acknowledged_segments_are_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = open(dir.path(), &["a"]);
        outbox.append(Kind::Uploaded, event(1)).await;
        drop(outbox);
        let segment = dir.path().join(segment_name(1));
        let mut file = OpenOptions::new().append(true).open(&segment).unwrap();
        file.write_all(b"{\"seq\":2,\"even").unwrap();
        let again = open(dir.path(), &["a"]);
        assert_eq!(again.next_after(0).unwrap().seq, 1);
        assert!(again.next_after(1).is_none());
        again.ack(0, 1);
        // The writer deletes the closed segment asynchronously.
        for _ in 0..100 {
            if !segment.exists() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(!segment.exists(), "the acknowledged segment is compacted");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_full_outbox_refuses_uploads_but_keeps_their_events_and_drops_others() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = Outbox::open(
            dir.path().to_path_buf(),
            50,
            vec!["a".into()],
            "s".into(),
            Metrics::new(),
        )
        .unwrap();
        outbox.append(Kind::Uploaded, event(1)).await;
        assert!(outbox.is_full());
        outbox.append(Kind::Deleted, event(2)).await;
        outbox.append(Kind::Uploaded, event(3)).await;
        assert_eq!(
            outbox.next_after(1).unwrap().seq,
            2,
            "the delete was dropped"
        );
        assert!(String::from_utf8_lossy(&outbox.next_after(1).unwrap().body).contains("e3"));
        outbox.ack(0, 2);
        assert!(!outbox.is_full());
    }
}
