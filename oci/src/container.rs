//! One container's dir under the state root, and the spawn config of its task.
//!
//! `ROOT/ID/` holds `state.json` (the bundle, the socket's token and the
//! task's cgroup, written atomically), `ctl/sock` (tend-spawn's control socket, in a 0700 dir),
//! `logs/task.stdout` and `logs/task.stderr`, `task_exit_status`, and the
//! task's root (`task/`) while it runs with its own.

use std::io::Read;
use std::path::{Path, PathBuf};

use tend_proto::config::{
    Bind, CgroupOptions, CgroupSpec, ChrootSpec, CpuQuota, Detach, FirstConnection, Isolation,
    LogConfig, MountKind, TaskIds, TaskStart, TaskStdin,
};
use tend_proto::{SpawnConfig, Token};

use crate::bundle::Bundle;

/// The task's name inside its tend-spawn alloc.
pub const TASK: &str = "task";

/// What went wrong with a container's dir or record.
#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    /// The id is not one a dir can be named by.
    #[error("container id {0:?}: want 1-200 of [A-Za-z0-9._-], not starting with '.'")]
    BadId(String),
    /// No container by that id.
    #[error("container {id} does not exist (no {path})")]
    Missing {
        /// The id.
        id: String,
        /// Its dir.
        path: PathBuf,
    },
    /// A container by that id already exists.
    #[error("container {0} already exists")]
    Exists(String),
    /// A file of the record.
    #[error("{path}: {reason}")]
    File {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The command cannot be found.
    #[error("config.json: process.args[0]: {0:?} not found in the root's PATH")]
    NoCommand(String),
    /// process.user.gid is not the user's primary group.
    #[error("config.json: process.user.gid: {gid} is not the primary group of uid {uid} ({primary}); only that one is supported")]
    Group {
        /// The uid.
        uid: u32,
        /// The bundle's gid.
        gid: u32,
        /// The passwd entry's.
        primary: String,
    },
    /// The socket path is too long for sun_path.
    #[error("{0}: too long for a unix socket; use a shorter --root")]
    SocketPath(PathBuf),
}

fn file_err(path: &Path, reason: impl ToString) -> ContainerError {
    ContainerError::File {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

/// Check an OCI container id: it names a dir.
pub fn check_id(id: &str) -> Result<(), ContainerError> {
    let ok = !id.is_empty()
        && id.len() <= 200
        && !id.starts_with('.')
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(ContainerError::BadId(id.to_string()))
    }
}

/// A container's dir and record.
#[derive(Debug, Clone)]
pub struct Container {
    /// Its id.
    pub id: String,
    /// `ROOT/ID`.
    pub dir: PathBuf,
    /// The bundle it was run from.
    pub bundle: PathBuf,
    /// The control socket's token.
    pub token: Token,
    /// The task's cgroup, relative to each hierarchy's root, when it has one
    /// of its own (absent from records that predate it).
    pub cgroup: Option<String>,
}

impl Container {
    /// The dir a container of `id` has under `root`.
    pub fn dir_of(root: &Path, id: &str) -> Result<PathBuf, ContainerError> {
        check_id(id)?;
        Ok(root.join(id))
    }

    /// The control socket.
    pub fn socket(&self) -> PathBuf {
        self.dir.join("ctl/sock")
    }

    /// The task's log of `stream` ("stdout", "stderr").
    pub fn log(&self, stream: &str) -> PathBuf {
        self.dir
            .join(tend_proto::names::LOG_DIR)
            .join(format!("{TASK}.{stream}"))
    }

    /// Make the dir of a new container and write its record.
    pub fn create(
        root: &Path,
        id: &str,
        bundle: &Path,
        cgroup: Option<String>,
    ) -> Result<Container, ContainerError> {
        use std::os::unix::fs::DirBuilderExt;
        let dir = Container::dir_of(root, id)?;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o711)
            .create(root)
            .map_err(|e| file_err(root, e))?;
        match std::fs::DirBuilder::new().mode(0o711).create(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(ContainerError::Exists(id.to_string()))
            }
            Err(e) => return Err(file_err(&dir, e)),
        }
        let ctl = dir.join("ctl");
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&ctl)
            .map_err(|e| file_err(&ctl, e))?;
        let c = Container {
            id: id.to_string(),
            dir,
            bundle: bundle.to_path_buf(),
            token: random_token()?,
            cgroup,
        };
        if c.socket().as_os_str().len() > tend_proto::config::MAX_SOCKET_PATH {
            return Err(ContainerError::SocketPath(c.socket()));
        }
        let record = serde_json::json!({
            "id": c.id,
            "bundle": c.bundle,
            "token": hex(&c.token.0),
            "cgroup": c.cgroup,
        });
        let path = c.dir.join("state.json");
        tend_proto::atomic::write(&path, record.to_string().as_bytes(), 0o600)
            .map_err(|e| file_err(&path, e))?;
        Ok(c)
    }

    /// Read the record of an existing container.
    pub fn open(root: &Path, id: &str) -> Result<Container, ContainerError> {
        let dir = Container::dir_of(root, id)?;
        let path = dir.join("state.json");
        let text = match std::fs::read(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(ContainerError::Missing {
                    id: id.to_string(),
                    path,
                })
            }
            Err(e) => return Err(file_err(&path, e)),
        };
        let v: serde_json::Value = serde_json::from_slice(&text).map_err(|e| file_err(&path, e))?;
        let token = v["token"]
            .as_str()
            .and_then(tend_proto::names::from_hex)
            .and_then(|b| <[u8; 32]>::try_from(b).ok())
            .ok_or_else(|| file_err(&path, "no token"))?;
        Ok(Container {
            id: id.to_string(),
            dir,
            bundle: PathBuf::from(v["bundle"].as_str().unwrap_or_default()),
            token: Token(token),
            cgroup: v["cgroup"].as_str().map(str::to_string),
        })
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn random_token() -> Result<Token, ContainerError> {
    let mut t = [0u8; 32];
    let path = Path::new("/dev/urandom");
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut t))
        .map_err(|e| file_err(path, e))?;
    Ok(Token(t))
}

