//! The SFTP v3 subsystem of one SSH channel: our own request loop over `russh-sftp`'s protocol
//! types, the same confinement ([`UserFs`]), permissions and audit events as FTPS, and file
//! handles backed by read-ahead / write-behind workers so that bulk transfers never take a
//! thread-pool hop per request.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use russh_sftp::protocol::{FileAttributes, OpenFlags, Packet as Request, StatusCode};
use serde_json::json;
use sluice_config::{Permission, Protocol, User};
use tokio::io::{AsyncReadExt, BufReader};
use tokio::sync::watch;

use super::codec::{self, Packet, Reader};
use super::files::{ReadAhead, WriteBehind};
use super::replies::{self, ReplyWriter};
use crate::audit::{Audit, SessionTag};
use crate::events::{Detail, Events, Kind};
use crate::filework::HandleSlot;
use crate::metrics::Metrics;
use crate::retention::InUse;
use crate::snapshot::Snapshot;
use crate::userfs::{self, EntryKind, FsError, OpenForWrite, Replace, UserFs};
use crate::vpath::VirtualPath;

/// Largest request we read (a 255 KiB WRITE plus its header, as OpenSSH's limit).
pub const MAX_PACKET: u32 = 256 * 1024;
/// Largest READ/WRITE payload we advertise in `limits@openssh.com` (OpenSSH's value).
pub const MAX_IO: u32 = MAX_PACKET - 1024;
/// Largest READ we answer and advertise (`limits@openssh.com` max-read-length): OpenSSH keeps 64
/// reads of that size outstanding, and all of their replies must fit in
/// `budgets.maxQueuedReplyBytes` (at least [`sluice_config::MIN_QUEUED_REPLY_BYTES`]): a
/// request loop waiting for reply room stops reading requests, russh's channel queue fills,
/// and the connection can no longer take the client's window adjustments (found: OpenSSH `get`
/// of a large file stalled after ~24 MB with 255 KiB reads and a 4 MiB budget).
pub const MAX_READ: u32 = sluice_config::MAX_SFTP_READ;
/// The READ length we advertise (`limits@openssh.com` max-read-length; longer READs are still
/// answered up to [`MAX_READ`]): 64 KiB less a DATA reply's header, so that a reply to a client
/// that reads what we advertise (OpenSSH's `sftp` does) is exactly two 32 KiB SSH packets and
/// leaves without being copied or batched (`replies`).
pub const ADVERTISED_READ: u32 = 2 * replies::SSH_PACKET as u32 - codec::DATA_HEADER as u32;
/// Names per READDIR reply.
const NAMES_PER_READDIR: usize = 128;

const FXP_INIT: u8 = 1;
const FXP_WRITE: u8 = 6;

pub struct SessionEnv {
    pub audit: Audit,
    pub metrics: Arc<Metrics>,
    pub snapshot: watch::Receiver<Arc<Snapshot>>,
    pub tag: SessionTag,
    pub client_ip: IpAddr,
    pub user: Arc<User>,
    pub fs: UserFs,
    /// Open file handles of the connection (all its SFTP channels): a draining server waits
    /// while it is above zero.
    pub open_files: Arc<std::sync::atomic::AtomicUsize>,
    /// Open handles of any kind on the connection (all its SFTP channels), counted against
    /// `budgets.maxOpenHandlesPerConnection`.
    pub open_handles: Arc<std::sync::atomic::AtomicUsize>,
    /// File events (see `crate::events`).
    pub events: Events,
}

enum OpenHandle {
    Read(ReadHandle),
    Write(Box<WriteHandle>),
    Dir(DirHandle),
}

struct ReadHandle {
    path: VirtualPath,
    ahead: ReadAhead,
    started: Instant,
    /// Size at open: a download that read this much is complete (for `afterDownload`).
    size: u64,
    /// Keeps retention away from the file while the handle is open.
    _in_use: InUse,
}

struct WriteHandle {
    path: VirtualPath,
    worker: WriteBehind,
    temp: Option<String>,
    /// Whether publishing the atomic temporary may replace a file created meanwhile.
    replace: Replace,
    mode: &'static str,
    readable: bool,
    started: Instant,
    /// Keeps retention away from the file while the handle is open.
    _in_use: InUse,
}

struct DirHandle {
    path: VirtualPath,
    cursor: userfs::DirCursor,
    /// Entries sent so far.
    position: usize,
    /// True once the directory's end was reached.
    finished: bool,
    /// Bytes of `SSH_FXP_NAME` packets sent, for the `list` transfer event at close.
    bytes_sent: u64,
    started: Instant,
}

/// Why the loop ended.
pub enum End {
    ClientClosed,
    /// The account was removed or restricted by a reload.
    Ended(String),
    Fatal(String),
    Io(String),
    /// A budget (`budgets.*`: name, limit, reason) ended the session; audited by `run`, then
    /// reported as [`End::Ended`].
    Budget(&'static str, u64, String),
}

struct Sftp {
    env: SessionEnv,
    handles: HashMap<String, OpenHandle>,
    /// Each open handle's place in the handle budgets, freed with the handle.
    slots: HashMap<String, HandleSlot>,
    next_handle: u64,
    /// This channel's share of `env.open_files`.
    open_files: usize,
}

fn fs_status(error: &FsError) -> (StatusCode, String) {
    match error {
        FsError::NotFound(_) => (StatusCode::NoSuchFile, error.to_string()),
        FsError::Denied(_) => (StatusCode::PermissionDenied, error.to_string()),
        _ => (StatusCode::Failure, error.to_string()),
    }
}

fn io_failure(id: u32, error: &std::io::Error) -> Vec<u8> {
    codec::status(id, StatusCode::Failure, &error.to_string())
}

/// Replies waiting for the writer task, bounded in bytes by `budgets.maxQueuedReplyBytes`
/// (each reply holds its size in permits until it is written): a client that pipelines READs
/// and never reads the answers holds at most that much memory, not 256 x 255 KiB.
struct ReplyQueue {
    tx: tokio::sync::mpsc::UnboundedSender<(Vec<u8>, tokio::sync::OwnedSemaphorePermit)>,
    bytes: Arc<tokio::sync::Semaphore>,
    limit: u32,
}

/// Runs the SFTP subsystem on `channel` until the client closes it or breaks the protocol.
///
/// Requests are read by an intake task, answered by this one, and the replies written by a
/// separate writer task.
/// The split matters with russh: it adjusts the SSH window when data arrives (not when we
/// consume it) and stops its whole connection loop when a channel's queue is full. A single
/// task blocked writing a reply (waiting for the client's WINDOW_ADJUST) while the client keeps
/// sending requests would therefore deadlock the connection with large pipelined READs.
pub async fn run(channel: russh::Channel<russh::server::Msg>, env: SessionEnv) -> End {
    let (mut read_half, write_half) = channel.split();
    let (queue, intake) = tokio::sync::mpsc::unbounded_channel();
    let intake_task = tokio::spawn(async move {
        let reader = BufReader::with_capacity(64 * 1024, read_half.make_reader());
        run_intake(reader, queue).await;
    });
    serve_session(intake, intake_task, write_half, env).await
}

/// [`run`] over any byte stream instead of an SSH channel (the fuzzer's in-memory pipe).
pub async fn run_stream<S>(stream: S, env: SessionEnv) -> End
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (read_half, write_half) = tokio::io::split(stream);
    let (queue, intake) = tokio::sync::mpsc::unbounded_channel();
    let intake_task = tokio::spawn(async move {
        run_intake(BufReader::with_capacity(64 * 1024, read_half), queue).await;
    });
    serve_session(intake, intake_task, replies::StreamSink(write_half), env).await
}

