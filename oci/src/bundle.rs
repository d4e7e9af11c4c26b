//! A bundle's `config.json`, read into what tend-spawn can do with it.
//!
//! The file is walked as JSON values rather than decoded into typed structs:
//! a typed decode drops fields it does not know, and a runtime that ignores
//! part of a bundle runs something other than what was asked. Every key is
//! either mapped or refused with its path named
//! (`config.json: linux.namespaces[2]: type "user" is not supported`).

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};
use tend_proto::config::{ConfigExtra, Mount, MountKind, Namespaces, MAX_HOSTNAME};

/// Why a bundle cannot be run.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// config.json could not be read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// config.json is not JSON.
    #[error("{path}: not JSON: {source}")]
    Json {
        /// The file.
        path: PathBuf,
        /// Why.
        source: serde_json::Error,
    },
    /// A field is refused: unsupported, or of the wrong shape.
    #[error("config.json: {field}: {reason}")]
    Field {
        /// Its path in the document (`process.user.uid`).
        field: String,
        /// What is wrong.
        reason: String,
    },
}

fn refuse(field: &str, reason: impl Into<String>) -> BundleError {
    BundleError::Field {
        field: field.to_string(),
        reason: reason.into(),
    }
}

/// One `process.rlimits` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rlimit {
    /// `RLIMIT_NOFILE` and the like.
    pub kind: String,
    /// Soft limit.
    pub soft: u64,
    /// Hard limit.
    pub hard: u64,
}

/// `linux.resources` and `linux.cgroupsPath`: the task's cgroup.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cgroup {
    /// `linux.cgroupsPath` without its leading '/'; None picks one.
    pub path: Option<String>,
    /// `memory.limit`, bytes.
    pub memory_bytes: Option<u64>,
    /// `memory.reservation`, bytes.
    pub memory_soft_bytes: Option<u64>,
    /// `cpu.shares`.
    pub cpu_shares: Option<u64>,
    /// `cpu.quota` and `cpu.period`, microseconds.
    pub cpu_quota: Option<(u64, u64)>,
    /// `pids.limit`.
    pub pids_max: Option<u64>,
}

/// What of a bundle tend-spawn runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bundle {
    /// The bundle dir (absolute).
    pub dir: PathBuf,
    /// `process.args`; the first is resolved against `PATH` when it has no `/`.
    pub args: Vec<String>,
    /// `process.env`, the first of each name kept (as glibc's getenv reads it).
    pub env: Vec<(String, String)>,
    /// `process.cwd`, inside the root.
    pub cwd: String,
    /// `process.user.uid`.
    pub uid: u32,
    /// `process.user.gid`.
    pub gid: u32,
    /// `process.rlimits`, applied best effort.
    pub rlimits: Vec<Rlimit>,
    /// `root.path` on the host (absolute); None when it is the host's `/`.
    pub rootfs: Option<PathBuf>,
    /// `mounts` but the ones tend-spawn makes in every root (proc at
    /// /proc, a plain tmpfs at /tmp), in order: binds and tmpfs.
    pub mounts: Vec<Mount>,
    /// `linux.maskedPaths` but those tend-spawn masks in every root.
    pub masked_paths: Vec<String>,
    /// `linux.readonlyPaths` but those tend-spawn write-protects in every root.
    pub readonly_paths: Vec<String>,
    /// `root.readonly: false` with a rootfs: the task writes its root (an
    /// overlay of the rootfs; the rootfs itself is never written).
    pub writable: bool,
    /// The task's cgroup, when the bundle asks for limits or a path.
    pub cgroup: Option<Cgroup>,
    /// The uts (with `hostname`), ipc and network namespaces of
    /// `linux.namespaces`; mount and pid come with a root of its own.
    pub namespaces: Namespaces,
    /// A `cgroup` entry in `linux.namespaces`: a cgroup namespace of the
    /// task's own, rooted at its cgroup.
    pub cgroup_namespace: bool,
}