/// Where a path inside the task's root is on the host: in the last mount
/// whose destination holds it (None for a tmpfs: empty at the start), else
/// in the rootfs.
fn host_path(bundle: &Bundle, inside: &str) -> Option<PathBuf> {
    for m in bundle.mounts.iter().rev() {
        let dest = m.target.trim_end_matches('/');
        if let Some(rest) = inside.strip_prefix(dest) {
            if rest.is_empty() || rest.starts_with('/') {
                return match &m.kind {
                    MountKind::Bind { source, .. } => {
                        Some(PathBuf::from(format!("{source}{rest}")))
                    }
                    MountKind::Tmpfs { .. } => None,
                };
            }
        }
    }
    Some(match &bundle.rootfs {
        Some(r) => r.join(inside.trim_start_matches('/')),
        None => PathBuf::from(inside),
    })
}

/// The absolute command for `process.args[0]`: as given when it has a '/',
/// else the first `PATH` entry (the bundle's env) that holds it, looked up in
/// the task's root.
pub fn resolve_command(bundle: &Bundle) -> Result<String, ContainerError> {
    let arg0 = &bundle.args[0];
    if arg0.contains('/') {
        return Ok(if arg0.starts_with('/') {
            arg0.clone()
        } else {
            format!("{}/{arg0}", bundle.cwd.trim_end_matches('/'))
        });
    }
    let path = bundle
        .env
        .iter()
        .find(|(k, _)| k == "PATH")
        .map_or("/usr/local/bin:/usr/bin:/bin", |(_, v)| v.as_str());
    for dir in path.split(':').filter(|d| d.starts_with('/')) {
        let inside = format!("{}/{arg0}", dir.trim_end_matches('/'));
        if host_path(bundle, &inside).is_some_and(|p| p.is_file()) {
            return Ok(inside);
        }
    }
    Err(ContainerError::NoCommand(arg0.clone()))
}

/// The task's own root for a rootfs, as tend-spawn builds it: a read-only
/// bind of each top-level entry of the rootfs (but `proc`, `dev` and `tmp`,
/// which tend-spawn makes, and `alloc` and `local`, which it binds from the
/// alloc dir); a `writable` root is the rootfs itself as the image of an
/// overlay (a first bind onto `/`). A bundle's mounts go over it as the
/// spawn config's extras ([`Bundle::extras`]). The agent's `oci` driver
/// builds its tasks' roots with this too.
pub fn task_root(rootfs: &Path, writable: bool) -> ChrootSpec {
    let mut out = Vec::new();
    if writable {
        out.push(Bind {
            source: rootfs.display().to_string(),
            target: "/".into(),
        });
    } else if let Ok(entries) = std::fs::read_dir(rootfs) {
        let mut names: Vec<String> = entries
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| !matches!(n.as_str(), "proc" | "dev" | "tmp" | "alloc" | "local"))
            .collect();
        names.sort();
        for n in names {
            out.push(Bind {
                source: rootfs.join(&n).display().to_string(),
                target: format!("/{n}"),
            });
        }
    }
    ChrootSpec { binds: out }
}