/// Answers the requests the intake task reads, writing replies to `sink`.
async fn serve_session<K>(
    mut intake: Intake,
    intake_task: tokio::task::JoinHandle<()>,
    sink: K,
    env: SessionEnv,
) -> End
where
    K: replies::Sink + Send + 'static,
{
    let (tx, mut queued_replies) = tokio::sync::mpsc::unbounded_channel();
    let limit = env.snapshot.borrow().config.budgets.max_queued_reply_bytes;
    let out = ReplyQueue {
        tx,
        bytes: Arc::new(tokio::sync::Semaphore::new(limit as usize)),
        limit,
    };
    let writer_task = tokio::spawn(async move {
        let mut writer = ReplyWriter::new(sink);
        while let Some((reply, queued)) = queued_replies.recv().await {
            let written = writer.write(reply, !queued_replies.is_empty()).await;
            drop(queued);
            if written.is_err() {
                return;
            }
        }
        if writer.flush().await.is_ok() {
            writer.into_sink().close().await;
        }
    });
    let idle = std::time::Duration::from_secs(env.snapshot.borrow().config.timeouts.idle_seconds);
    let mut sftp = Sftp {
        env,
        handles: HashMap::new(),
        slots: HashMap::new(),
        next_handle: 1,
        open_files: 0,
    };
    let mut end = sftp.serve(&mut intake, &out, idle).await;
    intake_task.abort();
    if let End::Budget(budget, limit, reason) = end {
        sftp.budget_exceeded(budget, limit, "disconnected");
        end = End::Ended(reason);
    }
    sftp.close_all().await;
    sftp.count_open_files();
    drop(out);
    finish_writer(writer_task, std::time::Duration::from_secs(5)).await;
    end
}

/// Gives the reply writer `grace` to send what it holds, then stops it: a writer still
/// waiting for the client's window by then never gets it (the session is over), and dropping
/// its handle would leave it holding its queued replies for good (found in review: a client
/// that shrank its window, queued READs and went away leaked up to `maxQueuedReplyBytes` per
/// channel).
async fn finish_writer(mut writer: tokio::task::JoinHandle<()>, grace: std::time::Duration) {
    if tokio::time::timeout(grace, &mut writer).await.is_err() {
        writer.abort();
        let _ = writer.await;
    }
}

/// Queues a reply once it fits in the reply budget; a client that leaves the budget full (does
/// not read replies) for the idle timeout is cut off with a reason naming the budget.
async fn send(out: &ReplyQueue, reply: Vec<u8>, idle: std::time::Duration) -> Result<(), End> {
    let bytes = u32::try_from(reply.len())
        .unwrap_or(u32::MAX)
        .min(out.limit);
    let queued = match tokio::time::timeout(idle, out.bytes.clone().acquire_many_owned(bytes)).await
    {
        Ok(Ok(queued)) => queued,
        Ok(Err(_)) => return Err(End::Io("reply writer stopped".into())),
        Err(_) => {
            return Err(End::Budget(
                "maxQueuedReplyBytes",
                u64::from(out.limit),
                format!(
                    "the client stopped reading replies (budgets.maxQueuedReplyBytes {} bytes queued)",
                    out.limit
                ),
            ));
        }
    };
    out.tx
        .send((reply, queued))
        .map_err(|_| End::Io("reply writer stopped".into()))
}

/// Appends exactly `n` bytes from `reader` to `buffer` (which has the capacity), without
/// zeroing them first.
async fn read_into<R>(
    reader: &mut BufReader<R>,
    buffer: &mut Vec<u8>,
    n: usize,
) -> std::io::Result<()>
where
    R: tokio::io::AsyncRead + Unpin,
{
    let target = buffer.len() + n;
    buffer.reserve_exact(n);
    while buffer.len() < target {
        let want = (target - buffer.len()) as u64;
        if (&mut *reader).take(want).read_buf(buffer).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
    }
    Ok(())
}

/// `body` holds the first 9 bytes of an `SSH_FXP_WRITE` of `length` bytes (type, id, handle
/// length). Reads the handle and offset, and the data into a buffer of its own. `None` (with
/// `body` holding what was read) when the packet is not a well-formed WRITE: the caller reads
/// the rest and lets the ordinary decoder answer it.
async fn read_write_request<R>(
    reader: &mut BufReader<R>,
    body: &mut Vec<u8>,
    length: usize,
) -> std::io::Result<Option<russh_sftp::protocol::Write>>
where
    R: tokio::io::AsyncRead + Unpin,
{
    let handle_len = u32::from_be_bytes([body[5], body[6], body[7], body[8]]) as usize;
    // type, id, handle length, handle, offset, data length
    let fixed = 9 + handle_len + 12;
    if handle_len > 256 || fixed > length {
        return Ok(None);
    }
    read_into(reader, body, fixed - 9).await?;
    let at = |i: usize| body[i];
    let data_len = u32::from_be_bytes([at(fixed - 4), at(fixed - 3), at(fixed - 2), at(fixed - 1)]);
    let Ok(handle) = std::str::from_utf8(&body[9..9 + handle_len]) else {
        return Ok(None);
    };
    if data_len as usize != length - fixed {
        return Ok(None);
    }
    let handle = handle.to_string();
    let mut offset = [0u8; 8];
    offset.copy_from_slice(&body[9 + handle_len..9 + handle_len + 8]);
    let mut data = Vec::with_capacity(data_len as usize);
    read_into(reader, &mut data, data_len as usize).await?;
    Ok(Some(russh_sftp::protocol::Write {
        id: u32::from_be_bytes([body[1], body[2], body[3], body[4]]),
        handle,
        offset: u64::from_be_bytes(offset),
        data,
    }))
}

/// A request as the intake read it: its body, or a WRITE with its data already apart.
struct Incoming {
    body: Vec<u8>,
    write: Option<russh_sftp::protocol::Write>,
}

/// A request read ahead of the request loop (or how the intake ended), with the intake room
/// it holds.
type IntakeItem = (Result<Incoming, End>, tokio::sync::OwnedSemaphorePermit);
type Intake = tokio::sync::mpsc::UnboundedReceiver<IntakeItem>;

/// What one queued request costs besides its buffers (queue entry, permit, allocations),
/// charged so that many tiny requests cannot hold more memory than [`INTAKE_BYTES`] says.
const INTAKE_OVERHEAD: usize = 128;
/// Bytes of requests read but not yet answered. The request loop waits for reply room
/// (`budgets.maxQueuedReplyBytes`); meanwhile the intake keeps taking requests off the channel,
/// because russh stops the whole connection, and with it the client's WINDOW_ADJUSTs that would
/// free that room, once a channel's queue is full (found: `sftp -R 256`, 256 outstanding
/// READs, stalled a download for good). This much holds thousands of READs or two WRITEs.
pub const INTAKE_BYTES: u32 = 2 * MAX_PACKET;

