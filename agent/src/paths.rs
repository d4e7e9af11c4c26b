//! Where tend keeps things: the data dir (allocs, state), the run dir (sockets),
//! and the layout of one allocation's dir.

use std::path::{Path, PathBuf};

use tend_proto::names;

/// The data dir when none is given: `/var/lib/tend` as root, else the XDG data dir.
pub fn default_data_dir() -> PathBuf {
    if nix::unistd::geteuid().is_root() {
        return PathBuf::from("/var/lib/tend");
    }
    if let Some(d) = std::env::var_os("XDG_DATA_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(d).join("tend");
    }
    match std::env::var_os("HOME").filter(|d| !d.is_empty()) {
        Some(home) => PathBuf::from(home).join(".local/share/tend"),
        None => PathBuf::from("/tmp").join(format!("tend-{}", nix::unistd::geteuid())),
    }
}

/// The run dir when none is given: `/run/tend` as root, else `$XDG_RUNTIME_DIR/tend`.
pub fn default_run_dir() -> PathBuf {
    if nix::unistd::geteuid().is_root() {
        return PathBuf::from("/run/tend");
    }
    match std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        Some(d) => PathBuf::from(d).join("tend"),
        None => PathBuf::from("/tmp").join(format!("tend-run-{}", nix::unistd::geteuid())),
    }
}

/// The data and run dirs of one agent (or one foreground run).
#[derive(Debug, Clone)]
pub struct Dirs {
    /// `<data_dir>`.
    pub data_dir: PathBuf,
    /// `<run_dir>`.
    pub run_dir: PathBuf,
}

impl Dirs {
    /// Dirs from the options given, defaults filled in. Relative paths are made
    /// absolute against the current dir, since tend-spawn needs absolute ones.
    pub fn new(data_dir: Option<PathBuf>, run_dir: Option<PathBuf>) -> std::io::Result<Dirs> {
        let abs = |p: PathBuf| -> std::io::Result<PathBuf> {
            if p.is_absolute() {
                Ok(p)
            } else {
                Ok(std::env::current_dir()?.join(p))
            }
        };
        Ok(Dirs {
            data_dir: abs(data_dir.unwrap_or_else(default_data_dir))?,
            run_dir: abs(run_dir.unwrap_or_else(default_run_dir))?,
        })
    }

    /// `<data_dir>/allocs/<alloc_id>`.
    pub fn alloc(&self, alloc_id: &str) -> AllocDir {
        AllocDir {
            root: self.allocs_dir().join(alloc_id),
        }
    }

    /// `<data_dir>/allocs`: 0700, the agent's (see [`AllocDir::create`]).
    pub fn allocs_dir(&self) -> PathBuf {
        self.data_dir.join("allocs")
    }

    /// `<run_dir>/binds`: 0700, where the docker driver mounts the sources of a
    /// container's binds of the alloc dir for the engine, while it starts.
    pub fn binds_dir(&self) -> PathBuf {
        self.run_dir.join("binds")
    }

    /// `<data_dir>/state`.
    pub fn state_dir(&self) -> PathBuf {
        self.data_dir.join("state")
    }

    /// `<run_dir>/s`: the 0700 dir holding the daemons' sockets.
    pub fn socket_dir(&self) -> PathBuf {
        self.run_dir.join("s")
    }

    /// The socket of one run of one task: short, so that sun_path holds it
    /// whatever the length of the data dir.
    pub fn task_socket(&self, alloc_id: &str, task: &str, run: u32) -> PathBuf {
        let short: String = alloc_id.chars().filter(|c| *c != '-').take(8).collect();
        self.socket_dir().join(format!(
            "{short}-{:08x}-{run}.sock",
            fnv1a32(task.as_bytes())
        ))
    }
}

/// The layout of one allocation's dir.
#[derive(Debug, Clone)]
pub struct AllocDir {
    /// `<data_dir>/allocs/<alloc_id>`.
    pub root: PathBuf,
}

impl AllocDir {
    /// `alloc/`: shared by the tasks of the allocation.
    pub fn shared(&self) -> PathBuf {
        self.root.join(names::SHARED_DIR)
    }
    /// `<task>/`: the task's root (its chroot under exec).
    pub fn task_root(&self, task: &str) -> PathBuf {
        self.root.join(task)
    }
    /// `<task>/local/`: the task's own dir.
    pub fn task_local(&self, task: &str) -> PathBuf {
        self.root.join(task).join("local")
    }
    /// `logs/`.
    pub fn logs(&self) -> PathBuf {
        self.root.join(names::LOG_DIR)
    }
    /// `logs/<task>.<stream>`: the current log file of a stream.
    pub fn log_file(&self, task: &str, stream: &str) -> PathBuf {
        self.logs().join(names::log_file(task, stream))
    }
    /// `<task>_exit_status`.
    pub fn exit_status(&self, task: &str) -> PathBuf {
        self.root.join(names::exit_status_file(task))
    }
    /// Where the exit status file of run `run` is moved before the next run.
    pub fn exit_status_of_run(&self, task: &str, run: u32) -> PathBuf {
        self.root.join(names::exit_status_file_of_run(task, run))
    }

