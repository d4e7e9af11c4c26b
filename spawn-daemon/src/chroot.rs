//! The task's own root: what is mounted where inside its private mount namespace
//! before it chroots into `<alloc_dir>/<task>`.
//!
//! The plan is built in the daemon before the fork; the child only walks the
//! prepared lists (see [`crate::child`]). In its new mount namespace the child
//! mounts a small tmpfs over `<alloc_dir>/<task>`, makes the mount points in it
//! (dirs, and empty files for bound files), mounts in order (every
//! `chroot.binds` entry read-only, nosuid, nodev, submounts included; the
//! minimal /dev nodes; a /proc of the task's pid namespace with runc's kernel
//! knobs read-only or masked; a private /tmp; /alloc and /local read-write,
//! nosuid, nodev; then the config's own mounts, read-only and masked paths,
//! its [`ConfigExtra`]s), turns the tmpfs read-only and chroots into it.
//! See `docs/exec.md`.
//!
//! Why a tmpfs: the mount points then cost no disk metadata writes (each mkdir
//! on the host's disk was a journal commit, a third of a millisecond here, and
//! a root has about twenty of them), nothing but `local/` is left in the task
//! dir on the host, and no mount point is ever made in a dir a task could have
//! touched. The task root is partly the task's: a task may leave symlinks in
//! `/local` and `/alloc`. So the only paths resolved in the alloc dir (the
//! `alloc` and `<task>/local` sources, and the task root the tmpfs covers) are
//! opened with openat2 `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`, one component
//! at a time when they are made; the child opens them again the same way after
//! `unshare` and mounts onto `/proc/self/fd/N`. A planted symlink there makes
//! the start fail; it never makes root create or mount anything on the host.
//!
//! A writable root (a first bind onto `/`, [`ChrootSpec::writable_root`]) is
//! an overlay instead of the tmpfs: the image as its lower dir, never
//! written, and the upper and work dirs in `<task>/.tend-root/` on the
//! host, made here beneath the alloc dir without following symlinks; it is
//! nosuid, nodev and stays writable. Its mount points may already be in the
//! image, so the child makes each one from its parent opened beneath the
//! root without following symlinks (an image's symlink fails the start).
//! So is each mount point of a config's own mounts, in either root, right
//! before its mount: its target may lie in an earlier mount the task
//! writes (/local, /alloc, /tmp).

use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;

use nix::errno::Errno;
use nix::sys::stat::{fchmod, mkdirat, Mode};
use tend_proto::config::{ChrootSpec, ConfigExtra, MountKind};
use tend_proto::SpawnConfig;

use crate::sys;

/// The device nodes bound into every task root.
pub const DEV_NODES: [&str; 6] = ["null", "zero", "full", "random", "urandom", "tty"];

/// The dir of a writable root's upper and work dirs, in the task dir.
pub const OVERLAY_DIR: &str = ".tend-root";

/// Options of the tmpfs that becomes the task root: it only ever holds empty
/// mount points, and it is read-only once they are mounted on.
pub const ROOT_TMPFS_OPTIONS: &str = "mode=0755,size=64k,nr_inodes=4096";

/// At most this many mounts have their source in the alloc dir (`alloc` and
/// `<task>/local`); the child opens them before the tmpfs covers the task dir.
pub const MAX_ALLOC_SOURCES: usize = 4;

/// Why the chroot could not be prepared; names the path.
#[derive(Debug, thiserror::Error)]
#[error("chroot: prepare {path}: {}", errno_text(.source))]
pub struct ChrootError {
    /// The path (on the host).
    pub path: PathBuf,
    /// The error.
    pub source: io::Error,
}

fn errno_text(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(n) => Errno::from_raw(n).desc().to_string(),
        None => e.to_string(),
    }
}

/// Where a mount's source is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A host path from the agent's chroot_env (trusted: it may be a symlink,
    /// as `/lib` is on merged-usr hosts).
    Host(String),
    /// A path relative to the alloc dir (`alloc`, `<task>/local`): opened
    /// beneath it without following symlinks.
    InAlloc(String),
    /// A filesystem type with no source ("proc", "tmpfs").
    Fs(&'static str),
    /// The target itself, bound onto itself (a kernel knob made read-only).
    Itself,
    /// The mount already at the target (a submount of a bind): only remounted.
    Existing,
    /// A mask over the target: `/dev/null` bound over a file, an empty
    /// read-only tmpfs over a dir (which one is seen in the root).
    Mask,
}