/// Reads requests off the channel into the intake queue until the client closes it, the
/// connection breaks, or the request loop is gone; the last item says which.
async fn run_intake<R>(
    mut reader: BufReader<R>,
    queue: tokio::sync::mpsc::UnboundedSender<IntakeItem>,
) where
    R: tokio::io::AsyncRead + Unpin,
{
    let room = Arc::new(tokio::sync::Semaphore::new(INTAKE_BYTES as usize));
    let mut initialized = false;
    loop {
        let incoming = read_request(&mut reader, initialized).await;
        initialized = true;
        // Memory, not lengths: buffers by capacity, plus each entry's own cost.
        let size = INTAKE_OVERHEAD
            + match &incoming {
                Ok(request) => {
                    request.body.capacity()
                        + request
                            .write
                            .as_ref()
                            .map_or(0, |write| write.data.capacity())
                }
                Err(_) => 0,
            };
        let size = u32::try_from(size).unwrap_or(u32::MAX).min(INTAKE_BYTES);
        let Ok(held) = room.clone().acquire_many_owned(size).await else {
            return;
        };
        let last = incoming.is_err();
        if queue.send((incoming, held)).is_err() || last {
            return;
        }
    }
}

/// Reads one request: its body without zeroing it first, and a WRITE's data straight into its
/// own buffer (russh-sftp's decoder would copy it out of the packet once more): zeroing and
/// that copy were ~6% of the SFTP upload CPU (docs/performance.md).
async fn read_request<R>(reader: &mut BufReader<R>, initialized: bool) -> Result<Incoming, End>
where
    R: tokio::io::AsyncRead + Unpin,
{
    let mut header = [0u8; 4];
    match reader.read_exact(&mut header).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            return Err(End::ClientClosed);
        }
        Err(e) => return Err(End::Io(e.to_string())),
    }
    let length = u32::from_be_bytes(header);
    if !(5..=MAX_PACKET).contains(&length) {
        return Err(End::Fatal(format!(
            "packet length {length} is outside 5..={MAX_PACKET} bytes"
        )));
    }
    let io = |e: std::io::Error| End::Io(e.to_string());
    // Room for the first 9 bytes only: a WRITE's body keeps just its header (its data gets a
    // buffer of its own), and `read_into` makes room for the rest of any other request.
    let mut body = Vec::with_capacity((length as usize).min(9));
    read_into(reader, &mut body, (length as usize).min(9))
        .await
        .map_err(io)?;
    let mut write = None;
    if initialized && body[0] == FXP_WRITE && body.len() == 9 {
        write = read_write_request(reader, &mut body, length as usize)
            .await
            .map_err(io)?;
    }
    if write.is_none() {
        let rest = length as usize - body.len();
        read_into(reader, &mut body, rest).await.map_err(io)?;
    }
    Ok(Incoming { body, write })
}

impl Sftp {
    fn audit(&self, event: &str, fields: serde_json::Value) {
        self.env.audit.event(&self.env.tag, event, fields);
    }

    /// A file event (`crate::events`), durable when this returns.
    async fn event(&self, kind: Kind, path: &VirtualPath, detail: Detail<'_>) {
        let env = &self.env;
        (env.events
            .emit(kind, &env.tag, &env.user.home, path, detail))
        .await;
    }

    async fn serve(
        &mut self,
        intake: &mut Intake,
        out: &ReplyQueue,
        idle: std::time::Duration,
    ) -> End {
        let mut initialized = false;
        loop {
            let Some((incoming, _queued)) = intake.recv().await else {
                return End::Io("request reader stopped".into());
            };
            let Incoming { body, write } = match incoming {
                Ok(incoming) => incoming,
                Err(end) => return end,
            };
            let kind = body[0];
            if !initialized {
                if kind != FXP_INIT {
                    return End::Fatal(format!("expected SSH_FXP_INIT, got packet type {kind}"));
                }
                initialized = true;
                if let Err(end) = send(out, version_packet(), idle).await {
                    return end;
                }
                continue;
            }
            let id = u32::from_be_bytes([body[1], body[2], body[3], body[4]]);
            let mut bytes = Bytes::from(body);
            let parsed = match write {
                Some(write) => Ok(Request::Write(write)),
                None => Request::try_from(&mut bytes),
            };
            let request = match parsed {
                Ok(request) => request,
                Err(error) => {
                    if (3..=20).contains(&kind) || kind == 200 {
                        let reply = codec::status(id, StatusCode::BadMessage, "malformed request");
                        let _ = send(out, reply, idle).await;
                        return End::Fatal(format!("malformed packet of type {kind}: {error}"));
                    }
                    let reply = codec::status(id, StatusCode::OpUnsupported, "unsupported request");
                    if let Err(end) = send(out, reply, idle).await {
                        return end;
                    }
                    continue;
                }
            };
            if let Some(reason) = self.refresh() {
                return End::Ended(reason);
            }
            let reply = self.dispatch(id, request).await;
            self.count_open_files();
            if let Err(end) = send(out, reply, idle).await {
                return end;
            }
        }
    }

    /// Publishes how many file (not directory) handles are open, for the drain.
    fn count_open_files(&mut self) {
        use std::sync::atomic::Ordering;
        let now = self
            .handles
            .values()
            .filter(|h| !matches!(h, OpenHandle::Dir(_)))
            .count();
        if now > self.open_files {
            self.env
                .open_files
                .fetch_add(now - self.open_files, Ordering::Relaxed);
        } else {
            self.env
                .open_files
                .fetch_sub(self.open_files - now, Ordering::Relaxed);
        }
        self.open_files = now;
    }

    /// Adopts a reloaded user (permissions change for the next request).
    fn refresh(&mut self) -> Option<String> {
        if !self.env.snapshot.has_changed().unwrap_or(false) {
            return None;
        }
        let latest = self.env.snapshot.borrow_and_update().clone();
        let Some(user) = latest.user(&self.env.user.username).cloned() else {
            return Some("account removed; closing the connection".into());
        };
        if user.disabled
            || user.is_expired_at(jiff::Timestamp::now())
            || !user.allows_ip(self.env.client_ip)
            || !user.allows_protocol(Protocol::Sftp)
        {
            return Some("account disabled, expired or restricted; closing the connection".into());
        }
        if user.home != self.env.user.home {
            // The confined view was opened on the old home; never keep serving it.
            return Some("home directory changed; closing the connection, log in again".into());
        }
        self.env.user = user;
        None
    }

    fn path(&self, text: &str) -> Result<VirtualPath, Vec<u8>> {
        let path = VirtualPath::root()
            .resolve(text)
            .map_err(|e| codec::status(0, StatusCode::Failure, &format!("invalid path: {e}")))?;
        if let Some(name) = userfs::reserved_component(&path) {
            self.audit(
                "request_refused",
                json!({"reason": "reserved name", "path": path.to_string()}),
            );
            return Err(codec::status(
                0,
                StatusCode::PermissionDenied,
                &format!("name {name:?} is reserved for the server's upload temporaries"),
            ));
        }
        Ok(path)
    }

    fn allowed(&self, id: u32, permission: Permission, path: &VirtualPath) -> Result<(), Vec<u8>> {
        if self.env.user.has(permission) {
            return Ok(());
        }
        self.audit(
            "permission_denied",
            json!({"permission": permission.as_str(), "path": path.to_string()}),
        );
        Err(codec::status(
            id,
            StatusCode::PermissionDenied,
            &format!("permission denied: {} on {path}", permission.as_str()),
        ))
    }

    fn fs_error(&self, id: u32, error: &FsError) -> Vec<u8> {
        let (code, message) = fs_status(error);
        codec::status(id, code, &message)
    }

    fn file_operation(&self, operation: &str, path: &VirtualPath, extra: serde_json::Value) {
        let mut fields = json!({"operation": operation, "path": path.to_string()});
        if let (Some(target), serde_json::Value::Object(extra)) = (fields.as_object_mut(), extra) {
            target.extend(extra);
        }
        self.audit("file_operation", fields);
    }

