//! The `tend` command line: a file per verb; this module parses and dispatches.

pub mod run;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::paths::Dirs;

/// tend runs tasks on one host and keeps them alive while the agent restarts.
#[derive(Debug, Parser)]
#[command(name = "tend", version, about)]
pub struct Cli {
    /// Data dir (allocs, state) [default: /var/lib/tend as root, else the XDG data dir]
    #[arg(long, env = "TEND_DATA_DIR", global = true)]
    pub data_dir: Option<PathBuf>,
    /// Run dir (sockets) [default: /run/tend as root, else $XDG_RUNTIME_DIR/tend]
    #[arg(long, env = "TEND_RUN_DIR", global = true)]
    pub run_dir: Option<PathBuf>,
    /// Log level of tend itself: error, warn, info, debug, trace
    #[arg(long, env = "TEND_LOG", global = true, default_value = "warn")]
    pub log_level: String,
    /// The verb.
    #[command(subcommand)]
    pub command: Command,
}

/// The verbs.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a job file: in the foreground when no agent is running.
    Run {
        /// The job file (HCL or JSON).
        file: PathBuf,
        /// The tend-spawn binary [default: next to tend]
        #[arg(long, env = "TEND_SPAWN_BIN")]
        spawn_bin: Option<PathBuf>,
    },
}

/// Parse the command line, run the verb, and return the process exit code.
pub fn main() -> i32 {
    let cli = Cli::parse();
    init_tracing(&cli.log_level);
    match dispatch(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("tend: {e:#}");
            1
        }
    }
}

fn init_tracing(level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

fn dispatch(cli: Cli) -> anyhow::Result<i32> {
    let dirs = Dirs::new(cli.data_dir, cli.run_dir)?;
    match cli.command {
        Command::Run { file, spawn_bin } => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(run::run_foreground(run::RunOptions {
                job_file: file,
                dirs,
                spawn_bin: spawn_bin.unwrap_or_else(crate::spawn::launch::default_spawn_bin),
            }))
        }
    }
}
