//! SFTP packet decoding and handling: the input is the byte stream a client sends after
//! SSH_FXP_INIT, served by the real SFTP subsystem (`sftp::session::run_stream`: russh-sftp's
//! decoder, our dispatcher, handles, `UserFs`) for the demo user over an in-memory stream, in
//! a temporary data root built by `sluice-server demo`'s own preparation.
//! Invariants: no panic and the session ends when the input does; every reply is one framed
//! packet of a reply type (VERSION first, then STATUS/HANDLE/DATA/NAME/ATTRS/EXTENDED_REPLY);
//! every error is an SSH_FXP_STATUS with a v3 status code; there are never more replies than
//! requests; nothing outside the user's home changes.

#![no_main]

use std::path::PathBuf;
use std::sync::{Arc, LazyLock};

use libfuzzer_sys::fuzz_target;
use sluice_server::audit::{Audit, SessionTag};
use sluice_server::demo::{self, DemoPorts};
use sluice_server::metrics::Metrics;
use sluice_server::sftp::session::{self, SessionEnv};
use sluice_server::snapshot::{self, Snapshot};
use sluice_server::userfs::UserFs;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

const INIT: [u8; 9] = [0, 0, 0, 5, 1, 0, 0, 0, 3];
const OTHER_SECRET: &[u8] = b"another user's file\n";

struct Fixture {
    _dir: tempfile::TempDir,
    data: PathBuf,
    home: PathBuf,
    audit: Audit,
    metrics: Arc<Metrics>,
    snapshot: watch::Receiver<Arc<Snapshot>>,
    _keep: watch::Sender<Arc<Snapshot>>,
    runtime: tokio::runtime::Runtime,
}

static FIXTURE: LazyLock<Fixture> = LazyLock::new(|| {
    let dir = tempfile::tempdir().expect("temporary directory");
    let ports = DemoPorts {
        explicit: 2121,
        implicit: 2990,
        health: 9121,
        passive_start: 52000,
        sftp: 2222,
    };
    let prepared = demo::prepare(dir.path(), &ports).expect("demo files");
    let (_, loaded) = snapshot::load(&prepared.config_path);
    let snapshot = Arc::new(loaded.expect("demo config loads"));
    let data = snapshot.data_root.clone();
    std::fs::create_dir_all(data.join("other")).expect("other home");
    std::fs::write(data.join("other/secret.txt"), OTHER_SECRET).expect("other file");
    let (keep, receiver) = watch::channel(snapshot);
    Fixture {
        home: data.join("demo"),
        data,
        _dir: dir,
        audit: Audit::start(false, None),
        metrics: Metrics::new(),
        snapshot: receiver,
        _keep: keep,
        runtime: tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime"),
    }
});

fn reset_home(fixture: &Fixture) {
    let home = &fixture.home;
    let _ = std::fs::remove_dir_all(home);
    std::fs::create_dir_all(home.join("dir")).expect("dir");
    std::fs::write(home.join("welcome.txt"), b"hello\n").expect("file");
    std::os::unix::fs::symlink("../other", home.join("escape")).expect("symlink");
}

/// Packet types of the replies a server may send (draft-ietf-secsh-filexfer-02).
const REPLY_TYPES: [u8; 7] = [2, 101, 102, 103, 104, 105, 201];

/// Checks the reply stream and returns the number of replies.
fn check_replies(mut replies: &[u8]) -> usize {
    let mut count = 0;
    while !replies.is_empty() {
        assert!(replies.len() >= 9, "truncated reply: {replies:?}");
        let length = u32::from_be_bytes(replies[..4].try_into().unwrap()) as usize;
        assert!(
            length >= 5 && replies.len() >= 4 + length,
            "bad reply length {length}"
        );
        let body = &replies[4..4 + length];
        let kind = body[0];
        assert!(REPLY_TYPES.contains(&kind), "reply of type {kind}");
        if count == 0 {
            assert_eq!(kind, 2, "the first reply is SSH_FXP_VERSION");
        } else {
            assert_ne!(kind, 2, "SSH_FXP_VERSION sent twice");
        }
        if kind == 101 {
            assert!(length >= 13, "short status");
            let code = u32::from_be_bytes(body[5..9].try_into().unwrap());
            assert!(code <= 8, "status code {code} is not an SFTP v3 code");
        }
        replies = &replies[4 + length..];
        count += 1;
    }
    count
}

/// Complete request frames in the input (an upper bound on the replies owed).
fn requests(mut input: &[u8]) -> usize {
    let mut count = 0;
    while input.len() >= 4 {
        let length = u32::from_be_bytes(input[..4].try_into().unwrap()) as usize;
        if input.len() - 4 < length {
            break;
        }
        input = &input[4 + length..];
        count += 1;
    }
    count
}

fuzz_target!(|input: &[u8]| {
    let fixture = &*FIXTURE;
    reset_home(fixture);
    let replies = fixture.runtime.block_on(async {
        let snapshot = fixture.snapshot.borrow().clone();
        let user = snapshot.user("demo").expect("demo user").clone();
        let fs = UserFs::open(
            fixture.data.to_string_lossy().into_owned(),
            user.home.clone(),
            sluice_server::filework::UserWork::unshared(4),
        )
        .await
        .expect("open home");
        let env = SessionEnv {
            audit: fixture.audit.clone(),
            metrics: fixture.metrics.clone(),
            snapshot: fixture.snapshot.clone(),
            tag: SessionTag {
                session: "fuzz".into(),
                protocol: "sftp",
                ip: "127.0.0.1".into(),
                user: Some("demo".into()),
            },
            client_ip: std::net::Ipv4Addr::LOCALHOST.into(),
            user,
            fs,
            open_files: Default::default(),
            events: Default::default(),
            open_handles: Default::default(),
        };
        let (client, server) = tokio::io::duplex(64 * 1024);
        let served = tokio::spawn(session::run_stream(server, env));
        let (mut rx, mut tx) = tokio::io::split(client);
        let send = async move {
            let _ = tx.write_all(&INIT).await;
            let _ = tx.write_all(input).await;
            let _ = tx.shutdown().await;
            tx
        };
        let receive = async move {
            let mut replies = Vec::new();
            let _ = rx.read_to_end(&mut replies).await;
            replies
        };
        let (_tx, replies) = tokio::join!(send, receive);
        let _ = served.await.expect("the session task does not panic");
        replies
    });
    let count = check_replies(&replies);
    assert!(count <= 1 + requests(input), "{count} replies");
    let mut others: Vec<_> = std::fs::read_dir(&fixture.data)
        .expect("data root")
        .map(|e| e.expect("entry").file_name())
        .collect();
    others.sort();
    assert_eq!(others, ["demo", "other"], "created next to the home");
    assert_eq!(
        std::fs::read(fixture.data.join("other/secret.txt"))
            .ok()
            .as_deref(),
        Some(OTHER_SECRET),
        "another user's file changed"
    );
});