    fn refused(&self, request: &str, path: Option<&VirtualPath>) {
        self.audit(
            "request_refused",
            json!({"request": request, "path": path.map(|p| p.to_string())}),
        );
    }

    /// A place for one more handle within `budgets.maxOpenHandlesPerConnection` and
    /// `maxOpenHandlesPerUser`, taken before any file is opened; refused with a status naming
    /// the budget (audited and counted).
    fn reserve_handle(&self, id: u32) -> Result<HandleSlot, Vec<u8>> {
        let budgets = self.env.snapshot.borrow().config.budgets.clone();
        self.env
            .fs
            .work()
            .open_handle(
                &self.env.open_handles,
                budgets.max_open_handles_per_connection,
                budgets.max_open_handles_per_user,
            )
            .map_err(|budget| {
                self.budget_exceeded(budget.name(), u64::from(budget.limit()), "refused");
                codec::status(
                    id,
                    StatusCode::Failure,
                    &format!(
                        "too many open handles: budgets.{} is {}; close some first",
                        budget.name(),
                        budget.limit()
                    ),
                )
            })
    }

    fn budget_exceeded(&self, budget: &'static str, limit: u64, action: &'static str) {
        crate::admission::budget_exceeded(
            &self.env.audit,
            &self.env.metrics,
            &self.env.tag,
            budget,
            limit,
            action,
        );
    }

    fn new_handle(&mut self, handle: OpenHandle, slot: HandleSlot) -> String {
        let name = format!("{:x}", self.next_handle);
        self.next_handle += 1;
        self.handles.insert(name.clone(), handle);
        self.slots.insert(name.clone(), slot);
        name
    }

    async fn dispatch(&mut self, id: u32, request: Request) -> Vec<u8> {
        let result = match request {
            Request::Open(open) => {
                self.open(id, &open.filename, open.pflags, &open.attrs)
                    .await
            }
            Request::Close(close) => self.close(id, &close.handle).await,
            Request::Read(read) => self.read(id, &read.handle, read.offset, read.len).await,
            Request::Write(write) => {
                self.write(id, &write.handle, write.offset, write.data)
                    .await
            }
            Request::Lstat(lstat) => self.stat(id, &lstat.path, false).await,
            Request::Stat(stat) => self.stat(id, &stat.path, true).await,
            Request::Fstat(fstat) => self.fstat(id, &fstat.handle).await,
            Request::SetStat(setstat) => {
                self.setstat(id, Target::Path(&setstat.path), &setstat.attrs)
                    .await
            }
            Request::FSetStat(fsetstat) => {
                self.setstat(id, Target::Handle(&fsetstat.handle), &fsetstat.attrs)
                    .await
            }
            Request::OpenDir(opendir) => self.opendir(id, &opendir.path).await,
            Request::ReadDir(readdir) => self.readdir(id, &readdir.handle).await,
            Request::Remove(remove) => self.remove(id, &remove.filename).await,
            Request::MkDir(mkdir) => self.mkdir(id, &mkdir.path).await,
            Request::RmDir(rmdir) => self.rmdir(id, &rmdir.path).await,
            Request::RealPath(realpath) => self.realpath(id, &realpath.path),
            Request::Rename(rename) => {
                self.rename(id, &rename.oldpath, &rename.newpath, false)
                    .await
            }
            Request::ReadLink(readlink) => self.readlink(id, &readlink.path).await,
            Request::Symlink(symlink) => {
                let path = self.path(&symlink.linkpath).ok();
                self.refused("symlink", path.as_ref());
                Ok(codec::status(
                    id,
                    StatusCode::PermissionDenied,
                    "symlinks are not allowed",
                ))
            }
            Request::Extended(extended) => {
                self.extended(id, &extended.request, &extended.data).await
            }
            _ => Ok(codec::status(
                id,
                StatusCode::OpUnsupported,
                "unsupported request",
            )),
        };
        match result {
            Ok(reply) => reply,
            Err(mut reply) => {
                // Errors built without the id (path parsing) get it patched in.
                if reply.len() >= 9 && reply[5..9] == [0, 0, 0, 0] {
                    reply[5..9].copy_from_slice(&id.to_be_bytes());
                }
                reply
            }
        }
    }

    async fn open(
        &mut self,
        id: u32,
        filename: &str,
        flags: OpenFlags,
        _attrs: &FileAttributes,
    ) -> Result<Vec<u8>, Vec<u8>> {
        let path = self.path(filename)?;
        let fs = self.env.fs.clone();
        let wants_write = flags.intersects(
            OpenFlags::WRITE | OpenFlags::APPEND | OpenFlags::CREATE | OpenFlags::TRUNCATE,
        );
        let wants_read = flags.contains(OpenFlags::READ) || !wants_write;
        if !wants_write {
            self.allowed(id, Permission::Download, &path)?;
            let slot = self.reserve_handle(id)?;
            let (download, size) = fs
                .open_download(&path)
                .await
                .map_err(|e| self.fs_error(id, &e))?;
            let in_use = InUse::hold(fs.home_key(), &path);
            let handle = OpenHandle::Read(ReadHandle {
                path,
                ahead: ReadAhead::from_download(download, fs.work().clone()),
                started: Instant::now(),
                size,
                _in_use: in_use,
            });
            return Ok(codec::handle(id, &self.new_handle(handle, slot)));
        }
        let exists = match fs.stat(&path, true).await {
            Ok(stat) if stat.kind == EntryKind::Dir => {
                return Ok(codec::status(
                    id,
                    StatusCode::Failure,
                    &format!("is a directory: {path}"),
                ));
            }
            Ok(_) => true,
            Err(FsError::NotFound(_)) => false,
            Err(error) => return Err(self.fs_error(id, &error)),
        };
        let needed = if exists {
            Permission::Overwrite
        } else {
            Permission::Upload
        };
        if let Err(reply) = self.allowed(id, needed, &path) {
            self.event(Kind::UploadRefused, &path, Detail::refused("permission"))
                .await;
            return Err(reply);
        }
        if let Some(text) = self.env.events.upload_refusal() {
            return Ok(codec::status(id, StatusCode::Failure, text));
        }
        if wants_read {
            self.allowed(id, Permission::Download, &path)?;
        }
        let how = OpenForWrite {
            create: flags.contains(OpenFlags::CREATE),
            truncate: flags.contains(OpenFlags::TRUNCATE),
            exclusive: flags.contains(OpenFlags::EXCLUDE),
            append: flags.contains(OpenFlags::APPEND),
            atomic: self.env_atomic() && !wants_read,
            replace: if self.env.user.has(Permission::Overwrite) {
                Replace::Allowed
            } else {
                Replace::Never
            },
        };
        let scanned = self.env.snapshot.borrow().config.scanning.is_some();
        if scanned && !(how.atomic && how.create && how.truncate && !how.append) {
            // Appends, resumes and read-write opens write into the published file: nothing
            // could be scanned before it is visible.
            return Ok(codec::status(
                id,
                StatusCode::OpUnsupported,
                "uploads are scanned (scanning): open for writing with create and truncate \
                 only; append, resume and read-write are not available",
            ));
        }
        let slot = self.reserve_handle(id)?;
        let opened = fs
            .open_write(&path, how)
            .await
            .map_err(|e| self.fs_error(id, &e))?;
        let mode = if how.append {
            "append"
        } else if how.truncate || !opened.existed {
            "replace"
        } else {
            "resume"
        };
        let in_use = InUse::hold(fs.home_key(), &path);
        let handle = OpenHandle::Write(Box::new(WriteHandle {
            _in_use: in_use,
            path,
            worker: WriteBehind::new(
                opened.file,
                fs.work().clone(),
                self.env
                    .snapshot
                    .borrow()
                    .config
                    .budgets
                    .max_pending_write_bytes,
                opened.charge,
            ),
            temp: opened.temp_name,
            replace: how.replace,
            mode,
            readable: wants_read,
            started: Instant::now(),
        }));
        Ok(codec::handle(id, &self.new_handle(handle, slot)))
    }

