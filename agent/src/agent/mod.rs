//! The long-running host agent: it owns the state store and the API, runs every
//! task through its driver, and on start reattaches to every task it had.

pub mod adopt;
pub mod config;
pub mod error;
mod exec;
mod gc;
mod scrape;
pub mod stats;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::{broadcast, mpsc, oneshot};

use crate::driver::Control;
use crate::jobspec::Job;
use crate::paths::Dirs;
use crate::runner::{self, Start};
use crate::state::{
    AllocRecord, Desired, StateError, StateStore, TaskEvent, TaskPhase, TaskRecord, SCHEMA,
};
use config::{AgentConfig, PortRange};
pub use error::{AgentError, Straggler};
use tend_proto::Token;

/// The agent's settings: the config file with every default filled in.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Data and run dirs.
    pub dirs: Dirs,
    /// The tend-spawn binary.
    pub spawn_bin: PathBuf,
    /// cgroup parent of every task.
    pub cgroup_parent: String,
    /// chroot_env of exec tasks that set none.
    pub chroot_env: Vec<(String, String)>,
    /// Agent variables a task may ask for.
    pub env_allowlist: Vec<String>,
    /// Dynamic ports.
    pub port_range: PortRange,
    /// How long a tend-spawn waits for Release after its task ended.
    pub linger: Duration,
    /// The state store's dir (the data dir's `state` unless set apart, as
    /// for the agent a foreground `tend run` embeds).
    pub state_dir: PathBuf,
    /// Whether the agent clears, at its start, the binds a dead agent left
    /// staged in the run dir: not one embedded in a foreground `tend run`,
    /// which shares the run dir with whatever else runs there.
    pub sweep_binds: bool,
    /// Whether tend-spawn is started by a spawn launcher (the agent's own
    /// executable, `tend spawn-launcher`), not by the agent itself: only
    /// where the agent runs as `tend`.
    pub spawn_launcher: bool,
    /// The file as written.
    pub config: AgentConfig,
}

impl Settings {
    /// Fill in defaults; command-line dirs win over the file's.
    pub fn resolve(
        config: AgentConfig,
        data_dir: Option<PathBuf>,
        run_dir: Option<PathBuf>,
        spawn_bin: Option<PathBuf>,
    ) -> std::io::Result<Settings> {
        let dirs = Dirs::new(
            data_dir.or_else(|| config.data_dir.clone()),
            run_dir.or_else(|| config.run_dir.clone()),
        )?;
        Ok(Settings {
            state_dir: dirs.state_dir(),
            sweep_binds: true,
            spawn_launcher: false,
            dirs,
            spawn_bin: spawn_bin
                .or_else(|| config.spawn_bin.clone())
                .unwrap_or_else(crate::driver::spawn::launch::default_spawn_bin),
            cgroup_parent: config
                .cgroup_parent
                .clone()
                .unwrap_or_else(|| "tend".into()),
            chroot_env: config
                .chroot_env
                .as_ref()
                .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
                .unwrap_or_else(crate::driver::spawn::config::default_chroot_env),
            env_allowlist: config.env_allowlist.clone(),
            port_range: config.ports.unwrap_or_default(),
            linger: Duration::from_secs(3600),
            config,
        })
    }
}

/// One event as the API streams it.
#[derive(Debug, Clone, Serialize)]
pub struct EventLine {
    /// The allocation.
    pub alloc_id: String,
    /// The task.
    pub task: String,
    /// The event.
    #[serde(flatten)]
    pub event: TaskEvent,
}

/// Task `task` of `alloc_id` among `allocs`, refused unless it is running.
pub(crate) fn running_task<'a>(
    allocs: &'a BTreeMap<String, AllocSlot>,
    alloc_id: &str,
    task: &str,
) -> Result<&'a TaskSlot, AgentError> {
    let slot = allocs.get(alloc_id).ok_or_else(|| AgentError::NoAlloc {
        alloc: alloc_id.to_string(),
    })?;
    let t = slot.tasks.get(task).ok_or_else(|| AgentError::NoTask {
        alloc: alloc_id.to_string(),
        task: task.to_string(),
    })?;
    if t.record.phase != TaskPhase::Running {
        return Err(AgentError::NotRunning {
            task: task.to_string(),
            phase: t.record.phase,
        });
    }
    Ok(t)
}

