//! The state every session of the process shares, whatever its protocol: configuration
//! snapshot, audit, metrics, limits, bans, the password verifier, the file-work budget and the
//! drain flag. Protocol engines (`ftp`, `sftp`) only accept connections and speak; they read
//! and update this state through [`crate::admission`].

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use crate::audit::Audit;
use crate::ftp::passive::PassivePool;
use crate::limits::SessionLimits;
use crate::metrics::Metrics;
use crate::snapshot::Snapshot;

/// State shared by every session of the process.
pub struct Context {
    pub snapshot: watch::Receiver<Arc<Snapshot>>,
    pub audit: Audit,
    pub metrics: Arc<Metrics>,
    pub limits: SessionLimits,
    passive: Mutex<Arc<PassivePool>>,
    pub session_counter: AtomicU64,
    pub session_prefix: String,
    /// This host's name, to pick a per-host advertised passive address.
    pub host_name: String,
    /// The argon2id verification pool.
    pub verifier: crate::auth::Verifier,
    /// Passwords that verified recently (see `crate::verified_cache`).
    pub verified: crate::verified_cache::VerifiedCache,
    /// Failed-login bans shared by every listener.
    pub bans: crate::bans::BanEngine,
    /// The last accepted TOTP step per user, shared by FTPS and SFTP (no replay).
    pub totp: crate::totp::ReplayGuard,
    /// `true` once SIGTERM started the drain (see `crate::drain`).
    pub drain: watch::Sender<bool>,
    /// Blocking file work, budgeted per user and in total (see `crate::filework`).
    pub file_work: crate::filework::FileWork,
    /// New connections per source (see `crate::admission`).
    pub connection_rate: crate::admission::ConnectionRate,
    pub session_pace: crate::admission::SessionPace,
    /// Proxy connections still waiting for their PROXY header (see `crate::proxy`).
    pub proxy_pending: crate::proxy::PendingHeaders,
    /// File events (see `crate::events`); disabled until `main` installs the outbox.
    pub events: crate::events::Events,
}

impl Context {
    pub fn new(
        snapshot: watch::Receiver<Arc<Snapshot>>,
        audit: Audit,
        metrics: Arc<Metrics>,
    ) -> Arc<Context> {
        let (start, end, max_file_work) = {
            let current = snapshot.borrow();
            (
                current.config.passive.port_start,
                current.config.passive.port_end,
                current.config.budgets.max_file_work,
            )
        };
        Arc::new(Context {
            snapshot,
            audit,
            metrics,
            limits: SessionLimits::default(),
            passive: Mutex::new(PassivePool::new(start, end)),
            session_counter: AtomicU64::new(1),
            session_prefix: format!("{:08x}", rand::random::<u32>()),
            host_name: host_name(),
            bans: crate::bans::BanEngine::default(),
            totp: crate::totp::ReplayGuard::default(),
            drain: watch::channel(false).0,
            file_work: crate::filework::FileWork::new(max_file_work),
            connection_rate: crate::admission::ConnectionRate::default(),
            session_pace: crate::admission::SessionPace::default(),
            proxy_pending: crate::proxy::PendingHeaders::default(),
            events: crate::events::Events::default(),
            verified: crate::verified_cache::VerifiedCache::new(),
            verifier: crate::auth::Verifier::start(
                std::thread::available_parallelism()
                    .map(|n| n.get())
                    .unwrap_or(2)
                    .min(4),
            ),
        })
    }

    /// `username`'s file-work budget under the current configuration.
    pub fn user_work(&self, username: &str) -> crate::filework::UserWork {
        let budgets = self.snapshot.borrow().config.budgets.clone();
        self.file_work.resize(budgets.max_file_work);
        self.file_work
            .for_user(username, budgets.max_file_work_per_user)
    }

    /// The pool for the configured range; replaced when a reload changes the range (leases
    /// of the old pool stay valid until they end).
    pub fn passive_pool(&self, start: u16, end: u16) -> Arc<PassivePool> {
        let mut pool = self.passive.lock().unwrap_or_else(|p| p.into_inner());
        if pool.range() != (start, end) {
            *pool = PassivePool::new(start, end);
        }
        pool.clone()
    }
}

pub fn host_name() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|h| h.trim().to_string())
        })
        .unwrap_or_default()
}
