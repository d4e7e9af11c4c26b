//! `tend adopt`: take up a container that `tend-oci` started (for Slurm, or
//! by hand) as an allocation of the agent's own, without starting anything.
//!
//! The container's tend-spawn already keeps everything the agent needs of a
//! run: its control socket, the token in the container's record, its exit
//! file and its logs. Adopting writes an allocation record over them (a job
//! of one `oci` task that is never restarted: the agent did not launch it
//! and does not launch it again) and hands the run to the same path as a
//! reattach after an agent restart. From then on it is one of the agent's
//! tasks: `tend status`, `logs`, `exec`, `stats` and `stop` reach it, its
//! exit is recorded, and a restarted agent takes it up again.
//!
//! Only a container whose files are the agent's user's is taken: the agent
//! reads its logs and exit file and trusts its record's token, so a dir that
//! another user could have written is refused, by path.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tend_oci::container::{Container, ContainerError};
use tend_proto::msg::TaskState;
use tend_proto::{Request, Response};

use super::{Agent, AgentError, AllocSlot, TaskSlot};
use crate::driver::spawn::retry;
use crate::jobspec::Job;
use crate::runner::{self, Start};
use crate::state::{Adopted, AllocRecord, Desired, Handle, TaskPhase, TaskRecord, SCHEMA};

/// The one task of an adopted container's allocation, named as tend-oci
/// names it in its logs and exit file.
pub const ADOPTED_TASK: &str = tend_oci::container::TASK;

/// The group of an adopted container's allocation.
pub const ADOPTED_GROUP: &str = "oci";

/// What to adopt.
#[derive(Debug, Clone)]
pub struct AdoptRequest {
    /// tend-oci's state root (its `--root`).
    pub root: PathBuf,
    /// The container's id under it.
    pub id: String,
    /// The name of the job the allocation is shown under; the id when none.
    pub job: Option<String>,
}

/// Why a container was not adopted.
#[derive(Debug, thiserror::Error)]
pub enum AdoptError {
    /// The state root is not an absolute path.
    #[error("root: {0}: want an absolute path (tend-oci's --root)")]
    RelativeRoot(PathBuf),
    /// The container's id or record.
    #[error(transparent)]
    Container(#[from] ContainerError),
    /// A file of the container that the agent's user does not own.
    #[error("{path}: owned by uid {uid}, not by the agent's ({me}): only containers of the agent's user are adopted")]
    NotOurs {
        /// The file.
        path: PathBuf,
        /// Its owner.
        uid: u32,
        /// The agent's euid.
        me: u32,
    },
    /// A file of the container that others could have changed.
    #[error("{path}: {why}: not adopted")]
    Unsafe {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        why: String,
    },
    /// The container is already an allocation of this agent.
    #[error("container {id} is already adopted as allocation {alloc}")]
    AlreadyAdopted {
        /// The container.
        id: String,
        /// Its allocation.
        alloc: String,
    },
    /// The container's tend-spawn does not answer.
    #[error("container {id}: its tend-spawn does not answer ({why}): it is not running")]
    Unreachable {
        /// The container.
        id: String,
        /// The connection's error.
        why: String,
    },
    /// The container is not running.
    #[error("container {id} is {state}: only a running container is adopted")]
    NotRunning {
        /// The container.
        id: String,
        /// Its state, as `tend-oci state` says it.
        state: &'static str,
    },
    /// The job name is not one a job can have.
    #[error("job: {0:?}: want 1-200 of [A-Za-z0-9._-]")]
    JobName(String),
}

impl AdoptError {
    /// The API's status for it.
    pub fn status(&self) -> u16 {
        match self {
            AdoptError::RelativeRoot(_)
            | AdoptError::JobName(_)
            | AdoptError::Container(ContainerError::BadId(_)) => 400,
            AdoptError::Container(ContainerError::Missing { .. }) => 404,
            AdoptError::NotOurs { .. } | AdoptError::Unsafe { .. } => 403,
            AdoptError::Container(_)
            | AdoptError::AlreadyAdopted { .. }
            | AdoptError::Unreachable { .. }
            | AdoptError::NotRunning { .. } => 409,
        }
    }
}

/// What a checked file is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// The state root: others may make their containers in it when it is
    /// sticky (as /tmp is; Slurm's users run theirs), since none of them
    /// can then move or remove an entry that is not theirs.
    Root,
    /// A dir of the container: no one else writes it.
    Dir,
    /// The record with the token: no one else reads it.
    Secret,
}