impl Bundle {
    /// What of the bundle travels as the spawn config's extras: its mounts,
    /// masked and read-only paths beyond tend-spawn's fixed set, and its
    /// cgroup namespace.
    pub fn extras(&self) -> Vec<ConfigExtra> {
        let mut out = Vec::new();
        if !self.mounts.is_empty() {
            out.push(ConfigExtra::Mounts(self.mounts.clone()));
        }
        if !self.masked_paths.is_empty() {
            out.push(ConfigExtra::MaskedPaths(self.masked_paths.clone()));
        }
        if !self.readonly_paths.is_empty() {
            out.push(ConfigExtra::ReadonlyPaths(self.readonly_paths.clone()));
        }
        if self.cgroup_namespace {
            out.push(ConfigExtra::CgroupNamespace);
        }
        out
    }
}

/// Read and map `DIR/config.json`.
pub fn load(dir: &Path) -> Result<Bundle, BundleError> {
    let path = dir.join("config.json");
    let text = std::fs::read(&path).map_err(|source| BundleError::Read {
        path: path.clone(),
        source,
    })?;
    let doc: Value =
        serde_json::from_slice(&text).map_err(|source| BundleError::Json { path, source })?;
    map(dir, &doc)
}

fn object<'a>(v: &'a Value, field: &str) -> Result<&'a Map<String, Value>, BundleError> {
    v.as_object()
        .ok_or_else(|| refuse(field, "must be an object"))
}

fn array<'a>(v: &'a Value, field: &str) -> Result<&'a Vec<Value>, BundleError> {
    v.as_array()
        .ok_or_else(|| refuse(field, "must be an array"))
}

fn string<'a>(v: &'a Value, field: &str) -> Result<&'a str, BundleError> {
    v.as_str().ok_or_else(|| refuse(field, "must be a string"))
}

/// `o[key]`, which must be there and be a string; errors name `prefix.key`.
fn required_str<'a>(
    o: &'a Map<String, Value>,
    prefix: &str,
    key: &str,
) -> Result<&'a str, BundleError> {
    let field = format!("{prefix}.{key}");
    string(
        o.get(key).ok_or_else(|| refuse(&field, "is missing"))?,
        &field,
    )
}

fn u64_of(v: &Value, field: &str) -> Result<u64, BundleError> {
    v.as_u64()
        .ok_or_else(|| refuse(field, "must be a non-negative integer"))
}

fn u32_of(v: &Value, field: &str) -> Result<u32, BundleError> {
    u32::try_from(u64_of(v, field)?).map_err(|_| refuse(field, "out of range"))
}

fn bool_of(v: &Value, field: &str) -> Result<bool, BundleError> {
    v.as_bool()
        .ok_or_else(|| refuse(field, "must be true or false"))
}

/// Whether a value asks for nothing: null, false, 0, "", [] or {}.
fn is_empty(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_u64() == Some(0),
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.values().all(is_empty),
    }
}

fn join(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_string()
    } else {
        format!("{prefix}.{key}")
    }
}

/// Refuse every key of `obj` not in `known` that asks for something.
fn only(obj: &Map<String, Value>, prefix: &str, known: &[&str]) -> Result<(), BundleError> {
    for (k, v) in obj {
        if !known.contains(&k.as_str()) && !is_empty(v) {
            return Err(refuse(&join(prefix, k), "is not supported"));
        }
    }
    Ok(())
}