pub(crate) struct TaskSlot {
    /// Shared, never changed in place: a change makes a new record and
    /// swaps it in, so a snapshot under the state lock costs a count per
    /// record, not a copy of it.
    pub(crate) record: Arc<TaskRecord>,
    pub(crate) ctl: mpsc::UnboundedSender<Control>,
    /// Held across one change of `record`, from the copy it is made on to
    /// its publication after the write (see [`Inner::update_task`]).
    pub(crate) writing: Arc<Mutex<()>>,
}

impl TaskSlot {
    /// A slot for `record`, and the end its runner takes controls from.
    fn new(record: TaskRecord) -> (TaskSlot, mpsc::UnboundedReceiver<Control>) {
        let (ctl, rx) = mpsc::unbounded_channel();
        let slot = TaskSlot {
            record: Arc::new(record),
            ctl,
            writing: Arc::default(),
        };
        (slot, rx)
    }
}

/// One allocation's record and its tasks' records, as they were when taken.
pub type AllocSnapshot = (Arc<AllocRecord>, Vec<Arc<TaskRecord>>);

/// Every allocation's (see [`Agent::snapshot`]).
pub type Snapshot = Vec<AllocSnapshot>;

/// The allocations, and their tasks pending and running (see [`Agent::counts`]).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    /// Allocations, whatever their tasks' phases.
    pub allocations: usize,
    /// Tasks not started yet or waiting to restart.
    pub pending: usize,
    /// Tasks running.
    pub running: usize,
}

pub(crate) struct AllocSlot {
    /// Shared as [`TaskSlot::record`] is.
    pub(crate) record: Arc<AllocRecord>,
    /// Boxed: a map's node holds room for eleven entries, and an
    /// allocation of one task would keep room for ten more records inline.
    pub(crate) tasks: BTreeMap<String, Box<TaskSlot>>,
}

pub(crate) struct Inner {
    pub(crate) settings: Settings,
    pub(crate) store: StateStore,
    pub(crate) allocs: Mutex<BTreeMap<String, AllocSlot>>,
    pub(crate) events: broadcast::Sender<EventLine>,
    pub(crate) ports: crate::ports::PortAllocator,
    pub(crate) drivers: crate::driver::Drivers,
    /// Counters and the start-latency histogram of `GET /v1/metrics`.
    pub(crate) metrics: crate::metrics::Metrics,
    /// The exclusive lock on the state store, held for the agent's life: two
    /// agents on one data dir would each reattach and restart the same tasks.
    pub(crate) _lock: nix::fcntl::Flock<std::fs::File>,
}

/// Run `f`, a write that waits for the disk (fsync), with the runtime's
/// other tasks moved off this worker meanwhile (`block_in_place`): the agent
/// runs two workers, and a burst of task changes (a thousand exits at once)
/// would otherwise wait for each other's fsyncs two at a time. Writes that
/// overlap reach the file system together, whose journal commits them in
/// one go. Anywhere else (a current-thread runtime, no runtime) `f` just runs.
pub(crate) fn off_the_workers<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}

/// Whether and how a task's change goes to the store.
enum Persist<'a> {
    /// Kept in memory until the next persisted change.
    No,
    /// The record, durable before the API shows it; a failure is logged.
    Record,
    /// The record and a new run's token, durable together; a failure is
    /// returned and the change not made.
    WithToken(&'a Token),
}

/// Undo the allocations of a submit that failed before any of them ran:
/// their ports, their records and their dirs.
fn abandon<'a>(inner: &Inner, alloc_ids: impl Iterator<Item = &'a str>) {
    for id in alloc_ids {
        if let Err(e) = inner.remove_alloc_files(id) {
            tracing::warn!(alloc = %id, error = %e, "removing what a refused job made");
        }
    }
}

/// How many threads make a job's new allocations at once.
const SUBMIT_WRITERS: usize = 8;

