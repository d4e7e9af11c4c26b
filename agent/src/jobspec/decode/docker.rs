//! The docker driver's fields that reach into the host: `volumes`, `devices`,
//! `cap_add` and `cap_drop`. Their values are checked here; whether the agent
//! allows them is the driver's policy (`driver::docker::spec::policy`).

use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};

use super::value::{list, string};
use super::view::{expected, sub, View};
use crate::driver::docker::spec::{CONTAINER_ALLOC_DIR, CONTAINER_TASK_DIR};
use crate::jobspec::capability;
use crate::jobspec::diag::Collector;
use crate::jobspec::model::{Device, Volume, VolumeSource};
use crate::jobspec::tree::{Kind, Value};

/// How one volume is written, for messages.
const VOLUME_FORM: &str = "\"SOURCE:TARGET\" or \"SOURCE:TARGET:MODE\" (MODE ro or rw)";

/// The keys of one device.
const DEVICE_KEYS: &[&str] = &["host_path", "container_path", "cgroup_permissions"];

/// Permissions a device gets when `cgroup_permissions` is not set.
const DEFAULT_CGROUP_PERMISSIONS: &str = "rwm";

/// `volumes = ["SOURCE:TARGET[:MODE]", ...]` of task `task`.
pub(super) fn volumes(c: &mut Collector<'_>, v: &View<'_>, task: &str, path: &str) -> Vec<Volume> {
    let Some(a) = v.attr("volumes") else {
        return Vec::new();
    };
    let p = sub(path, "volumes");
    let mut out: Vec<Volume> = Vec::new();
    // Cleaned target -> the index that binds it first.
    let mut targets: HashMap<PathBuf, usize> = HashMap::new();
    for (i, (ep, e)) in list(c, &a.value, &p, "strings")
        .unwrap_or_default()
        .into_iter()
        .enumerate()
    {
        let Some(s) = string(c, e, &ep) else {
            continue;
        };
        let Some(vol) = volume(c, &s, e.at, &ep, task) else {
            continue;
        };
        let clean: PathBuf = Path::new(&vol.target).components().collect();
        if let Some(first) = targets.get(&clean) {
            c.error(
                e.at,
                &ep,
                format!(
                    "the target {:?} is already bound by volumes[{first}]",
                    vol.target
                ),
            );
            continue;
        }
        targets.insert(clean, i);
        out.push(vol);
    }
    out
}

/// One volume, every problem of it recorded.
fn volume(c: &mut Collector<'_>, s: &str, at: usize, path: &str, task: &str) -> Option<Volume> {
    let parts: Vec<&str> = s.split(':').collect();
    let (src, dst, mode) = match parts[..] {
        [src, dst] => (src, dst, None),
        [src, dst, mode] => (src, dst, Some(mode)),
        _ => {
            c.error(at, path, format!("expected {VOLUME_FORM}, got {s:?}"));
            return None;
        }
    };
    let mut errors = Vec::new();
    let source = if src.is_empty() || src.contains('\0') {
        errors.push(format!(
            "the source {src:?} must be a path relative to the task's dir or an absolute host path"
        ));
        None
    } else if src.starts_with('/') {
        Some(VolumeSource::Host(PathBuf::from(src)))
    } else {
        match in_alloc(task, src) {
            Some(p) => Some(VolumeSource::InAlloc(p)),
            None => {
                errors.push(format!(
                    "the source {src:?} leaves the task's dir: a relative source is taken \
                     from the task's dir (<alloc_dir>/{task}) and must stay in it or in the \
                     alloc's shared dir (../alloc); the alloc dir's logs and exit files are \
                     not the task's (an absolute source is a host bind)"
                ));
                None
            }
        }
    };
    let target = Path::new(dst);
    if !target.is_absolute()
        || dst.contains('\0')
        || target.components().any(|c| c == Component::ParentDir)
    {
        errors.push(format!(
            "the target {dst:?} must be an absolute path in the container, without \"..\""
        ));
    } else if target.parent().is_none() {
        errors.push("the target must not be the container's root \"/\"".to_string());
    } else if [CONTAINER_ALLOC_DIR, CONTAINER_TASK_DIR]
        .iter()
        .any(|own| target == Path::new(own))
    {
        errors.push(format!(
            "the target {dst:?} is where the driver binds the alloc's dirs ({CONTAINER_ALLOC_DIR} \
             and {CONTAINER_TASK_DIR}): choose another path"
        ));
    }
    let read_only = match mode {
        None | Some("rw") => false,
        Some("ro") => true,
        Some(other) => {
            errors.push(format!("the mode {other:?} must be \"ro\" or \"rw\""));
            false
        }
    };
    for e in &errors {
        c.error(at, path, e.as_str());
    }
    match (source, errors.is_empty()) {
        (Some(source), true) => Some(Volume {
            source,
            target: dst.to_string(),
            read_only,
        }),
        _ => None,
    }
}