    fn env_atomic(&self) -> bool {
        self.env.snapshot.borrow().config.uploads.atomic
    }

    fn transfer_audit(
        &self,
        direction: &str,
        path: &VirtualPath,
        bytes: u64,
        started: Instant,
        result: &str,
        extra: serde_json::Value,
    ) {
        Metrics::inc(
            &self.env.metrics.transfers,
            &[("direction", direction), ("result", result)],
        );
        Metrics::add(&self.env.metrics.bytes, &[("direction", direction)], bytes);
        let mut fields = json!({
            "direction": direction,
            "path": path.to_string(),
            "bytes": bytes,
            "duration_ms": started.elapsed().as_millis() as u64,
            "result": result,
        });
        if let (Some(target), serde_json::Value::Object(extra)) = (fields.as_object_mut(), extra) {
            target.extend(extra);
        }
        self.audit("transfer", fields);
    }

    /// A directory listing is a transfer with `direction: list`, as FTPS `LIST`/`MLSD` are:
    /// who looked at which directory is part of the access record.
    fn list_audit(&self, dir: &DirHandle, result: &str) {
        self.transfer_audit(
            "list",
            &dir.path,
            dir.bytes_sent,
            dir.started,
            result,
            json!({"entries": dir.position, "entries_total": dir.position, "complete": dir.finished}),
        );
    }

    async fn close(&mut self, id: u32, handle: &str) -> Result<Vec<u8>, Vec<u8>> {
        let Some(open) = self.handles.remove(handle) else {
            return Ok(codec::status(id, StatusCode::Failure, "no such handle"));
        };
        let _slot = self.slots.remove(handle);
        match open {
            OpenHandle::Dir(dir) => {
                self.list_audit(&dir, "ok");
                Ok(codec::ok(id))
            }
            OpenHandle::Read(read) => {
                self.transfer_audit(
                    "download",
                    &read.path,
                    read.ahead.bytes,
                    read.started,
                    "ok",
                    json!({}),
                );
                let bytes = read.ahead.bytes;
                self.event(Kind::Downloaded, &read.path, Detail::size(bytes))
                    .await;
                let complete = bytes >= read.size;
                let path = read.path.clone();
                drop(read);
                let env = &self.env;
                let sinks = crate::retention::Sinks {
                    audit: &env.audit,
                    metrics: &env.metrics,
                    events: &env.events,
                };
                crate::retention::after_download(
                    sinks, &env.tag, &env.user, &env.fs, &path, complete,
                )
                .await;
                Ok(codec::ok(id))
            }
            OpenHandle::Write(write) => Ok(self.finish_write(id, *write, true).await),
        }
    }

    /// Ends an upload: waits for the writes and fsync, renames an atomic temporary file, and
    /// writes the transfer event with the file's SHA-256.
    async fn finish_write(&self, id: u32, write: WriteHandle, commit: bool) -> Vec<u8> {
        let first_offset = write.worker.first_offset.unwrap_or(0);
        let mut outcome = write.worker.finish().await;
        // Dropped unpublished, the quota account gives back what an abandoned temporary held.
        let charge = outcome.charge.take();
        let extra = |sha: Option<&String>| json!({"sha256": sha, "mode": write.mode, "offset": first_offset, "size": outcome.size});
        let failed = |error: String| {
            let mut fields = extra(None);
            fields["error"] = error.into();
            self.transfer_audit(
                "upload",
                &write.path,
                outcome.written,
                write.started,
                "failed",
                fields,
            );
        };
        if let Some(error) = &outcome.error {
            if let Some(temp) = write.temp.clone() {
                self.env.fs.remove_temp(temp).await;
            }
            failed(error.to_string());
            if outcome.quota_refused {
                self.event(
                    Kind::UploadRefused,
                    &write.path,
                    Detail {
                        size: Some(outcome.written),
                        ..Detail::refused("quota")
                    },
                )
                .await;
            }
            return io_failure(id, error);
        }
        if !commit {
            let result = if let Some(temp) = write.temp.clone() {
                self.env.fs.remove_temp(temp).await;
                "aborted"
            } else {
                "incomplete"
            };
            self.transfer_audit(
                "upload",
                &write.path,
                outcome.written,
                write.started,
                result,
                extra(outcome.sha256.as_ref()),
            );
            return Vec::new();
        }
        let mut scan = None;
        if let Some(temp) = write.temp.as_deref() {
            match self.scan(temp, outcome.size, &write.path).await {
                Ok(note) => scan = note,
                Err(refusal) => {
                    // The gate removed or quarantined the temporary (quarantine is outside
                    // the home): give back what the upload was charged.
                    if let Some(charge) = charge {
                        charge.discard(true);
                    }
                    let message = refusal.client_message();
                    failed(message.clone());
                    let sha256 = outcome.sha256.as_deref();
                    self.audit(
                        "upload_rejected",
                        refusal.audit_fields(&write.path, outcome.size, sha256),
                    );
                    let detail = Detail {
                        size: Some(outcome.size),
                        sha256,
                        signature: refusal.signature(),
                        ..Detail::refused(refusal.reason.as_str())
                    };
                    self.event(Kind::UploadRefused, &write.path, detail).await;
                    return codec::status(id, StatusCode::Failure, &message);
                }
            }
        }
        if let Some(temp) = write.temp.clone()
            && let Err(error) = self
                .env
                .fs
                .commit_temp(temp, &write.path, write.replace, charge)
                .await
        {
            failed(error.to_string());
            return self.fs_error(id, &error);
        }
        let mut fields = extra(outcome.sha256.as_ref());
        if let Some(scan) = scan {
            fields["scan"] = scan.as_str().into();
        }
        self.transfer_audit(
            "upload",
            &write.path,
            outcome.written,
            write.started,
            "ok",
            fields,
        );
        // Published under its final name (committed above): now, and only now, the event.
        let detail = Detail {
            sha256: outcome.sha256.as_deref(),
            ..Detail::size(outcome.size)
        };
        self.event(Kind::Uploaded, &write.path, detail).await;
        codec::ok(id)
    }

    /// Has a complete atomic upload's temporary file scanned before it is published, when
    /// scanning is configured (`crate::scan`): `Ok(None)` without scanning.
    async fn scan(
        &self,
        temp: &str,
        size: u64,
        path: &VirtualPath,
    ) -> Result<Option<crate::scan::ScanNote>, crate::scan::Refusal> {
        let (scanning, dir) = {
            let snapshot = self.env.snapshot.borrow();
            match (&snapshot.config.scanning, &snapshot.quarantine_dir) {
                (Some(scanning), Some(dir)) => (scanning.clone(), dir.clone()),
                _ => return Ok(None),
            }
        };
        let scanner = crate::scan::Scanner {
            config: &scanning,
            quarantine_dir: &dir,
            metrics: &self.env.metrics.scan,
        };
        let upload = crate::scan::Upload {
            fs: &self.env.fs,
            temp,
            size,
            user: self.env.user.username.as_str(),
            path,
        };
        scanner.gate(upload).await.map(Some)
    }