/// Make the dirs of a job's new allocations and write their records,
/// [`SUBMIT_WRITERS`] at a time, then make them durable together: a job of a
/// thousand allocations made six thousand dirs and files one after the other,
/// with two fsyncs per file. A task's own record is written first at its
/// launch (a task with none never ran: see [`StateStore::load`]). The first
/// error, if any.
fn make_new(inner: &Inner, new: &[(AllocRecord, Vec<TaskRecord>)]) -> Result<(), AgentError> {
    // Few: each write's own fsyncs. Many: one syncfs for them all.
    let keep = new.len() < crate::durable::SYNCFS_FROM;
    let make = |(a, _): &(AllocRecord, Vec<TaskRecord>)| {
        crate::alloc::make_dirs(inner, a)?;
        inner
            .store
            .stage_new_alloc(a, keep)
            .map_err(AgentError::from)
    };
    off_the_workers(|| {
        let staged: Vec<Result<_, AgentError>> = if new.len() < 2 {
            new.iter().map(make).collect()
        } else {
            let chunk = new.len().div_ceil(SUBMIT_WRITERS);
            std::thread::scope(|s| {
                let running: Vec<_> = new
                    .chunks(chunk)
                    .map(|part| {
                        let work = move || part.iter().map(make).collect::<Vec<_>>();
                        // A thread that cannot be had: its part is made here.
                        std::thread::Builder::new()
                            .name("tend-submit".into())
                            .spawn_scoped(s, work)
                            .map_err(|_| part)
                    })
                    .collect();
                running
                    .into_iter()
                    .flat_map(|r| match r {
                        Ok(h) => h.join().expect("a submit writer panicked"),
                        Err(part) => part.iter().map(make).collect(),
                    })
                    .collect()
            })
        };
        let staged: Vec<_> = staged.into_iter().collect::<Result<Vec<_>, _>>()?;
        if keep {
            inner
                .store
                .make_durable(staged.into_iter().flatten().collect())?;
        } else {
            inner.store.sync_all()?;
        }
        Ok(())
    })
}

impl Inner {
    /// Change a task's record, persist it, and publish the event it carries.
    pub(crate) fn update_task(
        &self,
        alloc_id: &str,
        task: &str,
        f: impl FnOnce(&mut TaskRecord) -> Option<TaskEvent>,
    ) -> Option<Arc<TaskRecord>> {
        self.change_task(alloc_id, task, true, f)
    }

    /// Like [`Inner::update_task`] for a change that carries several events,
    /// all persisted in the one write (e.g. a run's end and the task's end: a
    /// crash between two writes would leave a record that says neither).
    pub(crate) fn update_task_events(
        &self,
        alloc_id: &str,
        task: &str,
        f: impl FnOnce(&mut TaskRecord) -> Vec<TaskEvent>,
    ) -> Option<Arc<TaskRecord>> {
        self.change_task(alloc_id, task, true, f)
    }

    /// Like [`Inner::update_task`], but the change stays in memory until the next
    /// persisted one: for changes a restart can do without (a reattach finds the
    /// same handle again), so that taking up many tasks costs no fsync each.
    pub(crate) fn note_task(
        &self,
        alloc_id: &str,
        task: &str,
        f: impl FnOnce(&mut TaskRecord) -> Option<TaskEvent>,
    ) -> Option<Arc<TaskRecord>> {
        self.change_task(alloc_id, task, false, f)
    }

    /// One change of a task's record: made on a copy, written to the store
    /// (when `persist`), and only then put where the API reads it. A state
    /// the API has shown (running, say) is on disk, so an agent killed just
    /// after showing it finds it again. The task's `writing` lock keeps
    /// changes of one task in order; other tasks' changes go on meanwhile.
    fn change_task<E: IntoIterator<Item = TaskEvent>>(
        &self,
        alloc_id: &str,
        task: &str,
        persist: bool,
        f: impl FnOnce(&mut TaskRecord) -> E,
    ) -> Option<Arc<TaskRecord>> {
        let persist = if persist {
            Persist::Record
        } else {
            Persist::No
        };
        self.change_task_as(alloc_id, task, persist, f)
            .and_then(Result::ok)
    }

    /// [`Inner::update_task`] that also writes a new run's token beside
    /// the record, durable together (a start's one durable step before its
    /// launch). Unlike a plain update's, a failed write is the caller's:
    /// the record is left as it was, for a start that must not go on.
    pub(crate) fn update_task_with_token(
        &self,
        alloc_id: &str,
        task: &str,
        token: &Token,
        f: impl FnOnce(&mut TaskRecord) -> Option<TaskEvent>,
    ) -> Result<(), StateError> {
        self.change_task_as(alloc_id, task, Persist::WithToken(token), f)
            .transpose()
            .map(|_| ())
    }