/// Map a parsed config.json of the bundle in `dir`.
pub fn map(dir: &Path, doc: &Value) -> Result<Bundle, BundleError> {
    let top = object(doc, "(top level)")?;
    // Annotations and the hostname ask the runtime to do nothing it can get wrong.
    only(
        top,
        "",
        &[
            "ociVersion",
            "process",
            "root",
            "mounts",
            "linux",
            "hostname",
            "annotations",
        ],
    )?;
    let version = string(
        top.get("ociVersion")
            .ok_or_else(|| refuse("ociVersion", "is missing"))?,
        "ociVersion",
    )?;
    if !version.starts_with("1.") {
        return Err(refuse(
            "ociVersion",
            format!("{version:?}: only 1.x is supported"),
        ));
    }
    let hostname = match top.get("hostname") {
        Some(h) if !is_empty(h) => {
            let h = string(h, "hostname")?;
            if h.len() > MAX_HOSTNAME || h.contains('\0') {
                return Err(refuse(
                    "hostname",
                    format!("{h:?}: want at most {MAX_HOSTNAME} bytes"),
                ));
            }
            Some(h.to_string())
        }
        _ => None,
    };
    let process = object(
        top.get("process")
            .ok_or_else(|| refuse("process", "is missing"))?,
        "process",
    )?;
    only(
        process,
        "process",
        &[
            "terminal",
            "user",
            "args",
            "env",
            "cwd",
            "rlimits",
            "noNewPrivileges",
        ],
    )?;
    if let Some(t) = process.get("terminal") {
        if bool_of(t, "process.terminal")? {
            return Err(refuse("process.terminal", "a terminal is not supported"));
        }
    }
    let args: Vec<String> = array(
        process
            .get("args")
            .ok_or_else(|| refuse("process.args", "is missing"))?,
        "process.args",
    )?
    .iter()
    .enumerate()
    .map(|(i, a)| string(a, &format!("process.args[{i}]")).map(str::to_string))
    .collect::<Result<_, _>>()?;
    if args.is_empty() || args[0].is_empty() {
        return Err(refuse("process.args", "is empty"));
    }
    let mut env = Vec::new();
    let mut seen = HashSet::new();
    if let Some(e) = process.get("env") {
        for (i, v) in array(e, "process.env")?.iter().enumerate() {
            let field = format!("process.env[{i}]");
            let s = string(v, &field)?;
            let (k, val) = s
                .split_once('=')
                .ok_or_else(|| refuse(&field, "has no '='"))?;
            if k.is_empty() {
                return Err(refuse(&field, "has an empty name"));
            }
            if seen.insert(k.to_string()) {
                env.push((k.to_string(), val.to_string()));
            }
        }
    }
    let cwd = string(
        process
            .get("cwd")
            .ok_or_else(|| refuse("process.cwd", "is missing"))?,
        "process.cwd",
    )?;
    if !cwd.starts_with('/') {
        return Err(refuse("process.cwd", "must be absolute"));
    }
    let (uid, gid) = match process.get("user") {
        None => (0, 0),
        Some(u) => {
            let u = object(u, "process.user")?;
            only(u, "process.user", &["uid", "gid"])?;
            let uid = u
                .get("uid")
                .map_or(Ok(0), |v| u32_of(v, "process.user.uid"))?;
            let gid = u
                .get("gid")
                .map_or(Ok(0), |v| u32_of(v, "process.user.gid"))?;
            (uid, gid)
        }
    };
    // tend-spawn sets no_new_privs on every task: false asks for less.
    if let Some(n) = process.get("noNewPrivileges") {
        bool_of(n, "process.noNewPrivileges")?;
    }
    let mut rlimits = Vec::new();
    if let Some(r) = process.get("rlimits") {
        for (i, v) in array(r, "process.rlimits")?.iter().enumerate() {
            let field = format!("process.rlimits[{i}]");
            let o = object(v, &field)?;
            only(o, &field, &["type", "soft", "hard"])?;
            let get = |k: &str| {
                o.get(k)
                    .ok_or_else(|| refuse(&format!("{field}.{k}"), "is missing"))
            };
            let kind = string(get("type")?, &format!("{field}.type"))?.to_string();
            if rlimit_resource(&kind).is_none() {
                return Err(refuse(
                    &format!("{field}.type"),
                    format!("{kind:?} is not a known rlimit"),
                ));
            }
            rlimits.push(Rlimit {
                kind,
                soft: u64_of(get("soft")?, &format!("{field}.soft"))?,
                hard: u64_of(get("hard")?, &format!("{field}.hard"))?,
            });
        }
    }
    let (rootfs, writable) = root(top.get("root"), dir)?;
    let mounts = mounts(top.get("mounts"))?;
    if rootfs.is_none() && !mounts.is_empty() {
        return Err(refuse("mounts", "need a root.path other than /"));
    }
    let Linux {
        cgroup,
        mut namespaces,
        masked_paths,
        readonly_paths,
        cgroup_namespace,
    } = match top.get("linux") {
        Some(l) => linux(l, rootfs.is_some())?,
        None => Linux::default(),
    };
    if hostname.is_some() && !namespaces.uts {
        // The host's name is not the bundle's to set.
        return Err(refuse(
            "hostname",
            "needs a uts namespace: add {\"type\": \"uts\"} to linux.namespaces",
        ));
    }
    namespaces.hostname = hostname;
    Ok(Bundle {
        dir: dir.to_path_buf(),
        args,
        env,
        cwd: cwd.to_string(),
        uid,
        gid,
        rlimits,
        rootfs,
        mounts,
        masked_paths,
        readonly_paths,
        writable,
        cgroup,
        namespaces,
        cgroup_namespace,
    })
}

