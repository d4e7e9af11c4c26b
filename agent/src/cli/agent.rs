//! `tend agent`: the long-running host agent.

use std::path::PathBuf;

use crate::agent::config::{AgentConfig, LogFormat};
use crate::agent::{Agent, Settings};

/// How many threads the agent's runtime keeps for blocking work at most.
const BLOCKING_THREADS: usize = 8;

/// Options of `tend agent`.
#[derive(Debug, Clone)]
pub struct AgentOptions {
    /// The config file, if any.
    pub config: Option<PathBuf>,
    /// `--data-dir`.
    pub data_dir: Option<PathBuf>,
    /// `--run-dir`.
    pub run_dir: Option<PathBuf>,
    /// `--spawn-bin`.
    pub spawn_bin: Option<PathBuf>,
    /// `--log-level` when given on the command line.
    pub log_level: Option<String>,
}

/// Run the agent until SIGTERM or SIGINT; tasks keep running after it.
pub fn run(opts: AgentOptions) -> anyhow::Result<i32> {
    let config = match &opts.config {
        Some(p) => AgentConfig::load(p)?,
        None => AgentConfig::default(),
    };
    let level = opts
        .log_level
        .clone()
        .or_else(|| config.log_level.clone())
        .unwrap_or_else(|| "info".into());
    let filter = tracing_subscriber::EnvFilter::try_new(&level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only for a person at a terminal, never into a journal or a file.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    let _ = match config.log_format.unwrap_or_default() {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
    raise_nofile();
    // Before any thread: it takes the variables out of the environment.
    let notifier = crate::notify::Notifier::from_env().map(std::sync::Arc::new);
    let mut settings = Settings::resolve(config, opts.data_dir, opts.run_dir, opts.spawn_bin)?;
    settings.spawn_launcher = true;
    crate::driver::spawn::config::use_spawn_bin(&settings.spawn_bin);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        // Durable writes leave their worker (block_in_place): a thousand
        // changes at once overlap BLOCKING_THREADS at a time, enough for the
        // journal to commit them together, without a thread (and its stack
        // and allocator arena) per change; idle ones go after a second.
        .max_blocking_threads(BLOCKING_THREADS)
        .thread_keep_alive(std::time::Duration::from_secs(1))
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let socket = crate::api::socket_path(&settings.dirs.run_dir);
        let agent = Agent::new(settings)?;
        let listener = crate::api::bind(&socket).await?;
        tracing::info!(socket = %socket.display(), data_dir = %agent.settings().dirs.data_dir.display(), "agent starting");
        // Before the reattach, which may take a while: a SIGTERM meanwhile must
        // still end the agent cleanly (exit 0), not by the default action.
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
        let notify = |msg: &str| {
            if let Some(n) = &notifier {
                n.send(msg);
            }
        };
        notify(&format!(
            "STATUS=taking up the tasks of {}",
            agent.settings().dirs.data_dir.display()
        ));
        let report = tokio::select! {
            r = agent.reattach() => r?,
            _ = term.recv() => return stopped(&socket, "SIGTERM", notifier.as_deref()),
            _ = int.recv() => return stopped(&socket, "SIGINT", notifier.as_deref()),
        };
        tracing::info!(
            reattached = report.reattached,
            exited = report.exited,
            lost = report.lost,
            unreachable = report.unreachable,
            started = report.started,
            unreadable = report.unreadable,
            millis = report.millis,
            "state taken up"
        );
        let server = tokio::spawn(crate::api::serve(agent.clone(), listener));
        notify(&format!(
            "READY=1\nSTATUS=ready: {} reattached, {} exited meanwhile, {} lost, {} unreachable, {} started ({} ms)",
            report.reattached,
            report.exited,
            report.lost,
            report.unreachable,
            report.started,
            report.millis
        ));
        let (retention, every) = agent.settings().config.gc();
        let collector = tokio::spawn(collect_garbage(agent.clone(), retention, every));
        let watchdog = notifier
            .clone()
            .map(|n| tokio::spawn(keep_notifying(agent.clone(), n)));
        let why = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        if let Some(w) = watchdog {
            w.abort();
        }
        collector.abort();
        server.abort();
        stopped(&socket, why, notifier.as_deref())
    })
}

/// Under systemd: `WATCHDOG=1` every half `WatchdogSec` (10 s without one),
/// each after a look at the agent's state (a wedged state lock or runtime
/// stops the pings, and systemd restarts the agent), with the tasks by phase
/// as `STATUS=`.
async fn keep_notifying(agent: Agent, n: std::sync::Arc<crate::notify::Notifier>) {
    let every = n
        .watchdog_every()
        .unwrap_or(std::time::Duration::from_secs(10));
    loop {
        tokio::time::sleep(every).await;
        let c = agent.counts();
        let status = crate::notify::status_line(c.running, c.pending, c.allocations);
        if n.watchdog_every().is_some() {
            n.send(&format!("WATCHDOG=1\n{status}"));
        } else {
            n.send(&status);
        }
    }
}

/// Every `every`, remove the allocations dead for `retention` or more.
async fn collect_garbage(agent: Agent, retention: std::time::Duration, every: std::time::Duration) {
    loop {
        tokio::time::sleep(every).await;
        let a = agent.clone();
        match tokio::task::spawn_blocking(move || a.collect_garbage(retention, None)).await {
            Ok(Ok(ids)) if !ids.is_empty() => {
                tracing::info!(count = ids.len(), "dead allocations collected");
            }
            Ok(Err(e)) => tracing::warn!(error = %e, "collecting dead allocations"),
            _ => {}
        }
    }
}

/// The agent leaves on a signal: its socket goes, the tasks stay.
fn stopped(
    socket: &std::path::Path,
    why: &str,
    notifier: Option<&crate::notify::Notifier>,
) -> anyhow::Result<i32> {
    tracing::info!("{why}: the agent stops; tasks keep running");
    if let Some(n) = notifier {
        n.send(&format!(
            "STOPPING=1\nSTATUS=stopping on {why}: tasks keep running"
        ));
    }
    let _ = std::fs::remove_file(socket);
    Ok(0)
}

/// An agent keeps a connection per running task: lift the soft fd limit to the
/// hard one (best effort).
fn raise_nofile() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        if let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            tracing::warn!(error = %e, "cannot raise the open file limit");
        }
    }
}
