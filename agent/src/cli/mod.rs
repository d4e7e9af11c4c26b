//! The `tend` command line: a file per verb; this module parses and dispatches.

pub mod adopt;
pub mod agent;
pub mod client;
pub mod completions;
pub mod doctor;
pub mod events;
pub mod exec;
pub mod job_init;
pub mod jobs;
pub mod logs;
pub mod monitor;
pub mod run;
pub mod signal;
pub mod stats;
pub mod status;
pub mod stop;
pub mod validate;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::paths::Dirs;
use client::ApiClient;

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
    #[arg(long, env = "TEND_LOG", global = true)]
    pub log_level: Option<String>,
    /// The verb.
    #[command(subcommand)]
    pub command: Command,
}

/// The verbs.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a job file: submitted to the agent when one answers, else in the foreground.
    Run {
        /// The job file (HCL or JSON).
        file: PathBuf,
        /// The tend-spawn binary [default: next to tend]
        #[arg(long, env = "TEND_SPAWN_BIN")]
        spawn_bin: Option<PathBuf>,
        /// Print the agent's answer as JSON (and return at once, as --detach).
        #[arg(long)]
        json: bool,
        /// With an agent: return once the job is submitted instead of
        /// following its tasks until they run.
        #[arg(long, short = 'd')]
        detach: bool,
        /// In the foreground: the cgroup under which each task gets its own.
        #[arg(long, env = "TEND_CGROUP_PARENT", default_value = "tend",
              value_parser = crate::agent::config::check_cgroup_parent)]
        cgroup_parent: String,
        /// In the foreground: the host's CPU in MHz, all cores together, for
        /// `cpu_hard_limit` [default: cores x the `cpu MHz` of /proc/cpuinfo].
        #[arg(long, env = "TEND_CPU_TOTAL_COMPUTE",
              value_parser = clap::value_parser!(u64).range(1..))]
        cpu_total_compute: Option<u64>,
        /// In the foreground: the config (HCL) of the agent that runs the job,
        /// as `tend agent --config` takes it (drivers' plugin blocks, ports)
        /// [default: the embedded defaults].
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Check the install for the mode the agent runs in (as root: tend-spawn,
    /// the dirs, the cgroup parent, the docker engine; the setuid install for
    /// other users, or with --setuid); one line per problem, exit status 1
    /// when anything is wrong.
    Doctor {
        /// The installed tend-spawn [default: next to tend]
        #[arg(long, env = "TEND_SPAWN_BIN")]
        spawn_bin: Option<PathBuf>,
        /// The policy file [default: the one tend-spawn reads: spawn-policy.hcl
        /// beside it when that exists, else /etc/tend/spawn-policy.hcl]
        #[arg(long)]
        policy: Option<PathBuf>,
        /// The agent config (HCL) whose spawn_bin, dirs and cgroup_parent to
        /// check against the policy (for the user running the doctor).
        #[arg(long)]
        config: Option<PathBuf>,
        /// As root, check the setuid install too (for other users' agents),
        /// even when tend-spawn has no setuid bit yet.
        #[arg(long)]
        setuid: bool,
    },
    /// Run the long-running host agent.
    Agent {
        /// Agent config file (HCL); without one, the embedded defaults.
        #[arg(long)]
        config: Option<PathBuf>,
        /// The tend-spawn binary [default: next to tend]
        #[arg(long, env = "TEND_SPAWN_BIN")]
        spawn_bin: Option<PathBuf>,
    },
    /// Show allocations, one allocation (a unique id prefix is enough), or
    /// the allocations of a job by its name.
    Status {
        /// Allocation id or unique prefix, or a job's name.
        #[arg(value_parser = alloc_id_arg)]
        alloc: Option<String>,
        /// JSON instead of tables.
        #[arg(long)]
        json: bool,
    },
    /// What the tasks of an allocation (or of every running one) use: CPU,
    /// memory, processes, I/O and pressure, from their cgroups.
    Stats {
        /// Allocation id or unique prefix [default: every running allocation]
        #[arg(value_parser = alloc_id_arg)]
        alloc: Option<String>,
        /// Refresh every second until Ctrl-C.
        #[arg(short, long)]
        follow: bool,
        /// The API's JSON instead of a table (one line per sample with -f).
        #[arg(long)]
        json: bool,
    },
    /// Show a task's stdout (or stderr, or both).
    Logs {
        /// Allocation id or unique prefix.
        #[arg(value_parser = alloc_id_arg)]
        alloc: String,
        /// Task name.
        task: String,
        /// Keep following until the task ends.
        #[arg(short, long)]
        follow: bool,
        /// stderr instead of stdout.
        #[arg(long)]
        stderr: bool,
        /// Start this many bytes into what is kept.
        #[arg(long, default_value_t = 0)]
        offset: u64,
        /// Only the last N lines of what is kept (then new ones with -f).
        #[arg(short = 'n', long = "tail", value_name = "N")]
        tail: Option<usize>,
        /// Only the lines written at or after this time: a duration back from
        /// now ("10m", "2h") or an RFC 3339 UTC time ("2026-12-03T08:00:00Z").
        #[arg(long, value_name = "DURATION|TIMESTAMP")]
        since: Option<String>,
        /// stdout and stderr together, in the order they were written, each
        /// line prefixed with its stream ("stderr | ...").
        #[arg(long, conflicts_with = "stderr")]
        all: bool,
        /// One JSON object per line: {"stream": "stdout", "line": "..."}, with
        /// "time" too under --all.
        #[arg(long)]
        json: bool,
    },
    /// What happened to the tasks (started, exited, restarting, ...), oldest
    /// first; with -f, then each new event until Ctrl-C.
    Events {
        /// Keep following.
        #[arg(short, long)]
        follow: bool,
        /// Only this allocation's (an id or unique prefix).
        #[arg(long, value_parser = alloc_id_arg)]
        alloc: Option<String>,
        /// Only this task's.
        #[arg(long)]
        task: Option<String>,
        /// One JSON object per event.
        #[arg(long)]
        json: bool,
    },
    /// Take up a running container of `tend-oci` (Slurm's runtime, or one
    /// started by hand) as an allocation: status, logs, exec, stats and stop
    /// then reach it, and its exit is recorded (docs/oci.md).
    Adopt {
        /// The container's id.
        id: String,
        /// tend-oci's state root (its --root).
        #[arg(long, default_value = tend_oci::DEFAULT_ROOT)]
        root: PathBuf,
        /// The job it is shown under [default: the id].
        #[arg(long)]
        job: Option<String>,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Stop an allocation's tasks (or every allocation of a job) and wait
    /// until they are dead.
    Stop {
        /// Allocation id or unique prefix, or a job's name.
        #[arg(value_parser = alloc_id_arg)]
        alloc: String,
        /// Return once the stop is asked for, without waiting for the tasks to end.
        #[arg(long, short = 'd')]
        detach: bool,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Run a command inside a running task (its root, namespaces, cgroup,
    /// user and env), on this terminal's stdin, stdout and stderr; exits
    /// with the command's code.
    Exec {
        /// Allocation id or unique prefix.
        #[arg(value_parser = alloc_id_arg)]
        alloc: String,
        /// Task name.
        task: String,
        /// Give the command a pty of its own (its controlling terminal),
        /// relayed to this terminal in raw mode.
        #[arg(long, short = 't')]
        tty: bool,
        /// The command and its arguments (after `--`).
        #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
        command: Vec<String>,
    },
    /// Send a signal to a running task.
    Signal {
        /// Allocation id or unique prefix.
        #[arg(value_parser = alloc_id_arg)]
        alloc: String,
        /// Task name.
        task: String,
        /// Signal name (SIGHUP, HUP) or number.
        signal: String,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Check a job file and show what would run.
    Validate {
        /// The job file.
        file: PathBuf,
        /// The agent config (HCL) to check the job against [default: the
        /// embedded defaults, as `tend agent` without --config]
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Job file helpers.
    Job {
        /// The job verb.
        #[command(subcommand)]
        command: JobCommand,
    },
    /// Remove every dead allocation now (records, dirs, logs, exit files);
    /// the agent also does it on its own after gc_retention (default 4h).
    Gc {
        /// Only the allocations of this job.
        #[arg(long)]
        job: Option<String>,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Print the shell completion script (e.g. `tend completions bash >
    /// /etc/bash_completion.d/tend`).
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
    /// The agent's spawn launcher, started by the agent on a socket as its
    /// stdin; not for use by hand.
    #[command(name = "spawn-launcher", hide = true)]
    SpawnLauncher,
    /// Print the man page tend(1); with --dir, write it and one page per verb
    /// (tend-run(1), tend-stop(1), ...) there.
    Man {
        /// Where to write every page (e.g. /usr/local/share/man/man1).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

/// An ALLOC argument: an id or a prefix of one, never empty ("" is a prefix
/// of every id).
fn alloc_id_arg(s: &str) -> Result<String, String> {
    if s.trim().is_empty() {
        return Err(
            "the allocation id is empty: give an id or a unique prefix of one \
                    (`tend status` lists them)"
                .into(),
        );
    }
    Ok(s.to_string())
}

/// `tend job` verbs.
#[derive(Debug, Subcommand)]
pub enum JobCommand {
    /// Write a commented example job file.
    Init {
        /// Where [default: example.tend.hcl]
        file: Option<PathBuf>,
    },
    /// The jobs the agent holds, with their allocations by status.
    List {
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Stop every allocation of a job, wait until they are dead, and remove
    /// them (records, dirs, logs, exit files).
    Purge {
        /// The job's name.
        job: String,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
}

/// Parse the command line, run the verb, and return the process exit code.
pub fn main() -> i32 {
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Agent { .. }) {
        init_tracing(cli.log_level.as_deref().unwrap_or("warn"));
    }
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

fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
}

fn dispatch(cli: Cli) -> anyhow::Result<i32> {
    // Neither touches the data dir: they work for any user, anywhere.
    match &cli.command {
        Command::Completions { shell } => {
            completions::completions(*shell, &mut std::io::stdout());
            return Ok(0);
        }
        Command::Man { dir } => {
            completions::man(dir.as_deref(), &mut std::io::stdout())?;
            return Ok(0);
        }
        Command::SpawnLauncher => {
            crate::driver::spawn::launcher::serve::serve()?;
            return Ok(0);
        }
        _ => {}
    }
    let dirs = Dirs::new(cli.data_dir.clone(), cli.run_dir.clone())?;
    let client = ApiClient::new(&dirs.run_dir);
    // Not locked: the foreground run writes task output from other threads.
    let mut out = std::io::stdout();
    match cli.command {
        Command::Run {
            file,
            spawn_bin,
            json,
            detach,
            cgroup_parent,
            cpu_total_compute,
            config,
        } => runtime()?.block_on(async {
            if client.alive().await {
                return run::submit(&client, &file, json, detach, &mut out).await;
            }
            eprintln!(
                "==> no agent answers on {}: running the job in the foreground",
                client.socket().display()
            );
            let spawn_bin =
                spawn_bin.unwrap_or_else(crate::driver::spawn::launch::default_spawn_bin);
            crate::driver::spawn::config::use_spawn_bin(&spawn_bin);
            let config = match &config {
                Some(p) => crate::agent::config::AgentConfig::load(p)?,
                None => crate::agent::config::AgentConfig::default(),
            };
            run::run_foreground(run::RunOptions {
                job_file: file,
                dirs,
                spawn_bin,
                cgroup_parent,
                cpu_total_compute,
                config,
            })
            .await
        }),
        Command::Doctor {
            spawn_bin,
            policy,
            config,
            setuid,
        } => {
            let config = match &config {
                Some(p) => crate::agent::config::AgentConfig::load(p)?,
                None => crate::agent::config::AgentConfig::default(),
            };
            let spawn_bin = spawn_bin
                .or_else(|| config.spawn_bin.clone())
                .unwrap_or_else(crate::driver::spawn::launch::default_spawn_bin);
            let policy = policy.unwrap_or_else(|| doctor::policy_for(&spawn_bin));
            let dirs = Dirs::new(
                cli.data_dir.clone().or_else(|| config.data_dir.clone()),
                cli.run_dir.clone().or_else(|| config.run_dir.clone()),
            )?;
            let cgroup_parent = config
                .cgroup_parent
                .clone()
                .unwrap_or_else(|| "tend".into());
            let root_agent = doctor::RootAgent {
                spawn_bin: spawn_bin.clone(),
                data_dir: dirs.data_dir.clone(),
                run_dir: dirs.run_dir.clone(),
                exec: config.driver_enabled("exec").then(|| cgroup_parent.clone()),
                docker: config.driver_enabled("docker").then(|| {
                    config
                        .plugin
                        .get("docker")
                        .and_then(|p| p.endpoint.clone())
                        .unwrap_or_else(|| PathBuf::from(crate::driver::docker::DEFAULT_ENDPOINT))
                }),
            };
            let agent = doctor::AgentSide {
                data_dir: dirs.data_dir,
                run_dir: dirs.run_dir,
                cgroup_parent,
            };
            Ok(doctor::run_doctor(
                &spawn_bin,
                &policy,
                Some(&agent),
                &root_agent,
                setuid,
                &mut out,
            ))
        }
        Command::Agent { config, spawn_bin } => agent::run(agent::AgentOptions {
            config,
            data_dir: cli.data_dir,
            run_dir: cli.run_dir,
            spawn_bin,
            log_level: cli.log_level,
        }),
        Command::Status { alloc, json } => {
            runtime()?.block_on(status::run(&client, alloc.as_deref(), json, &mut out))
        }
        Command::Stats {
            alloc,
            follow,
            json,
        } => runtime()?.block_on(stats::run(
            &client,
            alloc.as_deref(),
            follow,
            json,
            &mut out,
        )),
        Command::Logs {
            alloc,
            task,
            follow,
            stderr,
            offset,
            tail,
            since,
            all,
            json,
        } => runtime()?.block_on(logs::run(
            &client,
            &logs::LogsArgs {
                alloc: &alloc,
                task: &task,
                follow,
                stderr,
                offset,
                tail,
                since: since.as_deref(),
                all,
                json,
            },
            &mut out,
        )),
        Command::Events {
            follow,
            alloc,
            task,
            json,
        } => runtime()?.block_on(events::run(
            &client,
            alloc.as_deref(),
            task.as_deref(),
            follow,
            json,
            &mut out,
        )),
        Command::Adopt {
            id,
            root,
            job,
            json,
        } => runtime()?.block_on(adopt::run(&client, root, &id, job, json, &mut out)),
        Command::Stop {
            alloc,
            detach,
            json,
        } => runtime()?.block_on(jobs::stop(&client, &alloc, detach, json, &mut out)),
        Command::Exec {
            alloc,
            task,
            tty,
            command,
        } => exec::run(client.socket(), &alloc, &task, &command, tty),
        Command::Signal {
            alloc,
            task,
            signal,
            json,
        } => runtime()?.block_on(signal::run(&client, &alloc, &task, &signal, json, &mut out)),
        Command::Validate { file, config } => {
            let config = config
                .as_deref()
                .map(crate::agent::config::AgentConfig::load)
                .transpose()?;
            Ok(validate::run_validate(&file, config.as_ref(), &mut out))
        }
        Command::Job {
            command: JobCommand::Init { file },
        } => {
            let path = job_init::run_job_init(file.as_deref(), &mut out)?;
            let _ = path;
            Ok(0)
        }
        Command::Job {
            command: JobCommand::List { json },
        } => runtime()?.block_on(jobs::list(&client, json, &mut out)),
        Command::Job {
            command: JobCommand::Purge { job, json },
        } => runtime()?.block_on(jobs::purge(&client, &job, json, &mut out)),
        Command::Gc { job, json } => {
            runtime()?.block_on(jobs::gc(&client, job.as_deref(), json, &mut out))
        }
        Command::Completions { .. } | Command::Man { .. } | Command::SpawnLauncher => Ok(0),
    }
}
