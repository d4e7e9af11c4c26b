//! A task block: its driver, the driver's config, env, resources and logs.

use std::time::Duration;

use super::check::{decode_checks, PortRef};
use super::docker;
use super::resources::{decode_resources, StaticPort};
use super::value::{
    boolean, duration, int_in, map_entries, positive, string, string_list, string_map,
};
use super::view::{no_labels, sub, view, View};
use crate::jobspec::diag::Collector;
use crate::jobspec::model::*;
use crate::jobspec::signal::{parse_signal, signal_names};
use crate::jobspec::tree::{Block, Item};

/// Config fields every process driver takes.
pub(super) const EXEC_CONFIG: &[&str] = &["command", "args"];
/// Config fields of the oci driver: a bundle, or a rootfs with a command.
pub(super) const OCI_CONFIG: &[&str] = &["bundle", "rootfs", "command", "args", "writable"];
/// Config fields of the docker driver.
pub(super) const DOCKER_CONFIG: &[&str] = &[
    "image",
    "command",
    "args",
    "hostname",
    "labels",
    "network_mode",
    "dns_servers",
    "dns_search_domains",
    "port_map",
    "ports",
    "privileged",
    "volumes",
    "devices",
    "cap_add",
    "cap_drop",
];

pub(super) fn decode_task(
    c: &mut Collector<'_>,
    b: &Block,
    name: String,
    path: &str,
) -> (Task, Vec<StaticPort>, Vec<PortRef>) {
    let v = view(
        c,
        &b.body,
        path,
        &[
            "driver",
            "user",
            "env",
            "meta",
            "kill_timeout",
            "kill_signal",
            "chroot_env",
        ],
        &[
            "config",
            "env",
            "meta",
            "resources",
            "logs",
            "chroot_env",
            "service",
            "check",
        ],
    );
    const DRIVER_NAMES: &str = "raw_exec, exec, docker, oci";
    let driver = match v.attr("driver") {
        None => {
            c.error(
                b.at,
                path,
                "missing driver: expected driver = \"raw_exec\", \"exec\", \"docker\" or \"oci\"",
            );
            None
        }
        Some(a) => {
            let p = sub(path, "driver");
            match string(c, &a.value, &p).as_deref() {
                Some("raw_exec") => Some(Driver::RawExec),
                Some("exec") => Some(Driver::Exec),
                Some("docker") => Some(Driver::Docker),
                Some("oci") => Some(Driver::Oci),
                Some(other) => {
                    c.error(
                        a.value.at,
                        &p,
                        format!("unknown driver {other:?} (expected one of: {DRIVER_NAMES})"),
                    );
                    None
                }
                None => None,
            }
        }
    };
    let user = v.attr("user").and_then(|a| {
        let p = sub(path, "user");
        let s = string(c, &a.value, &p)?;
        if s.is_empty() || s.contains('\0') {
            c.error(
                a.value.at,
                &p,
                "must be a user name or uid, got an empty string",
            );
            return None;
        }
        if c.on_this_host
            && matches!(driver, Some(Driver::Exec | Driver::Oci))
            && crate::driver::spawn::config::resolve_user(&s).is_none()
        {
            // The words `tend run` and the agent refuse it with.
            c.error(a.value.at, &p, format!("unknown user {s:?}"));
        }
        Some(s)
    });
    let config = match v.single_block(c, "config", path) {
        Some(cb) => decode_config(c, cb, driver, &name, &sub(path, "config")),
        None => {
            match driver {
                Some(Driver::RawExec | Driver::Exec) => {
                    c.error(b.at, path, "missing config { command = \"...\" } block")
                }
                Some(Driver::Docker) => {
                    c.error(b.at, path, "missing config { image = \"...\" } block")
                }
                Some(Driver::Oci) => c.error(
                    b.at,
                    path,
                    "missing config { bundle = \"/path\" } (or { rootfs = \"/path\", command = \"...\" }) block",
                ),
                None => {}
            }
            TaskConfig::default()
        }
    };
    let env = string_map(c, &v, "env", path, true);
    let meta = string_map(c, &v, "meta", path, false);
    let (resources, statics) = match v.single_block(c, "resources", path) {
        Some(rb) => decode_resources(c, rb, &sub(path, "resources")),
        None => (Resources::default(), Vec::new()),
    };
    let logs = match v.single_block(c, "logs", path) {
        Some(lb) => decode_logs(c, lb, &sub(path, "logs")),
        None => LogSpec::default(),
    };
    let kill_timeout = v
        .attr("kill_timeout")
        .and_then(|a| duration(c, &a.value, &sub(path, "kill_timeout")))
        .unwrap_or(Duration::from_secs(5));
    let kill_signal = v
        .attr("kill_signal")
        .and_then(|a| {
            let p = sub(path, "kill_signal");
            let s = string(c, &a.value, &p)?;
            let n = parse_signal(&s);
            if n.is_none() {
                c.error(
                    a.value.at,
                    &p,
                    format!("unknown signal {s:?} (expected a signal name such as SIGTERM or TERM; one of: {})", signal_names().join(", ")),
                );
            }
            n
        })
        .unwrap_or(nix::libc::SIGTERM);
    let chroot_env = if v.has("chroot_env") {
        let m = string_map(c, &v, "chroot_env", path, false);
        for (k, val) in &m {
            if !k.starts_with('/') || !val.starts_with('/') {
                let at = v.first_at("chroot_env");
                c.error(
                    at,
                    &sub(path, "chroot_env"),
                    format!(
                        "must map absolute host paths to absolute task paths, got {k:?} = {val:?}"
                    ),
                );
            }
        }
        Some(m)
    } else {
        None
    };
    let (checks, check_ports) = decode_checks(c, &v, path);
    let task = Task {
        name,
        driver: driver.unwrap_or(Driver::RawExec),
        user,
        config,
        env,
        meta,
        resources,
        logs,
        kill_timeout,
        kill_signal,
        chroot_env,
        checks,
    };
    (task, statics, check_ports)
}