/// One mount of the plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedMount {
    /// What is mounted.
    pub source: Source,
    /// Where, relative to the task root ("usr/lib"), without `.` components.
    pub target: String,
    /// mount(2) flags of the first call.
    pub flags: libc::c_ulong,
    /// Options of the filesystem ("mode=1777,size=..."), if any.
    pub data: Option<String>,
    /// Whether a mount refused for its options (EINVAL) is made again without
    /// them: `hidepid` on kernels that lack it.
    pub data_optional: bool,
    /// Attributes set with mount_setattr(2) `AT_RECURSIVE` right after the
    /// mount, on it and every mount beneath it (`MOUNT_ATTR_*`), 0 for none.
    pub attrs: u64,
    /// Flags of a remount right after it, where the kernel has no
    /// mount_setattr (the flags the mount has are kept on top), if any.
    pub remount: Option<libc::c_ulong>,
    /// Whether the mount point is a file (a bound file), not a dir.
    pub file: bool,
    /// Whether the target lies in a mount made before (a file of /proc, a
    /// submount): no mount point is made, and a missing target is skipped.
    pub existing: bool,
    /// Whether the mount point is made right before the mount, from its
    /// parent opened beneath the root without following a symlink, rather
    /// than with the others before any mount: a mount of
    /// [`ConfigExtra::Mounts`], whose target may lie in an earlier mount
    /// (/tmp, /local) the task could have written.
    pub late: bool,
}

impl PlannedMount {
    /// "/usr on /usr", "proc on /proc": the mount as a person reads it.
    pub fn describe(&self) -> String {
        let src = match &self.source {
            Source::Host(p) => p.clone(),
            Source::InAlloc(p) => format!("<alloc_dir>/{p}"),
            Source::Fs(f) => (*f).to_string(),
            Source::Itself => format!("/{} read-only", self.target),
            Source::Existing => return format!("remount /{}", self.target),
            Source::Mask => return format!("mask over /{}", self.target),
        };
        format!("{src} on /{}", self.target)
    }

    /// A mount made with `flags`, no options, no attributes, a new mount point.
    fn simple(source: Source, target: String, flags: libc::c_ulong, file: bool) -> PlannedMount {
        PlannedMount {
            source,
            target,
            flags,
            data: None,
            data_optional: false,
            attrs: 0,
            remount: None,
            file,
            existing: false,
            late: false,
        }
    }

    /// A recursive bind that then gets `attrs` on every mount of it: through
    /// mount_setattr where the kernel has it, else by a remount of the bind
    /// (and, by the planner, of each submount).
    fn bind(source: Source, target: String, attrs: u64, file: bool, host: &dyn Host) -> Self {
        let mut m = PlannedMount::simple(source, target, libc::MS_BIND | libc::MS_REC, file);
        m.set_attrs(attrs, host);
        m
    }

    fn set_attrs(&mut self, attrs: u64, host: &dyn Host) {
        if attrs == 0 {
            return;
        }
        if host.has_mount_setattr() {
            self.attrs = attrs;
        } else {
            self.remount = Some(libc::MS_BIND | libc::MS_REMOUNT | ms_flags(attrs));
        }
    }
}

/// A bind of the host's `source` on `target` with `attrs` on it, and, where
/// the kernel has no mount_setattr and the bind is `recursive`, a remount of
/// each submount found beneath the source (a remount reaches one mount).
fn push_bind(
    out: &mut Vec<PlannedMount>,
    source: &str,
    target: String,
    attrs: u64,
    recursive: bool,
    host: &dyn Host,
) -> usize {
    let file = host.is_file(source);
    let mut m = PlannedMount::bind(
        Source::Host(source.into()),
        target.clone(),
        attrs,
        file,
        host,
    );
    if !recursive {
        m.flags = libc::MS_BIND;
    }
    out.push(m);
    let at = out.len() - 1;
    if recursive && attrs != 0 && !host.has_mount_setattr() && !file {
        for sub in host.submounts(source) {
            let mut m = PlannedMount::simple(Source::Existing, format!("{target}/{sub}"), 0, false);
            m.existing = true;
            m.remount = Some(libc::MS_BIND | libc::MS_REMOUNT | ms_flags(attrs));
            out.push(m);
        }
    }
    at
}