    /// At session end: uploads still open are abandoned (an atomic temporary file is removed;
    /// a non-atomic partial file stays, for resuming), downloads are logged.
    async fn close_all(&mut self) {
        let handles: Vec<OpenHandle> = self.handles.drain().map(|(_, h)| h).collect();
        self.slots.clear();
        for handle in handles {
            match handle {
                OpenHandle::Write(write) => {
                    self.finish_write(0, *write, false).await;
                }
                OpenHandle::Read(read) => self.transfer_audit(
                    "download",
                    &read.path,
                    read.ahead.bytes,
                    read.started,
                    "incomplete",
                    json!({}),
                ),
                OpenHandle::Dir(dir) => self.list_audit(&dir, "incomplete"),
            }
        }
    }

    async fn read(
        &mut self,
        id: u32,
        handle: &str,
        offset: u64,
        len: u32,
    ) -> Result<Vec<u8>, Vec<u8>> {
        let len = len.min(MAX_READ) as usize;
        match self.handles.get_mut(handle) {
            Some(OpenHandle::Read(read)) => {
                let mut reply = codec::start_data(id, len);
                match read.ahead.read_into(offset, len, &mut reply).await {
                    Ok(0) => Ok(codec::status(id, StatusCode::Eof, "end of file")),
                    Ok(_) => Ok(codec::finish_data(reply)),
                    Err(error) => Ok(io_failure(id, &error)),
                }
            }
            Some(OpenHandle::Write(write)) if write.readable => {
                match write.worker.read(offset, len).await {
                    Ok(data) if data.is_empty() => {
                        Ok(codec::status(id, StatusCode::Eof, "end of file"))
                    }
                    Ok(data) => Ok(codec::data(id, &data)),
                    Err(error) => Ok(io_failure(id, &error)),
                }
            }
            Some(_) => Ok(codec::status(
                id,
                StatusCode::PermissionDenied,
                "handle is not open for reading",
            )),
            None => Ok(codec::status(id, StatusCode::Failure, "no such handle")),
        }
    }

    async fn write(
        &mut self,
        id: u32,
        handle: &str,
        offset: u64,
        data: Vec<u8>,
    ) -> Result<Vec<u8>, Vec<u8>> {
        match self.handles.get_mut(handle) {
            Some(OpenHandle::Write(write)) => {
                if let Some(error) = write.worker.failure() {
                    return Ok(codec::status(id, StatusCode::Failure, &error));
                }
                let end = offset.saturating_add(data.len() as u64);
                if let Err(error) = write.worker.charge_to(end) {
                    let text = format!("{error} (writing {})", write.path);
                    return Ok(codec::status(id, StatusCode::Failure, &text));
                }
                if write.worker.write(offset, data).await {
                    Ok(codec::ok(id))
                } else {
                    Ok(codec::status(id, StatusCode::Failure, "write failed"))
                }
            }
            Some(_) => Ok(codec::status(
                id,
                StatusCode::PermissionDenied,
                "handle is not open for writing",
            )),
            None => Ok(codec::status(id, StatusCode::Failure, "no such handle")),
        }
    }

    async fn stat(&mut self, id: u32, text: &str, follow: bool) -> Result<Vec<u8>, Vec<u8>> {
        let path = self.path(text)?;
        self.allowed(id, Permission::List, &path)?;
        let stat = self
            .env
            .fs
            .stat(&path, follow)
            .await
            .map_err(|e| self.fs_error(id, &e))?;
        Ok(codec::attrs(id, &stat))
    }

    async fn fstat(&mut self, id: u32, handle: &str) -> Result<Vec<u8>, Vec<u8>> {
        let stat = match self.handles.get(handle) {
            Some(OpenHandle::Read(read)) => match read.ahead.stat().await {
                Ok(stat) => stat,
                Err(error) => return Ok(io_failure(id, &error)),
            },
            Some(OpenHandle::Write(write)) => match write.worker.stat().await {
                Ok(stat) => stat,
                Err(error) => return Ok(io_failure(id, &error)),
            },
            Some(OpenHandle::Dir(dir)) => {
                let path = dir.path.clone();
                self.env
                    .fs
                    .stat(&path, true)
                    .await
                    .map_err(|e| self.fs_error(id, &e))?
            }
            None => return Ok(codec::status(id, StatusCode::Failure, "no such handle")),
        };
        Ok(codec::attrs(id, &stat))
    }

    /// SETSTAT/FSETSTAT: size and times need the overwrite permission; ownership changes are
    /// refused; permission bits are ignored (the server decides file modes).
    async fn setstat(
        &mut self,
        id: u32,
        target: Target<'_>,
        attrs: &FileAttributes,
    ) -> Result<Vec<u8>, Vec<u8>> {
        let path = match &target {
            Target::Path(text) => self.path(text)?,
            Target::Handle(handle) => match self.handles.get(*handle) {
                Some(OpenHandle::Read(h)) => h.path.clone(),
                Some(OpenHandle::Write(h)) => h.path.clone(),
                Some(OpenHandle::Dir(h)) => h.path.clone(),
                None => return Ok(codec::status(id, StatusCode::Failure, "no such handle")),
            },
        };
        if attrs.uid.is_some() || attrs.gid.is_some() {
            self.refused("chown", Some(&path));
            return Ok(codec::status(
                id,
                StatusCode::PermissionDenied,
                "changing ownership is not allowed",
            ));
        }
        if attrs.size.is_none() && attrs.mtime.is_none() && attrs.atime.is_none() {
            // Only permission bits (chmod): accepted and ignored.
            return Ok(codec::ok(id));
        }
        self.allowed(id, Permission::Overwrite, &path)?;
        self.file_operation(
            "setstat",
            &path,
            json!({"size": attrs.size, "mtime": attrs.mtime}),
        );
        let mut writer = match &target {
            Target::Handle(handle) => match self.handles.get_mut(*handle) {
                Some(OpenHandle::Write(write)) => Some(&mut write.worker),
                _ => None,
            },
            Target::Path(_) => None,
        };
        if let Some(size) = attrs.size {
            let result = match writer.as_deref_mut() {
                Some(worker) => worker
                    .set_len(size)
                    .await
                    .map_err(|e| FsError::from_io(&path, e)),
                None => self.env.fs.set_len(&path, size).await,
            };
            if let Err(error) = result {
                return Ok(self.fs_error(id, &error));
            }
        }
        if attrs.mtime.is_some() || attrs.atime.is_some() {
            let mtime = u64::from(attrs.mtime.or(attrs.atime).unwrap_or(0));
            let atime = u64::from(attrs.atime.unwrap_or(attrs.mtime.unwrap_or(0)));
            let result = match writer {
                Some(worker) => worker
                    .set_times(atime, mtime)
                    .await
                    .map_err(|e| FsError::from_io(&path, e)),
                None => self.env.fs.set_times(&path, atime, mtime).await,
            };
            if let Err(error) = result {
                return Ok(self.fs_error(id, &error));
            }
        }
        Ok(codec::ok(id))
    }