/// Check that `path` is the agent's user's own, no link, and as `kind` says.
fn check_owned(path: &Path, me: u32, kind: Kind) -> Result<(), AdoptError> {
    let meta = std::fs::symlink_metadata(path).map_err(|e| AdoptError::Unsafe {
        path: path.to_path_buf(),
        why: e.to_string(),
    })?;
    let unsafe_because = |why: &str| AdoptError::Unsafe {
        path: path.to_path_buf(),
        why: why.to_string(),
    };
    if meta.file_type().is_symlink() {
        return Err(unsafe_because("a symbolic link"));
    }
    if meta.uid() != me {
        return Err(AdoptError::NotOurs {
            path: path.to_path_buf(),
            uid: meta.uid(),
            me,
        });
    }
    let sticky = kind == Kind::Root && meta.mode() & 0o1000 != 0;
    if kind != Kind::Secret {
        if !meta.is_dir() {
            return Err(unsafe_because("not a directory"));
        }
        if meta.mode() & 0o022 != 0 && !sticky {
            return Err(unsafe_because(&format!(
                "mode {:o} lets others write it",
                meta.mode() & 0o7777
            )));
        }
    } else if meta.mode() & 0o077 != 0 {
        return Err(unsafe_because(&format!(
            "mode {:o} lets others read or write the token in it",
            meta.mode() & 0o7777
        )));
    }
    Ok(())
}

/// The job an adopted container is shown under: one group, one `oci` task
/// of the container's bundle, never restarted. Made by the job decoder from
/// a fixed text, so it has every default a job file would.
fn adopted_job(name: &str, bundle: &Path) -> Result<Job, AdoptError> {
    let ok = !name.is_empty()
        && name.len() <= 200
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if !ok {
        return Err(AdoptError::JobName(name.to_string()));
    }
    let src = format!(
        "job \"{name}\" {{\n  group \"{ADOPTED_GROUP}\" {{\n    restart {{\n      attempts = 0\n      mode = \"fail\"\n    }}\n    task \"{ADOPTED_TASK}\" {{\n      driver = \"oci\"\n      config {{\n        bundle = \"/\"\n      }}\n    }}\n  }}\n}}\n"
    );
    let mut job = crate::jobspec::parse_str(&src, "adopted")
        .map_err(|_| AdoptError::JobName(name.to_string()))?;
    if let Some(t) = job.groups.first_mut().and_then(|g| g.tasks.first_mut()) {
        t.config.bundle = Some(bundle.display().to_string());
    }
    Ok(job)
}

/// The runtime-spec's word for a state that is not adopted.
fn state_word(s: TaskState) -> &'static str {
    match s {
        TaskState::Created => "created (not started)",
        TaskState::Running | TaskState::Stopping => "running",
        TaskState::Exited => "stopped",
    }
}