pub(super) fn decode_config(
    c: &mut Collector<'_>,
    b: &Block,
    driver: Option<Driver>,
    task: &str,
    path: &str,
) -> TaskConfig {
    no_labels(c, b, path);
    let every: Vec<&str> = DOCKER_CONFIG
        .iter()
        .chain(OCI_CONFIG.iter().filter(|k| !DOCKER_CONFIG.contains(k)))
        .copied()
        .collect();
    let v = view(c, &b.body, path, &every, &["labels", "port_map"]);
    if let Some(d) = driver {
        let allowed = match d {
            Driver::Docker => DOCKER_CONFIG,
            Driver::Oci => OCI_CONFIG,
            Driver::RawExec | Driver::Exec => EXEC_CONFIG,
        };
        for item in &b.body.items {
            let (key, at) = match item {
                Item::Attr(a) => (&a.key, a.at),
                Item::Block(bl) => (&bl.ident, bl.at),
            };
            if every.contains(&key.as_str()) && !allowed.contains(&key.as_str()) {
                c.error(
                    at,
                    &sub(path, key),
                    format!(
                        "\"{key}\" is not a field of the {} driver ({} accepts: {})",
                        d.name(),
                        d.name(),
                        allowed.join(", ")
                    ),
                );
            }
        }
    }
    let mut cfg = TaskConfig::default();
    if let Some(a) = v.attr("command") {
        let p = sub(path, "command");
        if let Some(s) = string(c, &a.value, &p) {
            if s.trim().is_empty() || s.contains('\0') {
                c.error(a.value.at, &p, "must be a non-empty program path or name");
            } else {
                cfg.command = Some(s);
            }
        }
    }
    if let Some(a) = v.attr("args") {
        cfg.args = string_list(c, &a.value, &sub(path, "args")).unwrap_or_default();
        if cfg.args.iter().any(|s| s.contains('\0')) {
            c.error(
                a.value.at,
                &sub(path, "args"),
                "arguments must not contain NUL",
            );
        }
    }
    if let Some(a) = v.attr("image") {
        let p = sub(path, "image");
        if let Some(s) = string(c, &a.value, &p) {
            if s.trim().is_empty() {
                c.error(a.value.at, &p, "must be a non-empty image name");
            } else {
                cfg.image = Some(s);
            }
        }
    }
    cfg.hostname = v
        .attr("hostname")
        .and_then(|a| string(c, &a.value, &sub(path, "hostname")));
    cfg.network_mode = v
        .attr("network_mode")
        .and_then(|a| string(c, &a.value, &sub(path, "network_mode")));
    cfg.dns_servers = v
        .attr("dns_servers")
        .and_then(|a| string_list(c, &a.value, &sub(path, "dns_servers")))
        .unwrap_or_default();
    cfg.dns_search_domains = v
        .attr("dns_search_domains")
        .and_then(|a| string_list(c, &a.value, &sub(path, "dns_search_domains")))
        .unwrap_or_default();
    cfg.privileged = v
        .attr("privileged")
        .and_then(|a| boolean(c, &a.value, &sub(path, "privileged")))
        .unwrap_or(false);
    cfg.volumes = docker::volumes(c, &v, task, path);
    cfg.devices = docker::devices(c, &v, path);
    cfg.cap_add = docker::capabilities(c, &v, "cap_add", path);
    cfg.cap_drop = docker::capabilities(c, &v, "cap_drop", path);
    cfg.labels = string_map(c, &v, "labels", path, false);
    cfg.ports = v
        .attr("ports")
        .and_then(|a| string_list(c, &a.value, &sub(path, "ports")))
        .unwrap_or_default();
    for (label, _, value) in map_entries(c, &v, "port_map", path) {
        let p = format!("{path}.port_map.{label}");
        if let Some(n) = int_in(c, value, &p, 1, 65535, "a port number 1-65535") {
            cfg.port_map.insert(label, u16::try_from(n).unwrap_or(0));
        }
    }
    for key in ["bundle", "rootfs"] {
        let Some(a) = v.attr(key) else { continue };
        let p = sub(path, key);
        if let Some(s) = string(c, &a.value, &p) {
            if !s.starts_with('/') || s.contains('\0') {
                c.error(
                    a.value.at,
                    &p,
                    format!("must be an absolute path, got {s:?}"),
                );
            } else if key == "bundle" {
                cfg.bundle = Some(s);
            } else {
                cfg.rootfs = Some(s);
            }
        }
    }
    cfg.writable = v
        .attr("writable")
        .and_then(|a| boolean(c, &a.value, &sub(path, "writable")))
        .unwrap_or(false);
    if driver == Some(Driver::Oci) {
        oci_config(c, b, &v, &cfg, path);
    }
    match driver {
        Some(Driver::RawExec | Driver::Exec)
            if cfg.command.is_none() && v.attr("command").is_none() =>
        {
            c.error(
                b.at,
                path,
                format!(
                    "missing command: the {} driver needs command = \"/path/to/program\"",
                    driver.map_or("", Driver::name)
                ),
            );
        }
        Some(Driver::Docker) => {
            if cfg.image.is_none() && v.attr("image").is_none() {
                c.error(
                    b.at,
                    path,
                    "missing image: the docker driver needs image = \"name:tag\"",
                );
            }
            if let (Some(a), None) = (v.attr("args"), v.attr("command")) {
                c.error(a.at, &sub(path, "args"), "args without command: set command too, or drop args to run the image's own command");
            }
        }
        _ => {}
    }
    cfg
}