/// The rlimit resource a `process.rlimits[].type` names.
pub fn rlimit_resource(kind: &str) -> Option<nix::sys::resource::Resource> {
    use nix::sys::resource::Resource as R;
    Some(match kind {
        "RLIMIT_AS" => R::RLIMIT_AS,
        "RLIMIT_CORE" => R::RLIMIT_CORE,
        "RLIMIT_CPU" => R::RLIMIT_CPU,
        "RLIMIT_DATA" => R::RLIMIT_DATA,
        "RLIMIT_FSIZE" => R::RLIMIT_FSIZE,
        "RLIMIT_LOCKS" => R::RLIMIT_LOCKS,
        "RLIMIT_MEMLOCK" => R::RLIMIT_MEMLOCK,
        "RLIMIT_MSGQUEUE" => R::RLIMIT_MSGQUEUE,
        "RLIMIT_NICE" => R::RLIMIT_NICE,
        "RLIMIT_NOFILE" => R::RLIMIT_NOFILE,
        "RLIMIT_NPROC" => R::RLIMIT_NPROC,
        "RLIMIT_RSS" => R::RLIMIT_RSS,
        "RLIMIT_RTPRIO" => R::RLIMIT_RTPRIO,
        "RLIMIT_SIGPENDING" => R::RLIMIT_SIGPENDING,
        "RLIMIT_STACK" => R::RLIMIT_STACK,
        _ => return None,
    })
}

/// `root`: the rootfs (None: the host's root) and whether it is writable.
fn root(v: Option<&Value>, dir: &Path) -> Result<(Option<PathBuf>, bool), BundleError> {
    let Some(v) = v else {
        return Err(refuse("root", "is missing"));
    };
    let r = object(v, "root")?;
    only(r, "root", &["path", "readonly"])?;
    let path = string(
        r.get("path")
            .ok_or_else(|| refuse("root.path", "is missing"))?,
        "root.path",
    )?;
    let readonly = r
        .get("readonly")
        .map_or(Ok(false), |v| bool_of(v, "root.readonly"))?;
    let abs = dir.join(path);
    // slurmstepd rewrites root.path against the bundle, so the host's root
    // may come as a path (a symlink) that resolves to it.
    if abs == Path::new("/") || std::fs::canonicalize(&abs).is_ok_and(|p| p == Path::new("/")) {
        return Ok((None, false));
    }
    // A writable root is an overlay of the rootfs, whose path the kernel
    // reads from a comma-separated option string.
    if !readonly
        && abs
            .to_str()
            .is_none_or(|p| p.contains(tend_proto::config::OVERLAY_SPECIAL))
    {
        return Err(refuse(
            "root.path",
            format!(
                "{}: a writable root's path may not hold ',', ':' or '\\'",
                abs.display()
            ),
        ));
    }
    Ok((Some(abs), !readonly))
}