impl Agent {
    /// Take up the running container `req.id` of tend-oci's root `req.root`
    /// as a new allocation; returns its id and the container's dir.
    pub async fn adopt(&self, req: AdoptRequest) -> Result<(String, PathBuf), AgentError> {
        let inner = &self.inner;
        if !inner.settings.config.driver_enabled("oci") {
            return Err(AgentError::DriverDisabled {
                task: ADOPTED_TASK.to_string(),
                driver: "oci",
            });
        }
        if !req.root.is_absolute() {
            return Err(AdoptError::RelativeRoot(req.root).into());
        }
        let me = nix::unistd::geteuid().as_raw();
        let dir = Container::dir_of(&req.root, &req.id).map_err(AdoptError::from)?;
        if !dir.exists() {
            return Err(AdoptError::from(ContainerError::Missing {
                id: req.id.clone(),
                path: dir,
            })
            .into());
        }
        check_owned(&req.root, me, Kind::Root)?;
        check_owned(&dir, me, Kind::Dir)?;
        check_owned(&dir.join("ctl"), me, Kind::Dir)?;
        check_owned(&dir.join("state.json"), me, Kind::Secret)?;
        let c = Container::open(&req.root, &req.id).map_err(AdoptError::from)?;
        if let Some(alloc) = self.adopted_by(&c.dir) {
            return Err(AdoptError::AlreadyAdopted {
                id: req.id.clone(),
                alloc,
            }
            .into());
        }
        let socket = c.socket();
        let unreachable = |why: String| AdoptError::Unreachable {
            id: req.id.clone(),
            why,
        };
        let mut client = retry::connect_once(&socket, c.token)
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let status =
            match tokio::time::timeout(retry::ATTEMPT_TIMEOUT, client.request(Request::Status))
                .await
            {
                Ok(Ok(Response::Status(s))) => s,
                Ok(Ok(other)) => return Err(unreachable(format!("answered {other:?}")).into()),
                Ok(Err(e)) => return Err(unreachable(e.to_string()).into()),
                Err(_) => return Err(unreachable("no status in time".into()).into()),
            };
        if !matches!(status.state, TaskState::Running | TaskState::Stopping) {
            return Err(AdoptError::NotRunning {
                id: req.id.clone(),
                state: state_word(status.state),
            }
            .into());
        }
        let welcome = *client.welcome();
        drop(client);
        let job = adopted_job(req.job.as_deref().unwrap_or(&req.id), &c.bundle)?;
        let alloc_id = crate::paths::new_alloc_id();
        let record = AllocRecord {
            schema: SCHEMA,
            alloc_id: alloc_id.clone(),
            job: Arc::new(job),
            group: ADOPTED_GROUP.to_string(),
            index: 0,
            desired: Desired::Run,
            created_at: tend_proto::time::now(),
            ports: BTreeMap::new(),
            adopted: Some(Adopted {
                id: req.id.clone(),
                dir: c.dir.clone(),
            }),
        };
        let handle = Handle {
            driver: "oci".to_string(),
            run: status.run,
            socket_path: Some(socket.display().to_string()),
            daemon_pid: Some(welcome.daemon_pid),
            daemon_start_time: crate::ident::start_time(welcome.daemon_pid),
            instance: Some(welcome.instance.to_string()),
            task_pid: Some(welcome.task_pid),
            task_start_time: crate::ident::start_time(welcome.task_pid),
            cgroup: c.cgroup.clone(),
            exit_status_path: c
                .dir
                .join(tend_proto::names::exit_status_file(ADOPTED_TASK))
                .display()
                .to_string(),
            protocol_version: welcome.version,
            container_id: None,
        };
        let mut task = TaskRecord::new(&alloc_id, ADOPTED_TASK);
        task.phase = TaskPhase::Running;
        task.run = status.run;
        task.handle = Some(handle.clone());
        task.started_at = Some(status.started_at.clone());
        task.event(
            "adopted",
            format!(
                "container {} ({}): tend-spawn pid {}, task pid {}",
                req.id,
                c.dir.display(),
                welcome.daemon_pid,
                welcome.task_pid
            ),
        );
        let stored = super::off_the_workers(|| {
            inner.store.put_token(&alloc_id, ADOPTED_TASK, &c.token)?;
            inner.store.put_alloc(&record)?;
            inner.store.put_task(&task)
        });
        if let Err(e) = stored {
            if let Err(e) = inner.remove_alloc_files(&alloc_id) {
                tracing::warn!(alloc = %alloc_id, error = %e, "removing a refused adoption's records");
            }
            return Err(e.into());
        }
        let rx = {
            let mut allocs = inner.allocs.lock().expect("allocs lock");
            // Checked again under the lock: two adoptions of one container
            // at once leave one allocation.
            if let Some(alloc) = allocs
                .values()
                .find(|a| is_live_adoption_of(a, &c.dir))
                .map(|a| a.record.alloc_id.clone())
            {
                drop(allocs);
                let _ = inner.remove_alloc_files(&alloc_id);
                return Err(AdoptError::AlreadyAdopted { id: req.id, alloc }.into());
            }
            let (slot, rx) = TaskSlot::new(task);
            let mut tasks = BTreeMap::new();
            tasks.insert(ADOPTED_TASK.to_string(), Box::new(slot));
            allocs.insert(
                alloc_id.clone(),
                AllocSlot {
                    record: Arc::new(record),
                    tasks,
                },
            );
            rx
        };
        tracing::info!(alloc = %alloc_id, container = %req.id, "adopted");
        tokio::spawn(runner::task_loop(
            inner.clone(),
            alloc_id.clone(),
            ADOPTED_TASK.to_string(),
            rx,
            Start::Reattach(Box::new(handle)),
            None,
        ));
        Ok((alloc_id, c.dir))
    }