/// The `MS_*` flags of `MOUNT_ATTR_*` attributes.
fn ms_flags(attrs: u64) -> libc::c_ulong {
    [
        (libc::MOUNT_ATTR_RDONLY, libc::MS_RDONLY),
        (libc::MOUNT_ATTR_NOSUID, libc::MS_NOSUID),
        (libc::MOUNT_ATTR_NODEV, libc::MS_NODEV),
        (libc::MOUNT_ATTR_NOEXEC, libc::MS_NOEXEC),
    ]
    .into_iter()
    .filter(|(a, _)| attrs & a != 0)
    .fold(0, |acc, (_, f)| acc | f)
}

/// What the plan needs to know of the host.
pub trait Host {
    /// Whether the chroot_env source `path` is a file (bound onto a file).
    fn is_file(&self, path: &str) -> bool;
    /// Whether the kernel has mount_setattr(2) (5.12).
    fn has_mount_setattr(&self) -> bool;
    /// The mount points strictly beneath `path`, relative to it, parents
    /// first (read only where the kernel lacks mount_setattr).
    fn submounts(&self, path: &str) -> Vec<String>;
}

/// This host: the files, the kernel and `/proc/self/mountinfo` as they are.
#[derive(Debug, Clone, Copy, Default)]
pub struct ThisHost;

impl Host for ThisHost {
    fn is_file(&self, path: &str) -> bool {
        std::fs::metadata(path).is_ok_and(|m| !m.is_dir())
    }

    fn has_mount_setattr(&self) -> bool {
        sys::has_mount_setattr()
    }

    fn submounts(&self, path: &str) -> Vec<String> {
        let Ok(real) = std::fs::canonicalize(path) else {
            return Vec::new();
        };
        let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        submounts_in(&text, real.to_str().unwrap_or(path))
    }
}

/// The mount points strictly beneath `dir` in a mountinfo text, relative to
/// it, in mount order (a parent is mounted before its children).
pub fn submounts_in(mountinfo: &str, dir: &str) -> Vec<String> {
    let prefix = format!("{}/", dir.trim_end_matches('/'));
    let mut out: Vec<String> = Vec::new();
    for line in mountinfo.lines() {
        let Some(point) = line.split(' ').nth(4).map(unescape_mountinfo) else {
            continue;
        };
        if let Some(rel) = point.strip_prefix(&prefix) {
            if !rel.is_empty() && !out.iter().any(|o| o == rel) {
                out.push(rel.to_string());
            }
        }
    }
    out
}