/// The oci driver's config: a bundle alone, or a rootfs with a command. On
/// this host (`tend validate`, `tend run`) the bundle is read and mapped
/// now, so what it asks that tend cannot do is named at the `bundle` line.
fn oci_config(c: &mut Collector<'_>, b: &Block, v: &View<'_>, cfg: &TaskConfig, path: &str) {
    match (v.attr("bundle"), v.attr("rootfs")) {
        (None, None) => c.error(
            b.at,
            path,
            "missing bundle or rootfs: the oci driver needs bundle = \"/path/to/bundle\" or rootfs = \"/path\" with command = \"...\"",
        ),
        (Some(_), Some(r)) => c.error(
            r.at,
            &sub(path, "rootfs"),
            "bundle and rootfs exclude each other: a bundle's root is its config.json's root.path",
        ),
        (Some(bundle), None) => {
            for key in ["command", "args"] {
                if let Some(a) = v.attr(key) {
                    c.error(
                        a.at,
                        &sub(path, key),
                        format!("\"{key}\" is not taken with a bundle: the command is its config.json's process.args"),
                    );
                }
            }
            if let Some(a) = v.attr("writable") {
                c.error(
                    a.at,
                    &sub(path, "writable"),
                    "\"writable\" is not taken with a bundle: its config.json's root.readonly says",
                );
            }
            if let (true, Some(dir)) = (c.on_this_host, &cfg.bundle) {
                if let Err(e) = tend_oci::bundle::load(std::path::Path::new(dir)) {
                    c.error(bundle.value.at, &sub(path, "bundle"), e.to_string());
                }
            }
        }
        (None, Some(rootfs)) => {
            if v.attr("command").is_none() {
                c.error(
                    b.at,
                    path,
                    "missing command: the oci driver with a rootfs needs command = \"/path/in/rootfs\"",
                );
            }
            if let (true, Some(dir)) = (c.on_this_host, &cfg.rootfs) {
                if !std::path::Path::new(dir).is_dir() {
                    c.error(
                        rootfs.value.at,
                        &sub(path, "rootfs"),
                        format!("{dir:?} is not a directory on this host"),
                    );
                }
            }
        }
    }
}

pub(super) fn decode_logs(c: &mut Collector<'_>, b: &Block, path: &str) -> LogSpec {
    no_labels(c, b, path);
    let v = view(c, &b.body, path, &["max_files", "max_file_size"], &[]);
    let mut l = LogSpec::default();
    if let Some(a) = v.attr("max_files") {
        if let Some(n) = int_in(
            c,
            &a.value,
            &sub(path, "max_files"),
            1,
            i64::from(u32::MAX),
            "an integer >= 1",
        ) {
            l.max_files = u32::try_from(n).unwrap_or(l.max_files);
        }
    }
    if let Some(a) = v.attr("max_file_size") {
        l.max_file_size_mb = positive(c, &a.value, &sub(path, "max_file_size"), " (MB)")
            .unwrap_or(l.max_file_size_mb);
    }
    l
}
