//! sluice-operator: the Kubernetes control plane of Sluice.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// jemalloc instead of glibc malloc, as in the server: the operator's watch caches and
/// reconciles of tens of thousands of TransferUsers allocate and free in many threads, where
/// glibc keeps per-thread arenas of freed memory (docs/performance.md, "Many users per server").
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(name = "sluice-operator", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the CRDs as YAML, or write them into a directory.
    Crd {
        #[arg(long)]
        out_dir: Option<PathBuf>,
    },
    /// Validate a users.yaml as the operator would render it.
    CheckUsers { file: PathBuf },
    /// Run the controllers against the cluster from the in-cluster config or KUBECONFIG.
    Run {
        /// Where `/metrics` and `/healthz` are served.
        #[arg(long, default_value = "0.0.0.0:8080")]
        metrics_address: String,
        /// Watch and manage only these namespaces (comma-separated; the chart's default
        /// install grants a Role in each); empty: every namespace (needs the cluster-wide
        /// ClusterRole, an explicit opt-in of the chart).
        #[arg(long, env = "SLUICE_WATCH_NAMESPACES", value_delimiter = ',')]
        namespaces: Vec<String>,
    },
}

fn main() -> anyhow::Result<ExitCode> {
    // The workspace builds rustls with both ring (kube's) and aws-lc-rs (the server's), and
    // rustls then cannot pick a process default on its own: the Kubernetes client panicked at
    // its first connection. The operator's TLS is kube's: ring.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    match cli.command {
        Command::Run {
            metrics_address,
            namespaces,
        } => {
            let namespaces: Vec<String> = namespaces
                .into_iter()
                .map(|n| n.trim().to_string())
                .filter(|n| !n.is_empty())
                .collect();
            let json = std::env::var("SLUICE_LOG_FORMAT").is_ok_and(|v| v == "json");
            let filter = tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
            // No ANSI colour codes when stderr is a pipe or file (the cluster's log pipeline).
            let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
            let builder = tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_ansi(ansi)
                .with_writer(std::io::stderr);
            if json {
                builder.json().init();
            } else {
                builder.init();
            }
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async {
                let client = kube::Client::try_default().await?;
                let metrics = sluice_operator::metrics::OperatorMetrics::new();
                let listener = tokio::net::TcpListener::bind(&metrics_address).await?;
                tokio::spawn(sluice_operator::metrics::serve(listener, metrics.clone()));
                tracing::info!(%metrics_address, namespaces = %namespaces.join(","), "sluice-operator starting");
                tokio::select! {
                    _ = sluice_operator::controller::run(client, metrics, namespaces) => {}
                    _ = tokio::signal::ctrl_c() => tracing::info!("shutting down"),
                }
                anyhow::Ok(())
            })?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Crd { out_dir } => {
            let crds = sluice_operator::crdgen::render_all()?;
            for (name, yaml) in crds {
                match &out_dir {
                    Some(dir) => std::fs::write(dir.join(&name), yaml)?,
                    None => {
                        use std::io::Write;
                        let mut out = std::io::stdout().lock();
                        if write!(out, "---\n{yaml}").is_err() {
                            return Ok(ExitCode::FAILURE);
                        }
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::CheckUsers { file } => {
            let text = std::fs::read_to_string(&file)?;
            match sluice_config::UserList::parse(&file.display().to_string(), &text) {
                Ok(list) => {
                    println!("{} users valid", list.users.len());
                    Ok(ExitCode::SUCCESS)
                }
                Err(error) => {
                    eprintln!("{error}");
                    Ok(ExitCode::FAILURE)
                }
            }
        }
    }
}
