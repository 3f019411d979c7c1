//! sluice-operator: the Kubernetes control plane of Sluice. This first slice only validates the
//! files it will render (`server.yaml`, `users.yaml`); reconciliation lands with its own issue.

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
    /// Validate a users.yaml as the operator would render it.
    CheckUsers { file: std::path::PathBuf },
}

fn main() -> anyhow::Result<ExitCode> {
    let cli = Cli::parse();
    match cli.command {
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