    async fn opendir(&mut self, id: u32, text: &str) -> Result<Vec<u8>, Vec<u8>> {
        let path = self.path(text)?;
        self.allowed(id, Permission::List, &path)?;
        let slot = self.reserve_handle(id)?;
        let cursor = self
            .env
            .fs
            .open_dir_cursor(&path)
            .await
            .map_err(|e| self.fs_error(id, &e))?;
        let handle = OpenHandle::Dir(DirHandle {
            path,
            cursor,
            position: 0,
            finished: false,
            bytes_sent: 0,
            started: Instant::now(),
        });
        Ok(codec::handle(id, &self.new_handle(handle, slot)))
    }

    /// The next batch of a directory, read from disk now (never held whole in memory); past
    /// `budgets.maxListingEntries` the listing ends with a failure naming the budget.
    async fn readdir(&mut self, id: u32, handle: &str) -> Result<Vec<u8>, Vec<u8>> {
        let owner = self.env.user.username.clone();
        let max_entries = self
            .env
            .snapshot
            .borrow()
            .config
            .budgets
            .max_listing_entries as usize;
        let fs = self.env.fs.clone();
        let Some(OpenHandle::Dir(dir)) = self.handles.get_mut(handle) else {
            return Ok(codec::status(
                id,
                StatusCode::Failure,
                "no such directory handle",
            ));
        };
        if dir.finished {
            return Ok(codec::status(id, StatusCode::Eof, "end of directory"));
        }
        if dir.position >= max_entries {
            dir.finished = true;
            self.budget_exceeded("maxListingEntries", max_entries as u64, "refused");
            return Ok(codec::status(
                id,
                StatusCode::Failure,
                &format!(
                    "directory listing stopped after budgets.maxListingEntries ({max_entries}) entries"
                ),
            ));
        }
        let want = NAMES_PER_READDIR.min(max_entries - dir.position);
        let batch = fs
            .next_entries(&mut dir.cursor, want)
            .await
            .map_err(|e| self.fs_error(id, &e))?;
        let Some(OpenHandle::Dir(dir)) = self.handles.get_mut(handle) else {
            return Ok(codec::status(
                id,
                StatusCode::Failure,
                "no such directory handle",
            ));
        };
        if batch.is_empty() {
            dir.finished = true;
            return Ok(codec::status(id, StatusCode::Eof, "end of directory"));
        }
        let mut packet = Packet::new(codec::FXP_NAME, Some(id), batch.len() * 96);
        packet.u32(batch.len() as u32);
        for (name, stat) in &batch {
            packet
                .bytes(name.as_bytes())
                .bytes(codec::long_name(name, stat, &owner).as_bytes())
                .attrs(stat);
        }
        dir.position += batch.len();
        let packet = packet.finish();
        dir.bytes_sent += packet.len() as u64;
        Ok(packet)
    }

    async fn remove(&mut self, id: u32, text: &str) -> Result<Vec<u8>, Vec<u8>> {
        let path = self.path(text)?;
        self.allowed(id, Permission::Delete, &path)?;
        self.file_operation("delete", &path, json!({}));
        match self.env.fs.remove_file(&path).await {
            Ok(()) => {
                self.event(Kind::Deleted, &path, Detail::default()).await;
                Ok(codec::ok(id))
            }
            Err(error) => Ok(self.fs_error(id, &error)),
        }
    }

    async fn mkdir(&mut self, id: u32, text: &str) -> Result<Vec<u8>, Vec<u8>> {
        let path = self.path(text)?;
        self.allowed(id, Permission::Mkdir, &path)?;
        self.file_operation("mkdir", &path, json!({}));
        match self.env.fs.create_dir(&path).await {
            Ok(()) => {
                self.event(Kind::DirCreated, &path, Detail::default()).await;
                Ok(codec::ok(id))
            }
            Err(error) => Ok(self.fs_error(id, &error)),
        }
    }

    async fn rmdir(&mut self, id: u32, text: &str) -> Result<Vec<u8>, Vec<u8>> {
        let path = self.path(text)?;
        self.allowed(id, Permission::Rmdir, &path)?;
        self.file_operation("rmdir", &path, json!({}));
        match self.env.fs.remove_dir(&path).await {
            Ok(()) => {
                self.event(Kind::DirRemoved, &path, Detail::default()).await;
                Ok(codec::ok(id))
            }
            Err(error) => Ok(self.fs_error(id, &error)),
        }
    }

    fn realpath(&mut self, id: u32, text: &str) -> Result<Vec<u8>, Vec<u8>> {
        let path = self.path(text)?;
        Ok(name_reply(id, &path.to_string()))
    }

    async fn rename(
        &mut self,
        id: u32,
        from: &str,
        to: &str,
        posix: bool,
    ) -> Result<Vec<u8>, Vec<u8>> {
        let from = self.path(from)?;
        let to = self.path(to)?;
        self.allowed(id, Permission::Rename, &from)?;
        self.allowed(id, Permission::Rename, &to)?;
        let exists = self.env.fs.stat(&to, false).await.is_ok();
        if exists {
            if !posix {
                return Ok(codec::status(
                    id,
                    StatusCode::Failure,
                    &format!("already exists: {to}"),
                ));
            }
            self.allowed(id, Permission::Overwrite, &to)?;
        }
        self.file_operation("rename", &from, json!({"to": to.to_string()}));
        // Without `overwrite` (or for a plain SFTP rename, which must not replace), the rename
        // itself refuses an existing target: the check above alone is racy.
        let replace = if posix && self.env.user.has(Permission::Overwrite) {
            Replace::Allowed
        } else {
            Replace::Never
        };
        match self.env.fs.rename(&from, &to, replace).await {
            Ok(()) => {
                self.event(Kind::Renamed, &from, Detail::renamed(&to)).await;
                Ok(codec::ok(id))
            }
            Err(error) => Ok(self.fs_error(id, &error)),
        }
    }

    async fn readlink(&mut self, id: u32, text: &str) -> Result<Vec<u8>, Vec<u8>> {
        let path = self.path(text)?;
        self.allowed(id, Permission::List, &path)?;
        let target = self
            .env
            .fs
            .read_link(&path)
            .await
            .map_err(|e| self.fs_error(id, &e))?;
        if target.starts_with('/') || target.split('/').any(|c| c == "..") {
            return Ok(codec::status(
                id,
                StatusCode::PermissionDenied,
                "the link points outside the home directory",
            ));
        }
        Ok(name_reply(id, &target))
    }