/// `mounts`: binds and tmpfs, with their options; proc at /proc and a tmpfs
/// at /tmp asking for no more than tend-spawn's own are those, and left out.
fn mounts(v: Option<&Value>) -> Result<Vec<Mount>, BundleError> {
    let mut out = Vec::new();
    let Some(v) = v else { return Ok(out) };
    for (i, m) in array(v, "mounts")?.iter().enumerate() {
        let field = format!("mounts[{i}]");
        let o = object(m, &field)?;
        only(o, &field, &["destination", "type", "source", "options"])?;
        let destination = required_str(o, &field, "destination")?;
        let kind = o
            .get("type")
            .map_or(Ok("bind"), |t| string(t, &format!("{field}.type")))?;
        let options: Vec<&str> = match o.get("options") {
            None => Vec::new(),
            Some(a) => array(a, &format!("{field}.options"))?
                .iter()
                .enumerate()
                .map(|(j, s)| string(s, &format!("{field}.options[{j}]")))
                .collect::<Result<_, _>>()?,
        };
        let bind = kind == "bind" || options.contains(&"bind") || options.contains(&"rbind");
        // tend-spawn mounts these itself in every root it builds.
        if !bind && kind == "proc" && destination == "/proc" {
            continue;
        }
        if !bind
            && kind == "tmpfs"
            && destination == "/tmp"
            && options.iter().all(|o| STANDARD_TMP.contains(o))
        {
            continue;
        }
        if !bind && kind != "tmpfs" {
            return Err(refuse(
                &format!("{field}.type"),
                format!("{kind:?} at {destination} is not supported (bind, tmpfs, and proc at /proc are)"),
            ));
        }
        check_destination(&format!("{field}.destination"), destination)?;
        let kind = if bind {
            MountKind::Bind {
                source: String::new(),
                recursive: false,
            }
        } else {
            MountKind::Tmpfs {
                size_bytes: None,
                mode: None,
            }
        };
        let mut mount = Mount {
            target: destination.to_string(),
            kind,
            read_only: false,
            nosuid: false,
            nodev: false,
            noexec: false,
        };
        for (j, opt) in options.iter().enumerate() {
            let f = format!("{field}.options[{j}]");
            match (*opt, &mut mount.kind) {
                ("ro", _) => mount.read_only = true,
                ("rw", _) => mount.read_only = false,
                ("nosuid", _) => mount.nosuid = true,
                ("nodev", _) => mount.nodev = true,
                ("noexec", _) => mount.noexec = true,
                // The task's whole mount namespace receives no propagation
                // back to the host; the mount is the task's alone.
                ("private" | "rprivate", _) => {}
                ("bind", MountKind::Bind { .. }) => {}
                ("rbind", MountKind::Bind { recursive, .. }) => *recursive = true,
                // A new mount's atime rule unless another is asked for.
                ("relatime", MountKind::Tmpfs { .. }) => {}
                (o, MountKind::Tmpfs { size_bytes, .. }) if o.starts_with("size=") => {
                    *size_bytes = Some(size(&f, &o["size=".len()..])?);
                }
                (o, MountKind::Tmpfs { mode, .. }) if o.starts_with("mode=") => {
                    *mode = Some(mode_of(&f, &o["mode=".len()..])?);
                }
                (o, _) => {
                    return Err(refuse(&f, format!("{o:?} is not supported")));
                }
            }
        }
        // Nothing writable is suid or dev, as in every root tend-spawn builds.
        if !mount.read_only {
            mount.nosuid = true;
            mount.nodev = true;
        }
        if let MountKind::Bind { source: to, .. } = &mut mount.kind {
            let source = required_str(o, &field, "source")?;
            if !Path::new(source).is_absolute()
                || Path::new(source)
                    .components()
                    .any(|c| c == std::path::Component::ParentDir)
            {
                return Err(refuse(
                    &format!("{field}.source"),
                    format!("{source:?}: must be absolute, without '..'"),
                ));
            }
            *to = source.to_string();
        }
        out.push(mount);
    }
    Ok(out)
}

/// The options of a tmpfs at /tmp that asks for no more than tend-spawn's
/// own /tmp (mode 1777, nosuid, nodev, writable).
const STANDARD_TMP: [&str; 6] = [
    "nosuid",
    "nodev",
    "rw",
    "relatime",
    "mode=1777",
    "mode=01777",
];

