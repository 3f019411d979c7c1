//! sluice-server: a hardened FTPS (explicit and implicit TLS) and SFTP server with per-user
//! confined storage, hot reload and a JSON audit log. `run`, `check-config`, `demo`, `hash-password`.

#![forbid(unsafe_code)]

// The modules live in the library crate (server/src/lib.rs) so that fuzz targets can reach them;
// declare new modules there, not here.
use sluice_server::{
    audit, auth, ban_sync, demo, drain, ftp, leftovers, metrics, reload, sftp, snapshot, windows,
};

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// jemalloc instead of glibc malloc: with glibc, memory freed after a burst of thousands of
/// concurrent SSH sessions was only partly reused by the next burst, so RSS grew with every burst
/// (3,000 SFTP sessions x 6 rounds: 324 -> 1,039 MiB); with jemalloc the peak is the same each
/// round and RSS falls back near the baseline (bench/load, docs/performance.md). Background
/// threads purge freed pages on a timer, so an idle server gives memory back too.
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(
    name = "sluice-server",
    version,
    about = "Hardened FTPS and SFTP server"
)]
struct Cli {
    /// Log format for operational logs on stderr (audit events always go to stdout as JSON).
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true, env = "SLUICE_LOG_FORMAT")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Serve with a server.yaml (which names users.yaml and the TLS files).
    Run {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Validate server.yaml, its users file and its TLS files; exit 1 with field-level errors.
    CheckConfig { config: PathBuf },
    /// Start a local demo server with a generated certificate and a demo user.
    Demo {
        /// Directory for the demo's files (default: a new temporary directory).
        #[arg(long)]
        dir: Option<PathBuf>,
        #[arg(long, default_value_t = 2121)]
        explicit_port: u16,
        #[arg(long, default_value_t = 2990)]
        implicit_port: u16,
        #[arg(long, default_value_t = 9121)]
        health_port: u16,
        #[arg(long, default_value_t = 52000)]
        passive_start: u16,
        #[arg(long, default_value_t = 2222)]
        sftp_port: u16,
    },
    /// Read a password from stdin and print its argon2id PHC hash for users.yaml.
    HashPassword,
    /// Print the CPU cost of SHA-256 on this machine as the upload path hashes (JSON; used by
    /// the benchmarks in bench/).
    #[command(hide = true)]
    HashSpeed {
        #[arg(long, default_value_t = 1024)]
        mib: u64,
    },
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

fn main() -> anyhow::Result<ExitCode> {
    // rustls is built with both ring and aws-lc-rs in this workspace, so it cannot pick a
    // process default on its own; anything that asks for it (reqwest for object storage)
    // gets aws-lc-rs, the provider FTPS and SSH use.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let cli = Cli::parse();
    init_logging(cli.log_format);
    match cli.command {
        Command::HashSpeed { mib } => {
            println!(
                "{}",
                sluice_server::userfs::hash_speed(mib.saturating_mul(1 << 20))
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::HashPassword => {
            let mut line = String::new();
            std::io::stdin().lock().read_line(&mut line)?;
            let password = line.trim_end_matches(['\r', '\n']);
            if password.is_empty() {
                eprintln!("hash-password: the password read from stdin is empty");
                return Ok(ExitCode::FAILURE);
            }
            println!("{}", auth::hash_password(password)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::CheckConfig { config } => {
            let (_, result) = snapshot::load(&config);
            match result {
                Ok(snapshot) => {
                    for warning in snapshot.config.insecure_opt_ins() {
                        eprintln!("warning: {warning}");
                    }
                    println!(
                        "{}: valid ({} users)",
                        config.display(),
                        snapshot.users.len()
                    );
                    Ok(ExitCode::SUCCESS)
                }
                Err(error) => {
                    eprintln!("{error}");
                    Ok(ExitCode::FAILURE)
                }
            }
        }
        Command::Run { config } => {
            runtime()?.block_on(serve(config))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Demo {
            dir,
            explicit_port,
            implicit_port,
            health_port,
            passive_start,
            sftp_port,
        } => {
            let (dir, _keep) = match dir {
                Some(dir) => {
                    std::fs::create_dir_all(&dir)
                        .with_context(|| format!("cannot create {}", dir.display()))?;
                    (dir, None)
                }
                None => {
                    let temp = tempfile::Builder::new().prefix("sluice-demo-").tempdir()?;
                    (temp.path().to_path_buf(), Some(temp))
                }
            };
            let prepared = demo::prepare(
                &dir,
                &demo::DemoPorts {
                    explicit: explicit_port,
                    implicit: implicit_port,
                    health: health_port,
                    passive_start,
                    sftp: sftp_port,
                },
            )?;
            eprintln!("{}", prepared.instructions);
            runtime()?.block_on(serve(prepared.config_path))?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

async fn bind(address: &str, field: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(address)
        .await
        .with_context(|| format!("listeners.{field}: cannot listen on {address}"))
}

async fn serve(config_path: PathBuf) -> anyhow::Result<()> {
    let config_path = std::path::absolute(&config_path).unwrap_or(config_path);
    let (_, loaded) = snapshot::load(&config_path);
    let snapshot = loaded.map_err(|e| anyhow::anyhow!("{e}"))?;
    for warning in snapshot.config.insecure_opt_ins() {
        tracing::warn!(setting = %warning, "insecure opt-in enabled");
    }
    if let Some(seconds) = windows::init_clock()? {
        tracing::warn!(
            seconds,
            "{} is set: login windows and password aging use a shifted clock (tests only)",
            windows::TEST_CLOCK_OFFSET_ENV
        );
    }
    std::fs::create_dir_all(&snapshot.data_root)
        .with_context(|| format!("dataRoot: cannot create {}", snapshot.data_root.display()))?;
    if let Some(dir) = &snapshot.quarantine_dir {
        sluice_server::scan::create_quarantine_dir(dir)
            .with_context(|| format!("scanning.quarantineDir: cannot create {}", dir.display()))?;
        tracing::info!(quarantine = %dir.display(), "uploads are scanned before they are published");
    }
    let sweep_root = snapshot.data_root.clone();
    tokio::task::spawn_blocking(move || {
        let removed = leftovers::sweep(&sweep_root);
        tracing::info!(
            removed,
            "removed temporary files of uploads broken by an earlier crash"
        );
    });
    let audit_file = match &snapshot.config.audit.file {
        Some(file) => {
            let path = snapshot::resolve_relative(&config_path, file);
            Some(
                open_append(&path)
                    .with_context(|| format!("audit.file: cannot open {}", path.display()))?,
            )
        }
        None => None,
    };
    let audit = audit::Audit::start(snapshot.config.audit.stdout, audit_file);
    let metrics = metrics::Metrics::new();
    metrics
        .sessions_max
        .set(i64::from(snapshot.config.limits.max_sessions));
    let ready = Arc::new(AtomicBool::new(false));
    let listeners = snapshot.config.listeners.clone();
    let host_keys = snapshot
        .ssh
        .as_ref()
        .map(|m| m.fingerprints.clone())
        .unwrap_or_default();
    let users = snapshot.users.len();
    let events = snapshot.config.events.clone();
    let (sender, receiver) = watch::channel(Arc::new(snapshot));
    let context = sluice_server::context::Context::new(receiver, audit.clone(), metrics.clone());
    if let Some(events) = &events {
        let outbox = sluice_server::events::start(events, &config_path, metrics.clone()).await?;
        context.events.install(outbox);
    }

    if let Some(address) = &listeners.ftps_explicit {
        let listener = bind(address, "ftpsExplicit").await?;
        tokio::spawn(ftp::serve(
            listener,
            ftp::ListenerKind::Explicit,
            context.clone(),
        ));
    }
    if let Some(address) = &listeners.ftps_implicit {
        let listener = bind(address, "ftpsImplicit").await?;
        tokio::spawn(ftp::serve(
            listener,
            ftp::ListenerKind::Implicit,
            context.clone(),
        ));
    }
    if let Some(address) = &listeners.sftp {
        let listener = bind(address, "sftp").await?;
        tokio::spawn(sftp::serve(listener, context.clone()));
    }
    if let Some(address) = &listeners.health {
        let listener = bind(address, "health").await?;
        let bans = ban_sync::Endpoint::new(context.clone(), config_path.clone());
        tokio::spawn(metrics::serve(
            listener,
            metrics.clone(),
            ready.clone(),
            bans,
            context.snapshot.clone(),
        ));
    }
    tokio::spawn(sluice_server::retention::run(context.clone()));
    tokio::spawn(reload::watch_files(
        config_path.clone(),
        sender,
        audit.clone(),
        metrics.clone(),
    ));
    ready.store(true, Ordering::Relaxed);
    tracing::info!(
        config = %config_path.display(),
        users,
        explicit = ?listeners.ftps_explicit,
        implicit = ?listeners.ftps_implicit,
        sftp = ?listeners.sftp,
        health = ?listeners.health,
        ssh_host_keys = ?host_keys,
        "sluice-server ready"
    );
    audit.server_event(
        "server_start",
        json!({"version": env!("CARGO_PKG_VERSION")}),
    );
    shutdown_signal().await;
    let left = drain::run(&context, &ready).await;
    tracing::info!(sessions_left = left, "shutting down");
    audit.server_event("server_stop", json!({"sessions_left": left}));
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    Ok(())
}

fn open_append(path: &Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
}

async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate => {}
    }
}