    /// Create the allocation's dirs for `tasks`. `<data_dir>/allocs/` and the
    /// alloc root are 0700 and the agent's own (made so, also when they exist):
    /// no other host user reaches anything below, whatever a task or a
    /// container leaves there (setuid files, device nodes, world-writable
    /// dirs). Below them, `logs/` and `alloc/` 0755, each `<task>/` and
    /// `<task>/local/` 0755: tasks reach theirs through binds made by root,
    /// never through this chain.
    pub fn create(&self, tasks: &[&str]) -> std::io::Result<()> {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        if let Some(allocs) = self.root.parent() {
            ensure_private_dir(allocs)?;
        }
        let mut b = std::fs::DirBuilder::new();
        b.recursive(true).mode(0o755);
        b.create(&self.root)?;
        std::fs::set_permissions(&self.root, std::fs::Permissions::from_mode(0o700))?;
        b.create(self.logs())?;
        b.create(self.shared())?;
        for t in tasks {
            b.create(self.task_local(t))?;
        }
        Ok(())
    }
}

impl AllocDir {
    /// Make a task's dirs usable by the unprivileged user it runs as: `local/`
    /// becomes its own, and `alloc/` is shared like /tmp (1777), since the tasks of
    /// one allocation may run as different users. The alloc root, the task root
    /// and `logs/` stay the agent's: the task cannot write its logs or exit file.
    ///
    /// An agent that is not root (setuid mode) cannot chown: it leaves `local/`
    /// its own, and the setuid tend-spawn gives it to the task's user, after
    /// checking it is the caller's (docs/setuid.md).
    pub fn prepare_for_user(&self, task: &str, uid: u32, gid: u32) -> std::io::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        let local = self.task_local(task);
        let me = nix::unistd::geteuid().as_raw();
        if me == 0 || me == uid {
            std::os::unix::fs::chown(&local, Some(uid), Some(gid))?;
            std::fs::set_permissions(&local, std::fs::Permissions::from_mode(0o750))?;
        }
        std::fs::set_permissions(self.shared(), std::fs::Permissions::from_mode(0o1777))
    }
}

/// Create `dir` (and parents) if missing and make it mode 0700, owned by us.
pub fn ensure_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let meta = std::fs::symlink_metadata(dir)?;
    if !meta.is_dir() {
        return Err(std::io::Error::other(format!(
            "{} is not a directory",
            dir.display()
        )));
    }
    if meta.uid() != nix::unistd::geteuid().as_raw() {
        return Err(std::io::Error::other(format!(
            "{} is owned by uid {}, not by us",
            dir.display(),
            meta.uid()
        )));
    }
    if meta.mode() & 0o777 != 0o700 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

fn fnv1a32(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5u32, |h, b| {
        (h ^ u32::from(*b)).wrapping_mul(0x0100_0193)
    })
}

/// A fresh allocation id: a random UUID (version 4) in its usual text form.
pub fn new_alloc_id() -> String {
    let mut b = random_bytes::<16>();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = names::to_hex(&b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// `N` bytes from the kernel's random source.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    use std::io::Read;
    let mut b = [0u8; N];
    // /dev/urandom never blocks once the pool is initialised, which it is long
    // before an agent starts; a failure here means a broken host.
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .expect("read /dev/urandom");
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_paths_stay_short_whatever_the_data_dir() {
        let dirs = Dirs {
            data_dir: PathBuf::from(format!("/{}", "d".repeat(200))),
            run_dir: PathBuf::from("/run/tend"),
        };
        let id = new_alloc_id();
        let p = dirs.task_socket(&id, &"t".repeat(200), 12);
        assert!(p.as_os_str().len() < 60, "{}", p.display());
        assert_ne!(p, dirs.task_socket(&id, "other", 12));
        assert_ne!(p, dirs.task_socket(&id, &"t".repeat(200), 13));
    }

    #[test]
    fn alloc_ids_are_uuids() {
        let id = new_alloc_id();
        assert_eq!(id.len(), 36);
        assert_eq!(&id[14..15], "4");
        tend_proto::names::check_id(&id).unwrap();
        assert_ne!(id, new_alloc_id());
    }
}