/// A mount's destination: absolute, without `..`, not the root itself, and
/// not /dev, which tend-spawn makes with its device nodes.
fn check_destination(field: &str, d: &str) -> Result<(), BundleError> {
    let p = Path::new(d);
    if !p.is_absolute() || p.components().any(|c| c == std::path::Component::ParentDir) {
        return Err(refuse(
            field,
            format!("{d:?}: must be absolute, without '..'"),
        ));
    }
    match p.components().count() {
        1 => Err(refuse(field, "a mount over the root is not supported")),
        2 if p.ends_with("dev") => Err(refuse(
            field,
            "a mount over /dev is not supported: tend-spawn makes it (null, zero, full, random, urandom, tty)",
        )),
        _ => Ok(()),
    }
}

/// A tmpfs `size=`: bytes, or with a k, m or g suffix (KiB, MiB, GiB), as
/// mount(8) takes it; a percentage of memory is not supported.
fn size(field: &str, v: &str) -> Result<u64, BundleError> {
    let (digits, unit) = match v.char_indices().last() {
        Some((at, c)) if c.is_ascii_alphabetic() => (&v[..at], c.to_ascii_lowercase()),
        _ => (v, 'b'),
    };
    let shift = match unit {
        'b' => 0,
        'k' => 10,
        'm' => 20,
        'g' => 30,
        _ => {
            return Err(refuse(
                field,
                format!("size={v}: want bytes or a k, m or g suffix"),
            ))
        }
    };
    digits
        .parse::<u64>()
        .ok()
        .filter(|n| *n > 0)
        .and_then(|n| n.checked_mul(1 << shift))
        .ok_or_else(|| refuse(field, format!("size={v}: want bytes or a k, m or g suffix")))
}

/// A tmpfs `mode=`: octal, at most 7777.
fn mode_of(field: &str, v: &str) -> Result<u32, BundleError> {
    u32::from_str_radix(v, 8)
        .ok()
        .filter(|m| *m <= 0o7777)
        .ok_or_else(|| refuse(field, format!("mode={v}: want an octal mode, at most 7777")))
}

/// A limit where a negative number (-1) means none.
fn limit(o: &Map<String, Value>, prefix: &str, key: &str) -> Result<Option<u64>, BundleError> {
    let Some(v) = o.get(key) else { return Ok(None) };
    let field = format!("{prefix}.{key}");
    let n = v
        .as_i64()
        .ok_or_else(|| refuse(&field, "must be an integer"))?;
    Ok(u64::try_from(n).ok().filter(|n| *n > 0))
}

fn resources(v: &Value) -> Result<Cgroup, BundleError> {
    let r = object(v, "linux.resources")?;
    only(r, "linux.resources", &["memory", "cpu", "pids"])?;
    let mut cg = Cgroup::default();
    if let Some(m) = r.get("memory") {
        let f = "linux.resources.memory";
        let m = object(m, f)?;
        only(m, f, &["limit", "reservation"])?;
        cg.memory_bytes = limit(m, f, "limit")?;
        cg.memory_soft_bytes = limit(m, f, "reservation")?;
    }
    if let Some(c) = r.get("cpu") {
        let f = "linux.resources.cpu";
        let c = object(c, f)?;
        only(c, f, &["shares", "quota", "period"])?;
        cg.cpu_shares = limit(c, f, "shares")?;
        let quota = limit(c, f, "quota")?;
        let period = limit(c, f, "period")?.unwrap_or(100_000);
        cg.cpu_quota = quota.map(|q| (q, period));
    }
    if let Some(p) = r.get("pids") {
        let f = "linux.resources.pids";
        let p = object(p, f)?;
        only(p, f, &["limit"])?;
        cg.pids_max = limit(p, f, "limit")?;
    }
    Ok(cg)
}