    /// The allocation that has adopted the container of `dir` and still
    /// runs it, if one has.
    fn adopted_by(&self, dir: &Path) -> Option<String> {
        let allocs = self.inner.allocs.lock().expect("allocs lock");
        allocs
            .values()
            .find(|a| is_live_adoption_of(a, dir))
            .map(|a| a.record.alloc_id.clone())
    }
}

/// Whether `a` adopted the container of `dir` and has not ended.
fn is_live_adoption_of(a: &AllocSlot, dir: &Path) -> bool {
    a.record.adopted.as_ref().is_some_and(|ad| ad.dir == dir)
        && a.tasks.values().any(|t| t.record.phase != TaskPhase::Dead)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_adopted_job_is_one_oci_task_of_the_bundle_never_restarted() {
        let job = adopted_job("slurm-12.0", Path::new("/srv/b")).unwrap();
        assert_eq!(job.name, "slurm-12.0");
        let g = &job.groups[0];
        assert_eq!((g.name.as_str(), g.count), (ADOPTED_GROUP, 1));
        assert_eq!(g.restart.attempts, 0);
        assert_eq!(g.restart.mode, crate::jobspec::RestartMode::Fail);
        let t = &g.tasks[0];
        assert_eq!(t.name, ADOPTED_TASK);
        assert_eq!(t.driver, crate::jobspec::Driver::Oci);
        assert_eq!(t.config.bundle.as_deref(), Some("/srv/b"));
    }

    #[test]
    fn a_job_name_that_is_not_a_plain_word_is_refused_by_name() {
        for bad in ["", "a\"b", "${x}", "a b", "a/b"] {
            let e = adopted_job(bad, Path::new("/b")).unwrap_err();
            assert!(matches!(e, AdoptError::JobName(_)), "{bad:?}: {e}");
            assert_eq!(e.status(), 400);
        }
    }

    #[test]
    fn a_file_of_another_user_or_open_to_others_is_refused_by_path() {
        let d = tempfile::tempdir().unwrap();
        let me = nix::unistd::geteuid().as_raw();
        let dir = d.path().join("c");
        std::fs::create_dir(&dir).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o711)).unwrap();
        check_owned(&dir, me, Kind::Dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = check_owned(&dir, me, Kind::Dir).unwrap_err();
        assert!(
            e.to_string().contains("mode 777 lets others write it"),
            "{e}"
        );
        let e = check_owned(&dir, me, Kind::Root).unwrap_err();
        assert!(
            e.to_string().contains("mode 777 lets others write it"),
            "{e}"
        );
        // A sticky root, as Slurm's users need, keeps their entries apart.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o1777)).unwrap();
        check_owned(&dir, me, Kind::Root).unwrap();
        let e = check_owned(&dir, me, Kind::Dir).unwrap_err();
        assert!(
            e.to_string().contains("mode 1777 lets others write it"),
            "{e}"
        );
        let e = check_owned(&dir, me + 1, Kind::Dir).unwrap_err();
        assert!(matches!(e, AdoptError::NotOurs { .. }), "{e}");
        assert_eq!(e.status(), 403);
        let file = d.path().join("state.json");
        std::fs::write(&file, "{}").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = check_owned(&file, me, Kind::Secret).unwrap_err();
        assert!(e.to_string().contains("lets others read or write"), "{e}");
        let link = d.path().join("link");
        std::os::unix::fs::symlink(&dir, &link).unwrap();
        let e = check_owned(&link, me, Kind::Dir).unwrap_err();
        assert!(e.to_string().contains("a symbolic link"), "{e}");
    }
}