/// A mountinfo field with its octal escapes (`\040` for a space) undone.
fn unescape_mountinfo(field: &str) -> String {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b.get(i + 1..i + 4).and_then(|d| {
            let s = std::str::from_utf8(d).ok()?;
            u8::from_str_radix(s, 8).ok()
        });
        match (b[i], octal) {
            (b'\\', Some(c)) => {
                out.push(c);
                i += 4;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

// What every task root masks and write-protects; in tend-proto, where
// tend-oci reads them to accept a bundle's maskedPaths and readonlyPaths.
pub use tend_proto::config::{
    PROC_MASKED_DIRS, PROC_MASKED_FILES, PROC_READ_ONLY, SYS_MASKED_DIRS,
};

/// The task's /tmp: 64 MiB, or a quarter of the memory limit when that is
/// smaller (tmpfs pages count against the task's memory cgroup, so a full
/// /tmp leaves it three quarters), in whole pages, at least one.
pub fn tmp_size(memory_bytes: Option<u64>) -> u64 {
    const PAGE: u64 = 4096;
    let quarter = memory_bytes.map_or(u64::MAX, |m| m / 4);
    (quarter.min(64 * 1024 * 1024) / PAGE).max(1) * PAGE
}

/// `target` as a path relative to the root: no leading slash, no empty or `.`
/// components (`..` is kept: openat2 refuses it beneath the root).
fn relative(target: &str) -> String {
    target
        .split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect::<Vec<_>>()
        .join("/")
}

/// The mounts of a task root, in order, for `config` with `spec`: the
/// chroot_env read-only (recursively), the device nodes, a /proc of the
/// task's pid namespace with its kernel knobs read-only or masked, a private
/// /tmp, and /alloc and /local read-write; nothing writable is suid or dev.
///
/// The knobs ([`PROC_READ_ONLY`]) are made read-only for a `root_user` task
/// only: every file under them is writable by uid 0 alone (or by a
/// capability, and tasks keep none), so for any other user the kernel's own
/// permission check already refuses the write, and four binds and their
/// attributes would be paid for nothing at every start. The masks, which
/// hide what the files show, apply to every task.
pub fn plan(
    config: &SpawnConfig,
    spec: &ChrootSpec,
    root_user: bool,
    host: &dyn Host,
) -> Vec<PlannedMount> {
    use libc::{MOUNT_ATTR_NODEV, MOUNT_ATTR_NOEXEC, MOUNT_ATTR_NOSUID, MOUNT_ATTR_RDONLY};
    let ro = MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV;
    let rw = MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV;
    let fs_flags = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
    let masked_dir = |target: String| {
        let mut m = PlannedMount::simple(
            Source::Fs("tmpfs"),
            target,
            fs_flags | libc::MS_RDONLY,
            false,
        );
        m.existing = true;
        m
    };
    let mut out = Vec::new();
    let mut sys_targets = Vec::new();
    // The image of a writable root is the root itself, not a mount in it.
    for b in spec
        .binds
        .iter()
        .skip(usize::from(spec.writable_root().is_some()))
    {
        let target = relative(&b.target);
        push_bind(&mut out, &b.source, target.clone(), ro, true, host);
        if target == "sys" {
            sys_targets.push(target);
        }
    }
    // Read-only binds: the nodes work as ever (a device's I/O is no write to
    // the mount), but a root task cannot chmod or chown the host's nodes.
    for node in DEV_NODES {
        out.push(PlannedMount::bind(
            Source::Host(format!("/dev/{node}")),
            format!("dev/{node}"),
            MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NOEXEC,
            true,
            host,
        ));
    }
    // Mounted by the task's first process, in its own pid namespace: it
    // shows the task's processes only, and with hidepid=2 only its user's.
    // (Not in figure 1e's baseline build: see Cargo.toml.)
    let own_proc = !cfg!(feature = "bench-no-pid-namespace");
    let mut proc_ = PlannedMount::simple(Source::Fs("proc"), "proc".into(), fs_flags, false);
    proc_.data = Some("hidepid=2".into());
    proc_.data_optional = true;
    out.extend(own_proc.then_some(proc_));
    for knob in PROC_READ_ONLY.iter().filter(|_| root_user && own_proc) {
        let mut m = PlannedMount::bind(
            Source::Itself,
            format!("proc/{knob}"),
            ro | MOUNT_ATTR_NOEXEC,
            false,
            host,
        );
        m.existing = true;
        out.push(m);
    }
    for file in PROC_MASKED_FILES.iter().filter(|_| own_proc) {
        let mut m = PlannedMount::simple(
            Source::Host("/dev/null".into()),
            format!("proc/{file}"),
            libc::MS_BIND,
            true,
        );
        m.existing = true;
        out.push(m);
    }
    for dir in PROC_MASKED_DIRS.iter().filter(|_| own_proc) {
        out.push(masked_dir(format!("proc/{dir}")));
    }
    for sys in sys_targets {
        for dir in SYS_MASKED_DIRS {
            out.push(masked_dir(format!("{sys}/{dir}")));
        }
    }
    let mut tmp = PlannedMount::simple(
        Source::Fs("tmpfs"),
        "tmp".into(),
        libc::MS_NOSUID | libc::MS_NODEV,
        false,
    );
    let size = tmp_size(config.cgroup.as_ref().and_then(|c| c.memory_bytes));
    tmp.data = Some(format!("mode=1777,size={size}"));
    out.push(tmp);
    out.push(PlannedMount::bind(
        Source::InAlloc("alloc".into()),
        "alloc".into(),
        rw,
        false,
        host,
    ));
    out.push(PlannedMount::bind(
        Source::InAlloc(format!("{}/local", config.task)),
        "local".into(),
        rw,
        false,
        host,
    ));
    extras(&mut out, config, host);
    out
}

/// The mounts of a config's extras, after every standard one, so that a
/// mount over /tmp or /dev/shm is the one the task sees: its
/// [`ConfigExtra::Mounts`] in order, then its read-only paths, then its
/// masked paths (runc's order), which cover what the mounts brought too.
fn extras(out: &mut Vec<PlannedMount>, config: &SpawnConfig, host: &dyn Host) {
    use libc::{MOUNT_ATTR_NODEV, MOUNT_ATTR_NOEXEC, MOUNT_ATTR_NOSUID, MOUNT_ATTR_RDONLY};
    let mounts = config.extras.iter().filter_map(|e| match e {
        ConfigExtra::Mounts(m) => Some(m),
        _ => None,
    });
    for m in mounts.flatten() {
        let target = relative(&m.target);
        let flag = |on: bool, attr: u64| if on { attr } else { 0 };
        // Nothing writable is suid or dev, whatever the config says.
        let attrs = flag(m.read_only, MOUNT_ATTR_RDONLY)
            | flag(m.nosuid || !m.read_only, MOUNT_ATTR_NOSUID)
            | flag(m.nodev || !m.read_only, MOUNT_ATTR_NODEV)
            | flag(m.noexec, MOUNT_ATTR_NOEXEC);
        let at = match &m.kind {
            MountKind::Bind { source, recursive } => {
                push_bind(out, source, target, attrs, *recursive, host)
            }
            MountKind::Tmpfs { size_bytes, mode } => {
                let mut t =
                    PlannedMount::simple(Source::Fs("tmpfs"), target, ms_flags(attrs), false);
                let options: Vec<String> = mode
                    .map(|m| format!("mode={m:04o}"))
                    .into_iter()
                    .chain(size_bytes.map(|s| format!("size={s}")))
                    .collect();
                t.data = (!options.is_empty()).then(|| options.join(","));
                out.push(t);
                out.len() - 1
            }
        };
        out[at].late = true;
    }
    for e in &config.extras {
        if let ConfigExtra::ReadonlyPaths(paths) = e {
            for p in paths {
                let ro = MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV;
                let mut m = PlannedMount::bind(Source::Itself, relative(p), ro, false, host);
                m.existing = true;
                out.push(m);
            }
        }
    }
    for e in &config.extras {
        if let ConfigExtra::MaskedPaths(paths) = e {
            for p in paths {
                let mut m = PlannedMount::simple(Source::Mask, relative(p), 0, false);
                m.existing = true;
                out.push(m);
            }
        }
    }
}

/// Where a prepared mount's source is, for the child.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceKind {
    /// `source` is a host path or a filesystem name.
    Path,
    /// `source` is relative to the alloc dir (opened beneath it).
    InAlloc,
    /// The target, bound onto itself.
    Itself,
    /// No mount: the mount at the target is only remounted.
    Existing,
    /// `/dev/null` (`source`) bound over a file, an empty read-only tmpfs
    /// over a dir.
    Mask,
}

/// A planned mount in C strings, ready for the child.
#[derive(Debug)]
pub struct MountOp {
    /// Source: a host path, a path relative to the alloc dir, or a fs name.
    pub source: CString,
    /// What `source` is.
    pub kind: SourceKind,
    /// Target, relative to the task root.
    pub target: CString,
    /// Filesystem type, if any.
    pub fstype: Option<CString>,
    /// Flags of the first call.
    pub flags: libc::c_ulong,
    /// Filesystem options, if any.
    pub data: Option<CString>,
    /// Mount again without `data` if the kernel refuses it (EINVAL).
    pub data_optional: bool,
    /// mount_setattr attributes set recursively after the mount, 0 for none.
    pub attrs: u64,
    /// Flags of the remount, if any (the mount's own flags are kept on top).
    pub remount: Option<libc::c_ulong>,
    /// The target is in an earlier mount: no mount point, skipped if missing.
    pub existing: bool,
    /// Mount points made right before this mount, parents first, each from
    /// its parent opened beneath the root without following a symlink (one
    /// that exists is taken as it is).
    pub points: Vec<MountPoint>,
    /// "/usr on /usr", for the message of a failed mount.
    pub shown: String,
}

/// A mount point to make in the root's tmpfs before any mount.
#[derive(Debug)]
pub struct MountPoint {
    /// Relative to the task root, no `.` or `..` components ("usr/lib").
    pub path: CString,
    /// Its parent, the same way ("usr"; "." for the root).
    pub parent: CString,
    /// Its last component ("lib").
    pub name: CString,
    /// An empty file (the mount point of a bound file), not a dir.
    pub file: bool,
}

/// The prepared root: where it is and the mounts to make before the chroot.
#[derive(Debug)]
pub struct PreparedRoot {
    /// The alloc dir, absolute (the agent's, trusted).
    pub alloc_dir: CString,
    /// Device and inode of the alloc dir the daemon opened: the child, which
    /// opens it again by path in its new mount namespace, refuses any other
    /// (a path swapped meanwhile, e.g. by a setuid-mode caller).
    pub alloc_id: (u64, u64),
    /// The task root relative to the alloc dir: the task's name.
    pub root: CString,
    /// The tmpfs options of the root (see [`ROOT_TMPFS_OPTIONS`]).
    pub tmpfs_options: CString,
    /// A writable root: the overlay's options (`lowerdir=IMAGE,upperdir=..,
    /// workdir=..`), mounted over the task dir in place of the tmpfs.
    pub overlay: Option<CString>,
    /// The mount points, parents first.
    pub creates: Vec<MountPoint>,
    /// The mounts, in order.
    pub ops: Vec<MountOp>,
}

fn cstr(p: &str) -> Result<CString, ChrootError> {
    CString::new(p).map_err(|_| ChrootError {
        path: PathBuf::from(p),
        source: io::Error::from_raw_os_error(libc::EINVAL),
    })
}

/// `mkdir -p rel` beneath `dir` without following a symlink anywhere: each
/// component is made with `mkdirat` (mode 0755, set again where the daemon's
/// umask cut it: the task's user must walk its root) and opened with openat2 RESOLVE_BENEATH |
/// RESOLVE_NO_SYMLINKS. Returns the fd of the last dir.
pub fn mkdir_beneath(dir: BorrowedFd<'_>, rel: &str) -> io::Result<OwnedFd> {
    let mut cur: Option<OwnedFd> = None;
    for comp in rel.split('/').filter(|c| !c.is_empty() && *c != ".") {
        let at = cur.as_ref().map_or(dir, |f| f.as_fd());
        let created = match mkdirat(at, comp, Mode::from_bits_truncate(0o755)) {
            Ok(()) => true,
            Err(Errno::EEXIST) => false,
            Err(e) => return Err(io::Error::from_raw_os_error(e as i32)),
        };
        // A symlink here (planted, or dangling) or a file fails (ENOTDIR, ELOOP).
        let next = sys::open_beneath(at, comp, libc::O_DIRECTORY | libc::O_RDONLY, 0)?;
        if created && !sys::umask_keeps(0o755) {
            fchmod(&next, Mode::from_bits_truncate(0o755))
                .map_err(|e| io::Error::from_raw_os_error(e as i32))?;
        }
        cur = Some(next);
    }
    cur.ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))
}