/// `linux.maskedPaths` or `linux.readonlyPaths`: the entries tend-spawn
/// does not mask (or write-protect) in every root already.
fn paths_beyond(
    l: &Map<String, Value>,
    key: &str,
    covered: &dyn Fn(&str) -> bool,
    own_root: bool,
) -> Result<Vec<String>, BundleError> {
    let Some(v) = l.get(key) else {
        return Ok(Vec::new());
    };
    let field = format!("linux.{key}");
    let entries = array(v, &field)?;
    if !entries.is_empty() && !own_root {
        return Err(refuse(
            &field,
            "needs a root.path other than / (the host's /proc is not masked)",
        ));
    }
    let mut out = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        let f = format!("{field}[{i}]");
        let path = string(e, &f)?;
        let p = Path::new(path);
        if !p.is_absolute()
            || p.parent().is_none()
            || p.components().any(|c| c == std::path::Component::ParentDir)
        {
            return Err(refuse(
                &f,
                format!("{path:?}: must be absolute, without '..', not /"),
            ));
        }
        if !covered(path) {
            out.push(path.to_string());
        }
    }
    Ok(out)
}

fn masked(path: &str) -> bool {
    use tend_proto::config::{PROC_MASKED_DIRS, PROC_MASKED_FILES, SYS_MASKED_DIRS};
    match (path.strip_prefix("/proc/"), path.strip_prefix("/sys/")) {
        (Some(p), _) => PROC_MASKED_FILES.contains(&p) || PROC_MASKED_DIRS.contains(&p),
        (_, Some(p)) => SYS_MASKED_DIRS.contains(&p),
        _ => false,
    }
}

fn read_only(path: &str) -> bool {
    path.strip_prefix("/proc/")
        .is_some_and(|p| tend_proto::config::PROC_READ_ONLY.contains(&p))
}

/// What of `linux` is mapped.
#[derive(Default)]
struct Linux {
    cgroup: Option<Cgroup>,
    namespaces: Namespaces,
    masked_paths: Vec<String>,
    readonly_paths: Vec<String>,
    cgroup_namespace: bool,
}

fn linux(v: &Value, own_root: bool) -> Result<Linux, BundleError> {
    let l = object(v, "linux")?;
    only(
        l,
        "linux",
        &[
            "namespaces",
            "resources",
            "cgroupsPath",
            "maskedPaths",
            "readonlyPaths",
        ],
    )?;
    let masked_paths = paths_beyond(l, "maskedPaths", &masked, own_root)?;
    let readonly_paths = paths_beyond(l, "readonlyPaths", &read_only, own_root)?;
    let mut cgroup = l.get("resources").map(resources).transpose()?;
    if let Some(p) = l.get("cgroupsPath") {
        let path = string(p, "linux.cgroupsPath")?;
        if path.contains(':') {
            return Err(refuse(
                "linux.cgroupsPath",
                format!("{path:?}: systemd's slice:prefix:name form is not supported"),
            ));
        }
        let rel = path.trim_matches('/');
        if rel
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..")
        {
            return Err(refuse(
                "linux.cgroupsPath",
                format!("{path:?} is not a plain path"),
            ));
        }
        cgroup.get_or_insert_with(Cgroup::default).path = Some(rel.to_string());
    }
    let mut namespaces = Namespaces::default();
    let mut cgroup_namespace = false;
    if let Some(ns) = l.get("namespaces") {
        for (i, n) in array(ns, "linux.namespaces")?.iter().enumerate() {
            let field = format!("linux.namespaces[{i}]");
            let o = object(n, &field)?;
            only(o, &field, &["type"])?;
            let kind = required_str(o, &field, "type")?;
            // A task with its own root always has its own mount and pid
            // namespaces; the others are made new (a `path` to join one is
            // refused above).
            match kind {
                "mount" | "pid" => {}
                "uts" => namespaces.uts = true,
                "ipc" => namespaces.ipc = true,
                "network" => namespaces.net = true,
                "cgroup" => cgroup_namespace = true,
                _ => return Err(refuse(&field, format!("type {kind:?} is not supported"))),
            }
        }
    }
    Ok(Linux {
        cgroup,
        namespaces,
        masked_paths,
        readonly_paths,
        cgroup_namespace,
    })
}

#[cfg(test)]
mod tests;