    async fn extended(&mut self, id: u32, request: &str, data: &[u8]) -> Result<Vec<u8>, Vec<u8>> {
        let mut reader = Reader::new(data);
        let bad = || codec::status(id, StatusCode::BadMessage, "malformed extension request");
        match request {
            "posix-rename@openssh.com" => {
                let from = reader.string().ok_or_else(bad)?;
                let to = reader.string().ok_or_else(bad)?;
                self.rename(id, &from, &to, true).await
            }
            "hardlink@openssh.com" => {
                let from = reader.string().and_then(|p| self.path(&p).ok());
                self.refused("hardlink", from.as_ref());
                Ok(codec::status(
                    id,
                    StatusCode::PermissionDenied,
                    "hard links are not allowed",
                ))
            }
            "statvfs@openssh.com" | "fstatvfs@openssh.com" => {
                if request.starts_with("statvfs") {
                    let path = reader.string().ok_or_else(bad)?;
                    let path = self.path(&path)?;
                    self.allowed(id, Permission::List, &path)?;
                } else if !self.handles.contains_key(&reader.string().ok_or_else(bad)?) {
                    return Ok(codec::status(id, StatusCode::Failure, "no such handle"));
                }
                let stats = self
                    .env
                    .fs
                    .statvfs()
                    .await
                    .map_err(|e| self.fs_error(id, &e))?;
                let mut packet = Packet::new(codec::FXP_EXTENDED_REPLY, Some(id), 88);
                packet
                    .u64(stats.f_bsize)
                    .u64(stats.f_frsize)
                    .u64(stats.f_blocks)
                    .u64(stats.f_bfree)
                    .u64(stats.f_bavail)
                    .u64(stats.f_files)
                    .u64(stats.f_ffree)
                    .u64(stats.f_favail)
                    .u64(stats.f_fsid)
                    .u64(stats.f_flag.bits())
                    .u64(stats.f_namemax);
                Ok(packet.finish())
            }
            "fsync@openssh.com" => {
                let handle = reader.string().ok_or_else(bad)?;
                match self.handles.get(&handle) {
                    Some(OpenHandle::Write(write)) => match write.worker.fsync().await {
                        Ok(()) => Ok(codec::ok(id)),
                        Err(error) => Ok(io_failure(id, &error)),
                    },
                    Some(_) => Ok(codec::ok(id)),
                    None => Ok(codec::status(id, StatusCode::Failure, "no such handle")),
                }
            }
            "limits@openssh.com" => {
                let mut packet = Packet::new(codec::FXP_EXTENDED_REPLY, Some(id), 32);
                packet
                    .u64(u64::from(MAX_PACKET))
                    .u64(u64::from(ADVERTISED_READ))
                    .u64(u64::from(MAX_IO))
                    .u64(u64::from(
                        self.env
                            .snapshot
                            .borrow()
                            .config
                            .budgets
                            .max_open_handles_per_connection,
                    ));
                Ok(packet.finish())
            }
            "expand-path@openssh.com" => {
                let text = reader.string().ok_or_else(bad)?;
                let text = match text.strip_prefix('~') {
                    Some(rest) if rest.is_empty() || rest.starts_with('/') => format!("/{rest}"),
                    _ => text,
                };
                let path = self.path(&text)?;
                Ok(name_reply(id, &path.to_string()))
            }
            "home-directory" => Ok(name_reply(id, "/")),
            "check-file" | "check-file-handle" | "check-file-name" => {
                self.check_file(id, request, &mut reader).await
            }
            _ => Ok(codec::status(
                id,
                StatusCode::OpUnsupported,
                &format!(
                    "unsupported extension {:?}",
                    request.chars().take(64).collect::<String>()
                ),
            )),
        }
    }

    /// `check-file` (draft-ietf-secsh-filexfer-extensions-00 §3): SHA-256 of the whole file.
    async fn check_file(
        &mut self,
        id: u32,
        request: &str,
        reader: &mut Reader<'_>,
    ) -> Result<Vec<u8>, Vec<u8>> {
        let bad = || codec::status(id, StatusCode::BadMessage, "malformed check-file request");
        let target = reader.string().ok_or_else(bad)?;
        let algorithms = reader.string().ok_or_else(bad)?;
        let start = reader.u64().unwrap_or(0);
        let length = reader.u64().unwrap_or(0);
        let block = reader.u32().unwrap_or(0);
        if !algorithms.split(',').any(|a| a.trim() == "sha256") {
            return Ok(codec::status(
                id,
                StatusCode::OpUnsupported,
                "only sha256 is supported",
            ));
        }
        let path = if request == "check-file-name" {
            self.path(&target)?
        } else {
            match self.handles.get(&target) {
                Some(OpenHandle::Read(read)) => read.path.clone(),
                Some(OpenHandle::Write(_)) => {
                    return Ok(codec::status(
                        id,
                        StatusCode::Failure,
                        "close the upload before asking for its hash",
                    ));
                }
                _ => return Ok(codec::status(id, StatusCode::Failure, "no such handle")),
            }
        };
        self.allowed(id, Permission::Download, &path)?;
        let (digest, size) = self
            .env
            .fs
            .sha256(&path)
            .await
            .map_err(|e| self.fs_error(id, &e))?;
        if start != 0 || (length != 0 && length != size) || (block != 0 && u64::from(block) < size)
        {
            return Ok(codec::status(
                id,
                StatusCode::OpUnsupported,
                "only a whole-file hash (offset 0, length 0, block size 0) is supported",
            ));
        }
        let raw = hex::decode(digest).unwrap_or_default();
        let mut packet = Packet::new(codec::FXP_EXTENDED_REPLY, Some(id), 64);
        packet.bytes(b"check-file").bytes(b"sha256").raw(&raw);
        Ok(packet.finish())
    }
}

enum Target<'a> {
    Path(&'a str),
    Handle(&'a str),
}

fn name_reply(id: u32, name: &str) -> Vec<u8> {
    let mut packet = Packet::new(codec::FXP_NAME, Some(id), 16 + name.len() * 2);
    packet
        .u32(1)
        .bytes(name.as_bytes())
        .bytes(name.as_bytes())
        .u32(0);
    packet.finish()
}

fn version_packet() -> Vec<u8> {
    let mut packet = Packet::new(codec::FXP_VERSION, None, 256);
    packet.u32(3);
    for (name, version) in [
        ("posix-rename@openssh.com", "1"),
        ("statvfs@openssh.com", "2"),
        ("fstatvfs@openssh.com", "2"),
        ("fsync@openssh.com", "1"),
        ("limits@openssh.com", "1"),
        ("expand-path@openssh.com", "1"),
        ("check-file", "1"),
    ] {
        packet.bytes(name.as_bytes()).bytes(version.as_bytes());
    }
    packet.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_writer_stuck_past_its_grace_is_stopped_and_lets_go_of_its_replies() {
        let replies = Arc::new(vec![0u8; 1024]);
        let held = replies.clone();
        let stuck = tokio::spawn(async move {
            let _held = held;
            std::future::pending::<()>().await;
        });
        finish_writer(stuck, std::time::Duration::from_millis(50)).await;
        assert_eq!(
            Arc::strong_count(&replies),
            1,
            "the stuck writer still holds its replies"
        );
    }

    #[tokio::test]
    async fn tiny_requests_fill_the_intake_by_what_they_cost_not_by_their_length() {
        // 20,000 five-byte requests (an unknown extended type): 100 KB by length, but each
        // queued entry costs far more memory than that.
        let mut wire = Vec::new();
        for _ in 0..20_000 {
            wire.extend_from_slice(&5u32.to_be_bytes());
            wire.extend_from_slice(&[200, 0, 0, 0, 1]);
        }
        let (queue, intake) = tokio::sync::mpsc::unbounded_channel();
        let reader = BufReader::new(&wire[..]);
        let stopped = tokio::time::timeout(
            std::time::Duration::from_millis(300),
            run_intake(reader, queue),
        )
        .await;
        assert!(
            stopped.is_err(),
            "the intake waits for room; it did not read everything"
        );
        let queued = intake.len();
        assert!(queued > 100, "{queued}");
        assert!(
            queued <= INTAKE_BYTES as usize / INTAKE_OVERHEAD,
            "{queued} requests queued: more than {INTAKE_BYTES} bytes of memory"
        );
    }

    #[tokio::test]
    async fn a_writer_that_finishes_in_its_grace_is_awaited() {
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        let writer = tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            let _ = done_tx.send(());
        });
        finish_writer(writer, std::time::Duration::from_secs(5)).await;
        assert!(
            done_rx.await.is_ok(),
            "the writer was stopped before it finished"
        );
    }
}