    /// [`Inner::change_task`], persisted as `persist` says; None for a task
    /// the agent does not have.
    fn change_task_as<E: IntoIterator<Item = TaskEvent>>(
        &self,
        alloc_id: &str,
        task: &str,
        persist: Persist<'_>,
        f: impl FnOnce(&mut TaskRecord) -> E,
    ) -> Option<Result<Arc<TaskRecord>, StateError>> {
        let gate = {
            let allocs = self.allocs.lock().expect("allocs lock");
            Arc::clone(&allocs.get(alloc_id)?.tasks.get(task)?.writing)
        };
        let _writing = gate.lock().expect("task write lock");
        let (rec, ev) = {
            let allocs = self.allocs.lock().expect("allocs lock");
            let mut rec = TaskRecord::clone(&allocs.get(alloc_id)?.tasks.get(task)?.record);
            let ev = f(&mut rec);
            (rec, ev)
        };
        match persist {
            Persist::No => {}
            Persist::Record => {
                if let Err(e) = off_the_workers(|| self.store.put_task(&rec)) {
                    tracing::error!(alloc_id, task, error = %e, "cannot persist task state");
                }
            }
            Persist::WithToken(token) => {
                if let Err(e) = off_the_workers(|| self.store.put_task_and_token(&rec, token)) {
                    return Some(Err(e));
                }
            }
        }
        let rec = Arc::new(rec);
        {
            let mut allocs = self.allocs.lock().expect("allocs lock");
            let slot = allocs.get_mut(alloc_id)?.tasks.get_mut(task)?;
            slot.record = Arc::clone(&rec);
        }
        for event in ev {
            tracing::info!(alloc_id, task, kind = %event.kind, "{}", event.message);
            let _ = self.events.send(EventLine {
                alloc_id: alloc_id.to_string(),
                task: task.to_string(),
                event,
            });
        }
        Some(Ok(rec))
    }

    /// The allocation record (a copy).
    /// See [`Agent::logs_dir`].
    pub(crate) fn logs_dir(&self, alloc: &AllocRecord) -> PathBuf {
        match &alloc.adopted {
            Some(a) => a.dir.join(tend_proto::names::LOG_DIR),
            None => self.settings.dirs.alloc(&alloc.alloc_id).logs(),
        }
    }

    pub(crate) fn alloc_record(&self, alloc_id: &str) -> Option<AllocRecord> {
        self.allocs
            .lock()
            .expect("allocs lock")
            .get(alloc_id)
            .map(|a| AllocRecord::clone(&a.record))
    }

    /// The task record (a copy).
    pub(crate) fn task_record(&self, alloc_id: &str, task: &str) -> Option<TaskRecord> {
        self.allocs
            .lock()
            .expect("allocs lock")
            .get(alloc_id)
            .and_then(|a| a.tasks.get(task))
            .map(|t| TaskRecord::clone(&t.record))
    }
}

/// The jobs of the allocations loaded from the store, each held once: every
/// alloc.json carries its whole job, and the allocations of one submit
/// (`count = 1000`) would otherwise each keep a copy of it.
#[derive(Default)]
struct SharedJobs(BTreeMap<String, Vec<Arc<Job>>>);

impl SharedJobs {
    /// The job equal to `job` seen before, else `job`, kept for the next.
    fn share(&mut self, job: &Arc<Job>) -> Arc<Job> {
        let same_name = self.0.entry(job.name.clone()).or_default();
        if let Some(j) = same_name.iter().find(|j| ***j == **job) {
            return Arc::clone(j);
        }
        same_name.push(Arc::clone(job));
        Arc::clone(job)
    }
}

/// The agent.
#[derive(Clone)]
pub struct Agent {
    pub(crate) inner: Arc<Inner>,
}

/// What the agent found and did when it started.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ReattachReport {
    /// Tasks whose tend-spawn answered: waiting on them again.
    pub reattached: usize,
    /// Tasks that had ended meanwhile: their exit files recorded.
    pub exited: usize,
    /// Tasks with neither: lost.
    pub lost: usize,
    /// Tasks whose tend-spawn lives but did not answer yet: retried with
    /// backoff in the background, never lost while it lives.
    pub unreachable: usize,
    /// Tasks that had not started: started now.
    pub started: usize,
    /// State files that could not be read.
    pub unreadable: usize,
    /// How long it took, ms.
    pub millis: u64,
}

/// What a stop may take beyond its tasks' longest kill_timeout.
const STOP_SLACK: Duration = Duration::from_secs(30);