/// The spawn config that runs `bundle` as the task of `c`. `privileged`
/// (the runtime runs as root): the task runs as `process.user` and, when the
/// bundle has a rootfs, in a root of its own; else it runs as the caller in
/// the host's root.
pub fn spawn_config(
    c: &Container,
    bundle: &Bundle,
    privileged: bool,
) -> Result<SpawnConfig, ContainerError> {
    let command = resolve_command(bundle)?;
    let chroot = bundle
        .rootfs
        .as_ref()
        .map(|rootfs| task_root(rootfs, bundle.writable));
    // The ids as check_group found them (uid's primary group): they travel
    // before the parts added after them (a held start).
    let isolation = privileged.then(|| Isolation {
        ids: Some(TaskIds {
            uid: bundle.uid,
            gid: bundle.gid,
        }),
        user: bundle.uid.to_string(),
        chroot,
    });
    Ok(SpawnConfig {
        alloc_id: "oci".into(),
        task: TASK.into(),
        run: 1,
        token: c.token,
        args: bundle.args[1..].to_vec(),
        command,
        env: bundle.env.clone(),
        cwd: bundle.cwd.clone(),
        alloc_dir: c.dir.display().to_string(),
        socket_path: c.socket().display().to_string(),
        // One file per stream, never rotated: `run` copies it to its own
        // stdout and stderr as it grows.
        logs: LogConfig {
            max_files: 1,
            max_file_size: u64::MAX / 2,
        },
        kill_signal: libc_sigterm(),
        kill_timeout_ms: 10_000,
        // The record stays until `delete` releases it.
        linger_ms: 7 * 24 * 3600 * 1000,
        cgroup: bundle.cgroup.as_ref().map(|cg| cgroup_spec(c, cg)),
        isolation,
        // The runtime's stdin, relayed by `run` after the config.
        stdin: TaskStdin::AfterConfig,
        start: TaskStart::Now,
        namespaces: bundle.namespaces.clone(),
        first_connection: FirstConnection::Socket,
        extras: bundle.extras(),
        // tend-oci waits for the process it exec'd: it must leave.
        detach: Detach::Fork,
    })
}

/// Check that `process.user.gid` is uid's primary group: tend-spawn takes
/// the group from the passwd entry.
pub fn check_group(bundle: &Bundle) -> Result<(), ContainerError> {
    let found = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(bundle.uid));
    let primary = match found {
        Ok(Some(u)) if u.gid.as_raw() == bundle.gid => return Ok(()),
        Ok(Some(u)) => u.gid.as_raw().to_string(),
        Ok(None) => "no passwd entry".to_string(),
        Err(e) => e.to_string(),
    };
    Err(ContainerError::Group {
        uid: bundle.uid,
        gid: bundle.gid,
        primary,
    })
}

/// The task's cgroup: the bundle's `linux.cgroupsPath`, else
/// `tend-oci/ID` (dots, which the id may hold, kept).
/// The cgroup of container `id`'s task: the bundle's `cgroupsPath`, else
/// `tend-oci/ID`.
pub fn cgroup_path(id: &str, cg: &crate::bundle::Cgroup) -> String {
    cg.path.clone().unwrap_or_else(|| format!("tend-oci/{id}"))
}

fn cgroup_spec(c: &Container, cg: &crate::bundle::Cgroup) -> CgroupSpec {
    CgroupSpec {
        path: cgroup_path(&c.id, cg),
        daemon_path: None,
        memory_bytes: cg.memory_bytes,
        // cpu.shares on v1 is tend's MHz figure one to one.
        cpu_mhz: cg.cpu_shares,
        pids_max: cg.pids_max,
        options: CgroupOptions {
            memory_soft_bytes: cg.memory_soft_bytes,
            cpu_quota: cg.cpu_quota.map(|(quota_us, period_us)| CpuQuota {
                quota_us,
                period_us,
            }),
            ..CgroupOptions::default()
        },
    }
}