/// A relative source taken from `<alloc_dir>/<task>`, as a path relative to the
/// alloc dir made of plain names only; None when it leaves both the task's dir
/// and the alloc's shared dir `alloc/` (the rest of the alloc dir, its logs and
/// exit status files, is written by tend alone).
fn in_alloc(task: &str, rel: &str) -> Option<PathBuf> {
    let mut names: Vec<&std::ffi::OsStr> = vec![std::ffi::OsStr::new(task)];
    for comp in Path::new(rel).components() {
        match comp {
            Component::Normal(n) => names.push(n),
            Component::CurDir => {}
            Component::ParentDir => {
                names.pop()?;
            }
            Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    let top = names.first()?;
    (*top == std::ffi::OsStr::new(task) || *top == std::ffi::OsStr::new("alloc"))
        .then(|| names.iter().collect())
}

/// `devices = [{ host_path = "...", container_path = "...", cgroup_permissions = "rwm" }, ...]`.
pub(super) fn devices(c: &mut Collector<'_>, v: &View<'_>, path: &str) -> Vec<Device> {
    let Some(a) = v.attr("devices") else {
        return Vec::new();
    };
    let p = sub(path, "devices");
    list(c, &a.value, &p, "device objects")
        .unwrap_or_default()
        .into_iter()
        .filter_map(|(ep, e)| device(c, e, &ep))
        .collect()
}

fn device(c: &mut Collector<'_>, e: &Value, path: &str) -> Option<Device> {
    let Kind::Object(entries) = &e.kind else {
        c.error(
            e.at,
            path,
            format!(
                "must be an object {{ host_path = \"/dev/...\" }}, got {}",
                e.kind.describe()
            ),
        );
        return None;
    };
    let mut fields: HashMap<&str, String> = HashMap::new();
    let mut ok = true;
    for (key, kat, val) in entries {
        let kp = sub(path, key);
        let Some(&known) = DEVICE_KEYS.iter().find(|k| **k == key) else {
            c.error(
                *kat,
                &kp,
                format!("unknown attribute \"{key}\" ({})", expected(DEVICE_KEYS)),
            );
            ok = false;
            continue;
        };
        if fields.contains_key(known) {
            c.error(*kat, &kp, format!("duplicate attribute \"{key}\""));
            ok = false;
            continue;
        }
        let Some(s) = string(c, val, &kp) else {
            ok = false;
            continue;
        };
        let problem = match known {
            "cgroup_permissions" => cgroup_permissions_problem(&s),
            _ if !s.starts_with('/') || s.contains('\0') => {
                Some(format!("must be an absolute path, got {s:?}"))
            }
            _ => None,
        };
        if let Some(m) = problem {
            c.error(val.at, &kp, m);
            ok = false;
            continue;
        }
        fields.insert(known, s);
    }
    let Some(host_path) = fields.remove("host_path") else {
        if ok {
            c.error(
                e.at,
                path,
                "missing host_path: expected host_path = \"/dev/...\", the device on the host",
            );
        }
        return None;
    };
    ok.then(|| Device {
        container_path: fields
            .remove("container_path")
            .unwrap_or_else(|| host_path.clone()),
        host_path,
        cgroup_permissions: fields
            .remove("cgroup_permissions")
            .unwrap_or_else(|| DEFAULT_CGROUP_PERMISSIONS.to_string()),
    })
}

/// What is wrong with a `cgroup_permissions` value, if anything.
fn cgroup_permissions_problem(s: &str) -> Option<String> {
    let each_once = s
        .char_indices()
        .all(|(i, ch)| DEFAULT_CGROUP_PERMISSIONS.contains(ch) && !s[..i].contains(ch));
    (s.is_empty() || !each_once).then(|| {
        format!(
            "must be some of r, w and m, each at most once (such as \"rwm\" or \"r\"), got {s:?}"
        )
    })
}

/// `cap_add` or `cap_drop`: capability names, canonical (`NET_ADMIN`), or `ALL`.
pub(super) fn capabilities(
    c: &mut Collector<'_>,
    v: &View<'_>,
    name: &str,
    path: &str,
) -> Vec<String> {
    let Some(a) = v.attr(name) else {
        return Vec::new();
    };
    let p = sub(path, name);
    let mut out = Vec::new();
    for (ep, e) in list(c, &a.value, &p, "capability names").unwrap_or_default() {
        let Some(s) = string(c, e, &ep) else {
            continue;
        };
        match capability::known(&s) {
            Some(cap) => out.push(cap),
            None => c.error(
                e.at,
                &ep,
                format!(
                    "unknown capability {s:?}: expected a Linux capability such as \"NET_ADMIN\" \
                     (or \"CAP_NET_ADMIN\"), or \"ALL\""
                ),
            ),
        }
    }
    out
}