/// How long a starting agent waits for the data dir's lock. An agent killed
/// while it was forking a tend-spawn leaves the lock with that child until
/// the child's exec closes it, a matter of milliseconds; a supervisor that
/// restarts the agent at once must not see "another agent" for that.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Take the exclusive lock of `file`, trying again every 20 ms for `wait`.
fn lock_data_dir(
    mut file: std::fs::File,
    wait: std::time::Duration,
) -> Result<nix::fcntl::Flock<std::fs::File>, nix::errno::Errno> {
    let end = std::time::Instant::now() + wait;
    let mut said = false;
    loop {
        match nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock) {
            Ok(l) => return Ok(l),
            Err((f, nix::errno::Errno::EWOULDBLOCK)) if std::time::Instant::now() < end => {
                if !said {
                    tracing::info!("the data dir is locked; waiting for it");
                    said = true;
                }
                file = f;
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err((_, e)) => return Err(e),
        }
    }
}

impl Agent {
    /// An agent over `settings`; creates its dirs.
    pub fn new(settings: Settings) -> Result<Agent, AgentError> {
        let dir = |what: &'static str, path: PathBuf| {
            move |source| AgentError::Dir { what, path, source }
        };
        std::fs::create_dir_all(&settings.dirs.data_dir)
            .map_err(dir("create", settings.dirs.data_dir.clone()))?;
        crate::paths::ensure_private_dir(&settings.dirs.run_dir)
            .map_err(dir("run dir", settings.dirs.run_dir.clone()))?;
        crate::paths::ensure_private_dir(&settings.dirs.socket_dir())
            .map_err(dir("socket dir", settings.dirs.socket_dir()))?;
        // Allocs made by an older agent were open to every user: closed now.
        crate::paths::ensure_private_dir(&settings.dirs.allocs_dir())
            .map_err(dir("allocs dir", settings.dirs.allocs_dir()))?;
        if settings.sweep_binds {
            crate::driver::docker::binds::sweep(&settings.dirs.binds_dir());
        }
        // Exec tasks need a cgroup parent they can be made under: say so now,
        // in one line, rather than at every task's start. A non-root agent
        // goes through a setuid tend-spawn, whose policy and `tend doctor`
        // own that question.
        let isolating =
            settings.config.driver_enabled("exec") || settings.config.driver_enabled("oci");
        if isolating && nix::unistd::geteuid().is_root() {
            tend_cgroup::Hierarchies::detect()
                .and_then(|h| h.check_parent(&settings.cgroup_parent))
                .map_err(AgentError::ExecCgroup)?;
        }
        let docker = if settings.config.driver_enabled("docker") {
            let p = settings
                .config
                .plugin
                .get("docker")
                .cloned()
                .unwrap_or_default();
            let opts = crate::driver::docker::DockerOptions {
                endpoint: p
                    .endpoint
                    .unwrap_or_else(|| PathBuf::from(crate::driver::docker::DEFAULT_ENDPOINT)),
                allow_privileged: p.allow_privileged,
                allow_host_network: p.allow_host_network,
                allowed_caps: p.allowed_caps,
                allow_devices: p.allow_devices,
                allow_host_binds: p.allow_host_binds,
                cpu_total_compute: settings.config.cpu_total_compute,
            };
            let engine =
                crate::driver::docker::DockerDriver::new(opts).map_err(AgentError::DockerDriver)?;
            Some(Arc::new(crate::driver::docker::run::ContainerDriver::new(
                engine,
                settings.dirs.clone(),
            )))
        } else {
            None
        };
        let drivers = crate::driver::Drivers {
            spawn: Arc::new(crate::driver::spawn::SpawnDriver {
                spawn_bin: settings.spawn_bin.clone(),
                dirs: settings.dirs.clone(),
                chroot_env: settings.chroot_env.clone(),
                cgroup_parent: settings.cgroup_parent.clone(),
                allow_root: settings.config.exec_allows_root(),
                oci_allow_root: settings.config.allows_root("oci"),
                oci_host_binds: settings.config.oci_allows_host_binds(),
                cpu_total_compute: settings.config.cpu_total_compute,
                linger: settings.linger,
                launcher: settings
                    .spawn_launcher
                    .then(|| Arc::new(crate::driver::spawn::launcher::Launcher::new())),
            }),
            docker,
        };
        let store = StateStore::open(&settings.state_dir).map_err(AgentError::StateStore)?;
        let lock_path = settings.state_dir.join("agent.lock");
        let lock_file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|source| AgentError::LockFile {
                path: lock_path.clone(),
                source,
            })?;
        let lock =
            lock_data_dir(lock_file, LOCK_WAIT).map_err(|source| AgentError::DataDirLocked {
                data_dir: settings.dirs.data_dir.clone(),
                lock: lock_path.clone(),
                source,
            })?;
        let (events, _) = broadcast::channel(1024);
        let r = settings.port_range;
        let ports = crate::ports::PortAllocator::new(
            r.min..=r.max,
            std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
        )
        .map_err(AgentError::PortRange)?;
        Ok(Agent {
            inner: Arc::new(Inner {
                settings,
                store,
                allocs: Mutex::new(BTreeMap::new()),
                events,
                ports,
                drivers,
                metrics: crate::metrics::Metrics::default(),
                _lock: lock,
            }),
        })
    }

    /// The settings in force.
    pub fn settings(&self) -> &Settings {
        &self.inner.settings
    }

    /// Load the state store and take every task up again, all at once: a live
    /// tend-spawn is waited on, an ended one's exit file recorded, the rest lost.
    /// Returns when every task is resolved.
    pub async fn reattach(&self) -> Result<ReattachReport, AgentError> {
        let t0 = Instant::now();
        let (loaded, errors) = self.inner.store.load()?;
        for e in &errors {
            tracing::error!(error = %e, "unreadable state file: skipped");
        }
        let mut waits = Vec::new();
        let mut jobs = SharedJobs::default();
        for (mut alloc, tasks) in loaded {
            alloc.job = jobs.share(&alloc.job);
            let alloc_id = alloc.alloc_id.clone();
            if tasks.iter().any(|t| t.phase != TaskPhase::Dead) {
                self.inner.ports.reserve(
                    &alloc_id,
                    alloc.ports.values().flatten().map(|p| p.host_port),
                );
            }
            let mut starts = Vec::new();
            {
                let mut allocs = self.inner.allocs.lock().expect("allocs lock");
                let slot = allocs.entry(alloc_id.clone()).or_insert(AllocSlot {
                    record: Arc::new(alloc.clone()),
                    tasks: BTreeMap::new(),
                });
                for rec in tasks {
                    let start = match (rec.phase, &rec.handle) {
                        (TaskPhase::Dead, _) => None,
                        (_, Some(h)) => Some(Start::Reattach(Box::new(h.clone()))),
                        (_, None) => Some(Start::Fresh),
                    };
                    let name = rec.task.clone();
                    let (task_slot, rx) = TaskSlot::new(rec);
                    slot.tasks.insert(name.clone(), Box::new(task_slot));
                    if let Some(s) = start {
                        starts.push((name, rx, s));
                    }
                }
            }
            for (name, rx, start) in starts {
                let (ready_tx, ready_rx) = oneshot::channel();
                tokio::spawn(runner::task_loop(
                    self.inner.clone(),
                    alloc_id.clone(),
                    name,
                    rx,
                    start,
                    Some(ready_tx),
                ));
                waits.push(ready_rx);
            }
        }
        let mut report = ReattachReport {
            unreadable: errors.len(),
            ..Default::default()
        };
        for w in waits {
            match w.await {
                Ok(runner::Resolved::Reattached) => report.reattached += 1,
                Ok(runner::Resolved::Exited) => report.exited += 1,
                Ok(runner::Resolved::Lost) => report.lost += 1,
                Ok(runner::Resolved::Started) => report.started += 1,
                Ok(runner::Resolved::Unreachable) => report.unreachable += 1,
                Err(_) => report.lost += 1,
            }
        }
        report.millis = u64::try_from(t0.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.inner
            .metrics
            .reattached(crate::metrics::ReattachFigures {
                millis: report.millis,
                reattached: report.reattached,
                exited: report.exited,
                lost: report.lost,
                unreachable: report.unreachable,
            });
        Ok(report)
    }

    /// Run a validated job: one allocation per group and count. Returns the ids.
    pub fn submit(&self, job: Job) -> Result<Vec<String>, AgentError> {
        for t in job.groups.iter().flat_map(|g| &g.tasks) {
            if !self.inner.settings.config.driver_enabled(t.driver.name()) {
                return Err(AgentError::DriverDisabled {
                    task: t.name.clone(),
                    driver: t.driver.name(),
                });
            }
            crate::alloc::preflight(&self.inner, t)?;
        }
        let job = Arc::new(job);
        let mut new: Vec<(AllocRecord, Vec<TaskRecord>)> = Vec::new();
        for group in &job.groups {
            for index in 0..group.count {
                let alloc_id = crate::paths::new_alloc_id();
                let record = AllocRecord {
                    schema: SCHEMA,
                    alloc_id: alloc_id.clone(),
                    job: Arc::clone(&job),
                    group: group.name.clone(),
                    index,
                    desired: Desired::Run,
                    created_at: tend_proto::time::now(),
                    ports: Default::default(),
                    adopted: None,
                };
                let record = match crate::alloc::prepare(&self.inner, record) {
                    Ok(r) => r,
                    Err(e) => {
                        // This one's ports may be taken by then.
                        let ids = new.iter().map(|(a, _)| a.alloc_id.as_str());
                        abandon(&self.inner, ids.chain([alloc_id.as_str()]));
                        return Err(e);
                    }
                };
                let tasks: Vec<TaskRecord> = group
                    .tasks
                    .iter()
                    .map(|t| TaskRecord::new(&alloc_id, &t.name))
                    .collect();
                new.push((record, tasks));
            }
        }
        // On the disk before anything runs or is shown, all at once; a job
        // is taken whole or not at all.
        if let Err(e) = make_new(&self.inner, &new) {
            abandon(&self.inner, new.iter().map(|(a, _)| a.alloc_id.as_str()));
            return Err(e);
        }
        let mut ids = Vec::new();
        for (record, tasks) in new {
            let alloc_id = record.alloc_id.clone();
            let mut starts = Vec::new();
            {
                let mut allocs = self.inner.allocs.lock().expect("allocs lock");
                let mut slot = AllocSlot {
                    record: Arc::new(record),
                    tasks: BTreeMap::new(),
                };
                for rec in tasks {
                    let name = rec.task.clone();
                    let (task_slot, rx) = TaskSlot::new(rec);
                    slot.tasks.insert(name.clone(), Box::new(task_slot));
                    starts.push((name, rx));
                }
                allocs.insert(alloc_id.clone(), slot);
            }
            for (name, rx) in starts {
                tokio::spawn(runner::task_loop(
                    self.inner.clone(),
                    alloc_id.clone(),
                    name,
                    rx,
                    Start::Fresh,
                    None,
                ));
            }
            ids.push(alloc_id);
        }
        Ok(ids)
    }

    /// The allocation id that `prefix` names uniquely.
    pub fn resolve_alloc(&self, prefix: &str) -> Result<String, AgentError> {
        if prefix.is_empty() {
            // "" is a prefix of every id: it would pick the only allocation.
            return Err(AgentError::EmptyAllocId);
        }
        let allocs = self.inner.allocs.lock().expect("allocs lock");
        if allocs.contains_key(prefix) {
            return Ok(prefix.to_string());
        }
        let hits: Vec<&String> = allocs.keys().filter(|k| k.starts_with(prefix)).collect();
        match hits.as_slice() {
            [] => Err(AgentError::NoAllocMatch {
                prefix: prefix.to_string(),
            }),
            [one] => Ok((*one).clone()),
            many => Err(AgentError::AmbiguousAlloc {
                prefix: prefix.to_string(),
                matches: many.iter().map(|s| (*s).clone()).collect(),
            }),
        }
    }

    /// The dir of an allocation's logs: its alloc dir's, or for an adopted
    /// container, the container's.
    pub fn logs_dir(&self, alloc: &AllocRecord) -> PathBuf {
        self.inner.logs_dir(alloc)
    }

    /// Stop every task of an allocation (with their kill signals and timeouts).
    pub fn stop_alloc(&self, alloc_id: &str) -> Result<(), AgentError> {
        let mut allocs = self.inner.allocs.lock().expect("allocs lock");
        let slot = allocs
            .get_mut(alloc_id)
            .ok_or_else(|| AgentError::NoAlloc {
                alloc: alloc_id.to_string(),
            })?;
        Arc::make_mut(&mut slot.record).desired = Desired::Stop;
        self.inner.store.put_alloc(&slot.record)?;
        for t in slot.tasks.values() {
            let _ = t.ctl.send(Control::Stop);
        }
        Ok(())
    }

    /// How long a stop of the allocation may take before it is reported as
    /// not done: its longest kill_timeout, plus room for the escalation to
    /// SIGKILL and the exit's record.
    pub fn stop_patience(&self, alloc_id: &str) -> Duration {
        let longest = self
            .inner
            .alloc_record(alloc_id)
            .and_then(|a| {
                let g = a.job.groups.iter().find(|g| g.name == a.group)?;
                g.tasks.iter().map(|t| t.kill_timeout).max()
            })
            .unwrap_or_default();
        longest + STOP_SLACK
    }

    /// Wait until every task of the allocation is dead. Past `patience`, the
    /// error names each task still alive and why (its tend-spawn unreachable,
    /// or still stopping).
    pub async fn wait_dead(
        &self,
        alloc_id: &str,
        patience: Duration,
    ) -> Result<Vec<Arc<TaskRecord>>, AgentError> {
        let mut events = self.events();
        let until = tokio::time::Instant::now() + patience;
        loop {
            let (_, tasks) = self.alloc(alloc_id)?;
            let alive: Vec<&TaskRecord> = tasks
                .iter()
                .map(|t| &**t)
                .filter(|t| t.phase != TaskPhase::Dead)
                .collect();
            if alive.is_empty() {
                return Ok(tasks);
            }
            if tokio::time::Instant::now() >= until {
                return Err(AgentError::StopTimeout {
                    alloc: alloc_id.to_string(),
                    secs: patience.as_secs(),
                    alive: alive
                        .iter()
                        .map(|t| Straggler {
                            task: t.task.clone(),
                            phase: t.phase,
                            unreachable: t.unreachable.clone(),
                        })
                        .collect(),
                });
            }
            // An event wakes the check at once; the tick covers a lagging
            // receiver and a change that made no event.
            tokio::select! {
                _ = events.recv() => {}
                () = tokio::time::sleep(Duration::from_millis(250)) => {}
                () = tokio::time::sleep_until(until) => {}
            }
        }
    }

    /// Send a signal to a running task.
    pub async fn signal_task(
        &self,
        alloc_id: &str,
        task: &str,
        signo: i32,
    ) -> Result<(), AgentError> {
        let (tx, rx) = oneshot::channel();
        {
            let allocs = self.inner.allocs.lock().expect("allocs lock");
            let t = running_task(&allocs, alloc_id, task)?;
            t.ctl
                .send(Control::Signal(signo, tx))
                .map_err(|_| AgentError::RunnerGone {
                    task: task.to_string(),
                })?;
        }
        match tokio::time::timeout(Duration::from_secs(10), rx).await {
            Ok(Ok(r)) => r.map_err(|source| AgentError::Signal {
                task: task.to_string(),
                source,
            }),
            _ => Err(AgentError::SignalUnanswered {
                task: task.to_string(),
            }),
        }
    }

    /// A snapshot of every allocation with its tasks: the records as they
    /// are now, shared (the state lock is held only to count them out).
    pub fn snapshot(&self) -> Snapshot {
        let allocs = self.inner.allocs.lock().expect("allocs lock");
        allocs
            .values()
            .map(|a| {
                (
                    Arc::clone(&a.record),
                    a.tasks.values().map(|t| Arc::clone(&t.record)).collect(),
                )
            })
            .collect()
    }

    /// How many allocations there are, and their tasks pending and running,
    /// counted under the state lock: health is asked often (a load
    /// balancer, a watchdog) and needs no record, not even a shared one.
    pub fn counts(&self) -> Counts {
        let allocs = self.inner.allocs.lock().expect("allocs lock");
        let mut c = Counts {
            allocations: allocs.len(),
            ..Counts::default()
        };
        for t in allocs.values().flat_map(|a| a.tasks.values()) {
            match t.record.phase {
                TaskPhase::Pending => c.pending += 1,
                TaskPhase::Running => c.running += 1,
                TaskPhase::Dead => {}
            }
        }
        c
    }

    /// A snapshot of one allocation.
    pub fn alloc(&self, alloc_id: &str) -> Result<AllocSnapshot, AgentError> {
        let allocs = self.inner.allocs.lock().expect("allocs lock");
        let a = allocs.get(alloc_id).ok_or_else(|| AgentError::NoAlloc {
            alloc: alloc_id.to_string(),
        })?;
        Ok((
            Arc::clone(&a.record),
            a.tasks.values().map(|t| Arc::clone(&t.record)).collect(),
        ))
    }

    /// Subscribe to task events.
    pub fn events(&self) -> broadcast::Receiver<EventLine> {
        self.inner.events.subscribe()
    }
}

#[cfg(test)]
mod tests;