fn libc_sigterm() -> i32 {
    nix::sys::signal::Signal::SIGTERM as i32
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bundle::Cgroup;

    fn bundle(rootfs: &Path) -> Bundle {
        Bundle {
            dir: rootfs.parent().unwrap().to_path_buf(),
            args: vec!["sh".into(), "-c".into(), "true".into()],
            env: vec![("PATH".into(), "/nope:/usr/bin".into())],
            cwd: "/".into(),
            uid: 65534,
            gid: 65534,
            rlimits: vec![],
            rootfs: Some(rootfs.to_path_buf()),
            mounts: vec![tend_proto::config::Mount {
                target: "/usr".into(),
                kind: MountKind::Bind {
                    source: "/usr".into(),
                    recursive: true,
                },
                read_only: true,
                nosuid: true,
                nodev: true,
                noexec: false,
            }],
            masked_paths: vec![],
            readonly_paths: vec!["/etc".into()],
            writable: false,
            cgroup: None,
            namespaces: tend_proto::config::Namespaces::default(),
            cgroup_namespace: false,
        }
    }

    fn container(dir: &Path) -> Container {
        Container {
            id: "job.1".into(),
            dir: dir.join("job.1"),
            bundle: dir.to_path_buf(),
            token: Token([1; 32]),
            cgroup: None,
        }
    }

    #[test]
    fn privileged_with_a_rootfs_gets_its_entries_then_the_mounts_as_extras() {
        let d = tempfile::tempdir().unwrap();
        let rootfs = d.path().join("rootfs");
        for e in ["etc", "bin", "proc", "tmp"] {
            std::fs::create_dir_all(rootfs.join(e)).unwrap();
        }
        let b = bundle(&rootfs);
        let cfg = spawn_config(&container(d.path()), &b, true).unwrap();
        cfg.validate().unwrap();
        // sh is found through the bind of /usr (the rootfs has no /nope/sh).
        assert_eq!(cfg.command, "/usr/bin/sh");
        assert_eq!(cfg.args, ["-c", "true"]);
        let iso = cfg.isolation.unwrap();
        assert_eq!(iso.user, "65534");
        let targets: Vec<&str> = iso
            .chroot
            .as_ref()
            .unwrap()
            .binds
            .iter()
            .map(|b| b.target.as_str())
            .collect();
        assert_eq!(targets, ["/bin", "/etc"]);
        assert_eq!(
            cfg.extras,
            [
                tend_proto::config::ConfigExtra::Mounts(b.mounts.clone()),
                tend_proto::config::ConfigExtra::ReadonlyPaths(vec!["/etc".into()])
            ]
        );
        assert_eq!(
            cfg.socket_path,
            d.path().join("job.1/ctl/sock").display().to_string()
        );
        assert_eq!(cfg.cgroup, None);
    }

    #[test]
    fn a_cgroup_namespace_travels_as_an_extra() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("rootfs")).unwrap();
        let mut b = bundle(&d.path().join("rootfs"));
        b.cgroup_namespace = true;
        let cfg = spawn_config(&container(d.path()), &b, true).unwrap();
        cfg.validate().unwrap();
        // After the bundle's mounts and paths, which it has too.
        assert_eq!(
            cfg.extras.last(),
            Some(&tend_proto::config::ConfigExtra::CgroupNamespace)
        );
        assert_eq!(cfg.extras, b.extras());
    }

    #[test]
    fn unprivileged_runs_as_the_caller_and_a_cgroup_defaults_to_the_id() {
        let d = tempfile::tempdir().unwrap();
        let mut b = bundle(&d.path().join("rootfs"));
        b.rootfs = None;
        b.mounts.clear();
        b.readonly_paths.clear();
        b.cgroup = Some(Cgroup {
            memory_bytes: Some(1 << 20),
            cpu_quota: Some((50_000, 100_000)),
            ..Cgroup::default()
        });
        let cfg = spawn_config(&container(d.path()), &b, false).unwrap();
        assert_eq!(cfg.isolation, None);
        let cg = cfg.cgroup.unwrap();
        assert_eq!(cg.path, "tend-oci/job.1");
        assert_eq!(cg.memory_bytes, Some(1 << 20));
        assert_eq!(cg.options.cpu_quota.unwrap().quota_us, 50_000);
        b.args[0] = "no-such-command".into();
        assert_eq!(
            spawn_config(&container(d.path()), &b, false)
                .unwrap_err()
                .to_string(),
            "config.json: process.args[0]: \"no-such-command\" not found in the root's PATH"
        );
    }

    #[test]
    fn ids_name_dirs() {
        check_id("localhost.root.7.0.0").unwrap();
        for bad in ["", ".", "..", "a/b", "a b", &"x".repeat(201)] {
            assert!(check_id(bad).is_err(), "{bad:?}");
        }
    }
}