/// Make the dirs the root needs on disk beneath the alloc dir `alloc` (`alloc/`,
/// `<task>/`, `<task>/local/`), list the mount points to make in the root's
/// tmpfs, and turn the plan into C strings (`root_user`: see [`plan`]).
pub fn prepare(
    config: &SpawnConfig,
    spec: &ChrootSpec,
    alloc: BorrowedFd<'_>,
    root_user: bool,
    host_facts: &dyn Host,
) -> Result<PreparedRoot, ChrootError> {
    let host = config.alloc_dir();
    let err = |rel: &str| {
        let path = host.join(rel);
        move |source: io::Error| ChrootError { path, source }
    };
    mkdir_beneath(alloc, "alloc").map_err(err("alloc"))?;
    let root = mkdir_beneath(alloc, &config.task).map_err(err(&config.task))?;
    let in_root = |rel: &str| format!("{}/{rel}", config.task);
    mkdir_beneath(root.as_fd(), "local").map_err(err(&in_root("local")))?;
    let overlay = match spec.writable_root() {
        Some(image) => {
            let rel = format!("{OVERLAY_DIR}/upper");
            mkdir_beneath(root.as_fd(), &rel).map_err(err(&in_root(&rel)))?;
            let rel = format!("{OVERLAY_DIR}/work");
            mkdir_beneath(root.as_fd(), &rel).map_err(err(&in_root(&rel)))?;
            // The option string is parsed by the kernel: the alloc dir's
            // path (the image's is checked by validate) holds no separator.
            if config
                .alloc_dir
                .contains(tend_proto::config::OVERLAY_SPECIAL)
            {
                return Err(ChrootError {
                    path: host.clone(),
                    source: io::Error::from_raw_os_error(libc::EINVAL),
                });
            }
            let dir = host.join(&config.task).join(OVERLAY_DIR);
            let dir = dir.display();
            Some(cstr(&format!(
                "lowerdir={image},upperdir={dir}/upper,workdir={dir}/work"
            ))?)
        }
        None => None,
    };
    let planned = plan(config, spec, root_user, host_facts);
    let mut creates: Vec<MountPoint> = Vec::new();
    let mut made = std::collections::HashSet::new();
    let mut ops = Vec::with_capacity(planned.len());
    for m in planned {
        // The mount points are made in the tmpfs with plain mkdirat from its
        // root, before the chroot: a `..` would climb out of it.
        if m.target.is_empty() || m.target.split('/').any(|c| c == "..") {
            return Err(ChrootError {
                path: host.join(in_root(&m.target)),
                source: io::Error::from_raw_os_error(libc::EINVAL),
            });
        }
        let mut points = Vec::new();
        if !m.existing {
            let comps: Vec<&str> = m.target.split('/').collect();
            for i in 1..=comps.len() {
                let path = comps[..i].join("/");
                let file = i == comps.len() && m.file;
                if m.late || made.insert(path.clone()) {
                    let parent = if i == 1 {
                        ".".to_string()
                    } else {
                        comps[..i - 1].join("/")
                    };
                    let point = MountPoint {
                        path: cstr(&path)?,
                        parent: cstr(&parent)?,
                        name: cstr(comps[i - 1])?,
                        file,
                    };
                    if m.late { &mut points } else { &mut creates }.push(point);
                }
            }
        }
        let (source, kind, fstype) = match &m.source {
            Source::Host(p) => (cstr(p)?, SourceKind::Path, None),
            Source::InAlloc(p) => (cstr(p)?, SourceKind::InAlloc, None),
            Source::Fs(f) => (cstr(f)?, SourceKind::Path, Some(cstr(f)?)),
            Source::Itself => (CString::default(), SourceKind::Itself, None),
            Source::Existing => (CString::default(), SourceKind::Existing, None),
            Source::Mask => (cstr("/dev/null")?, SourceKind::Mask, None),
        };
        ops.push(MountOp {
            source,
            kind,
            target: cstr(&m.target)?,
            fstype,
            flags: m.flags,
            data: m.data.as_deref().map(cstr).transpose()?,
            data_optional: m.data_optional,
            attrs: m.attrs,
            remount: m.remount,
            existing: m.existing,
            points,
            shown: m.describe(),
        });
    }
    if ops.iter().filter(|o| o.kind == SourceKind::InAlloc).count() > MAX_ALLOC_SOURCES {
        return Err(ChrootError {
            path: host.clone(),
            source: io::Error::from_raw_os_error(libc::E2BIG),
        });
    }
    let st = nix::sys::stat::fstat(alloc).map_err(|e| ChrootError {
        path: host.clone(),
        source: io::Error::from_raw_os_error(e as i32),
    })?;
    Ok(PreparedRoot {
        alloc_id: (st.st_dev, st.st_ino),
        alloc_dir: cstr(&config.alloc_dir)?,
        root: cstr(&config.task)?,
        tmpfs_options: cstr(ROOT_TMPFS_OPTIONS)?,
        overlay,
        creates,
        ops,
    })
}

#[cfg(test)]
mod tests;
