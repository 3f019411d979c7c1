//! sluice-operator: the Kubernetes control plane of Sluice.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

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
}

fn main() -> anyhow::Result<ExitCode> {
    let cli = Cli::parse();
    match cli.command {
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
