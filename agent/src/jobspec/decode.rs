//! The located tree -> the validated [`Job`], every problem recorded, none
//! fatal: the decoder goes on with defaults so all errors of a file come out
//! together.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use super::diag::Collector;
use super::duration::{parse_duration, DURATION_FORM};
use super::model::*;
use super::signal::{parse_signal, signal_names};
use super::tree::{Attr, Block, Body, Item, Kind, Value};

mod docker;

/// Config fields every process driver takes.
const EXEC_CONFIG: &[&str] = &["command", "args"];
/// Config fields of the docker driver.
const DOCKER_CONFIG: &[&str] = &[
    "image",
    "command",
    "args",
    "hostname",
    "labels",
    "network_mode",
    "dns_servers",
    "dns_search_domains",
    "port_map",
    "privileged",
    "volumes",
    "devices",
    "cap_add",
    "cap_drop",
];

/// Decodes the whole file; None when nothing job-like could be read.
pub(crate) fn decode(root: &Body, c: &mut Collector<'_>) -> Option<Job> {
    let v = view(c, root, "", &[], &["job"]);
    let jobs = v.blocks("job");
    if jobs.is_empty() {
        c.at_line_col(
            1,
            1,
            "",
            "no job in file: expected one job \"NAME\" { ... } block",
        );
        return None;
    }
    for extra in &jobs[1..] {
        c.error(
            extra.at,
            "",
            "only one job per file: a second job block was found",
        );
    }
    let job = jobs[0];
    let name = name_label(c, job, "job", "job");
    let path = format!("job.{name}");
    Some(decode_job(c, job, name, &path))
}

fn decode_job(c: &mut Collector<'_>, b: &Block, name: String, path: &str) -> Job {
    let v = view(
        c,
        &b.body,
        path,
        &["datacenters", "meta"],
        &["group", "meta"],
    );
    let datacenters = v
        .attr("datacenters")
        .and_then(|a| string_list(c, &a.value, &sub(path, "datacenters")))
        .unwrap_or_default();
    let meta = string_map(c, &v, "meta", path, false);
    let mut groups = Vec::new();
    let mut seen = HashSet::new();
    for g in v.blocks("group") {
        let gname = name_label(c, g, "group", path);
        if !seen.insert(gname.clone()) {
            c.error(
                g.labels.first().map_or(g.at, |l| l.1),
                &format!("{path}.group.{gname}"),
                format!("duplicate group name \"{gname}\""),
            );
        }
        let gpath = format!("{path}.group.{gname}");
        groups.push(decode_group(c, g, gname, &gpath));
    }
    if groups.is_empty() {
        c.error(
            b.at,
            path,
            "job has no group: expected at least one group \"NAME\" { task \"NAME\" { ... } }",
        );
    }
    Job {
        name,
        datacenters,
        meta,
        groups,
    }
}

fn decode_group(c: &mut Collector<'_>, b: &Block, name: String, path: &str) -> Group {
    let v = view(
        c,
        &b.body,
        path,
        &["count", "meta"],
        &["task", "restart", "meta"],
    );
    let count = v
        .attr("count")
        .and_then(|a| {
            int_in(
                c,
                &a.value,
                &sub(path, "count"),
                0,
                i64::from(u32::MAX),
                "an integer >= 0",
            )
        })
        .map_or(1, |n| u32::try_from(n).unwrap_or(1));
    let restart = match v.single_block(c, "restart", path) {
        Some(r) => decode_restart(c, r, &sub(path, "restart")),
        None => RestartPolicy::default(),
    };
    let meta = string_map(c, &v, "meta", path, false);
    let mut tasks = Vec::new();
    let mut seen = HashSet::new();
    let mut statics: HashSet<u16> = HashSet::new();
    for t in v.blocks("task") {
        let tname = name_label(c, t, "task", path);
        let tpath = format!("{path}.task.{tname}");
        if !seen.insert(tname.clone()) {
            c.error(
                t.labels.first().map_or(t.at, |l| l.1),
                &tpath,
                format!("duplicate task name \"{tname}\" in group \"{name}\""),
            );
        }
        let (task, static_at) = decode_task(c, t, tname, &tpath);
        for (port, at, ppath) in static_at {
            if !statics.insert(port) {
                c.error(
                    at,
                    &ppath,
                    format!("static port {port} is used twice in group \"{name}\""),
                );
            }
        }
        tasks.push(task);
    }
    if tasks.is_empty() {
        c.error(
            b.at,
            path,
            "group has no task: expected at least one task \"NAME\" { ... }",
        );
    }
    Group {
        name,
        count,
        restart,
        meta,
        tasks,
    }
}

fn decode_restart(c: &mut Collector<'_>, b: &Block, path: &str) -> RestartPolicy {
    no_labels(c, b, path);
    let v = view(
        c,
        &b.body,
        path,
        &["attempts", "interval", "delay", "mode"],
        &[],
    );
    let mut r = RestartPolicy::default();
    if let Some(a) = v.attr("attempts") {
        if let Some(n) = int_in(
            c,
            &a.value,
            &sub(path, "attempts"),
            0,
            i64::from(u32::MAX),
            "an integer >= 0",
        ) {
            r.attempts = u32::try_from(n).unwrap_or(0);
        }
    }
    if let Some(a) = v.attr("interval") {
        r.interval = duration(c, &a.value, &sub(path, "interval")).unwrap_or(r.interval);
    }
    if let Some(a) = v.attr("delay") {
        r.delay = duration(c, &a.value, &sub(path, "delay")).unwrap_or(r.delay);
    }
    if let Some(a) = v.attr("mode") {
        let p = sub(path, "mode");
        match string(c, &a.value, &p).as_deref() {
            Some("fail") => r.mode = RestartMode::Fail,
            Some("delay") => r.mode = RestartMode::Delay,
            Some(other) => c.error(
                a.value.at,
                &p,
                format!("must be \"fail\" or \"delay\", got {other:?}"),
            ),
            None => {}
        }
    }
    r
}

/// A located static port, for the group's duplicate check.
type StaticPort = (u16, usize, String);

fn decode_task(
    c: &mut Collector<'_>,
    b: &Block,
    name: String,
    path: &str,
) -> (Task, Vec<StaticPort>) {
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
        &["config", "env", "meta", "resources", "logs", "chroot_env"],
    );
    let driver = match v.attr("driver") {
        None => {
            c.error(
                b.at,
                path,
                "missing driver: expected driver = \"raw_exec\", \"exec\" or \"docker\"",
            );
            None
        }
        Some(a) => {
            let p = sub(path, "driver");
            match string(c, &a.value, &p).as_deref() {
                Some("raw_exec") => Some(Driver::RawExec),
                Some("exec") => Some(Driver::Exec),
                Some("docker") => Some(Driver::Docker),
                Some(other) => {
                    c.error(
                        a.value.at,
                        &p,
                        format!(
                            "unknown driver {other:?} (expected one of: raw_exec, exec, docker)"
                        ),
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
            && driver == Some(Driver::Exec)
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
    };
    (task, statics)
}

fn decode_config(
    c: &mut Collector<'_>,
    b: &Block,
    driver: Option<Driver>,
    task: &str,
    path: &str,
) -> TaskConfig {
    no_labels(c, b, path);
    let v = view(c, &b.body, path, DOCKER_CONFIG, &["labels", "port_map"]);
    if let Some(d) = driver {
        let allowed = if d == Driver::Docker {
            DOCKER_CONFIG
        } else {
            EXEC_CONFIG
        };
        for item in &b.body.items {
            let (key, at) = match item {
                Item::Attr(a) => (&a.key, a.at),
                Item::Block(bl) => (&bl.ident, bl.at),
            };
            if DOCKER_CONFIG.contains(&key.as_str()) && !allowed.contains(&key.as_str()) {
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
    for (label, _, value) in map_entries(c, &v, "port_map", path) {
        let p = format!("{path}.port_map.{label}");
        if let Some(n) = int_in(c, value, &p, 1, 65535, "a port number 1-65535") {
            cfg.port_map.insert(label, u16::try_from(n).unwrap_or(0));
        }
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

fn decode_resources(c: &mut Collector<'_>, b: &Block, path: &str) -> (Resources, Vec<StaticPort>) {
    no_labels(c, b, path);
    let v = view(
        c,
        &b.body,
        path,
        &[
            "cpu",
            "memory",
            "memory_max",
            "cpu_hard_limit",
            "io_weight",
            "oom_kill_group",
            "pids_limit",
        ],
        &["network"],
    );
    let mut r = Resources::default();
    let pos = |name: &str, unit: &str, dflt: u64, c: &mut Collector<'_>| {
        v.attr(name)
            .and_then(|a| positive(c, &a.value, &sub(path, name), unit))
            .unwrap_or(dflt)
    };
    r.cpu = pos("cpu", " (MHz)", r.cpu, c);
    r.memory = pos("memory", " (MB)", r.memory, c);
    r.pids_limit = v
        .attr("pids_limit")
        .and_then(|a| positive(c, &a.value, &sub(path, "pids_limit"), ""));
    if let Some(a) = v.attr("memory_max") {
        let p = sub(path, "memory_max");
        r.memory_max = positive(c, &a.value, &p, " (MB)");
        if r.memory_max.is_some_and(|max| max < r.memory) {
            c.error(
                a.value.at,
                &p,
                format!(
                    "must be at least memory ({} MB): memory is the reservation, memory_max the hard limit",
                    r.memory
                ),
            );
        }
    }
    let flag = |name: &str, c: &mut Collector<'_>| {
        v.attr(name)
            .and_then(|a| boolean(c, &a.value, &sub(path, name)))
            .unwrap_or(false)
    };
    r.cpu_hard_limit = flag("cpu_hard_limit", c);
    r.oom_kill_group = flag("oom_kill_group", c);
    if let Some(a) = v.attr("io_weight") {
        r.io_weight = int_in(
            c,
            &a.value,
            &sub(path, "io_weight"),
            1,
            10_000,
            "an integer 1-10000",
        )
        .and_then(|n| u16::try_from(n).ok());
    }
    let mut statics = Vec::new();
    if let Some(nb) = v.single_block(c, "network", path) {
        let npath = sub(path, "network");
        no_labels(c, nb, &npath);
        let nv = view(c, &nb.body, &npath, &[], &["port"]);
        let mut labels = HashSet::new();
        for pb in nv.blocks("port") {
            let Some((label, lat)) = pb.labels.first().cloned() else {
                c.error(
                    pb.at,
                    &sub(&npath, "port"),
                    "port needs a label: port \"http\" { ... }",
                );
                continue;
            };
            let ppath = format!("{npath}.port.{label}");
            if pb.labels.len() > 1 {
                c.error(pb.labels[1].1, &ppath, "port takes one label");
            }
            if label.is_empty()
                || !label
                    .chars()
                    .all(|ch| ch.is_ascii_alphanumeric() || ch == '_')
            {
                c.error(lat, &ppath, format!("port label must be letters, digits and _ (it names TEND_PORT_<label>), got {label:?}"));
            }
            if !labels.insert(label.clone()) {
                c.error(
                    lat,
                    &ppath,
                    format!("duplicate port label \"{label}\" in this task"),
                );
            }
            let pv = view(c, &pb.body, &ppath, &["static", "to"], &[]);
            let mut port = Port {
                label: label.clone(),
                static_port: None,
                to: None,
            };
            if let Some(a) = pv.attr("static") {
                let p = sub(&ppath, "static");
                if let Some(n) = int_in(c, &a.value, &p, 1, 65535, "a port number 1-65535") {
                    let n = u16::try_from(n).unwrap_or(0);
                    port.static_port = Some(n);
                    statics.push((n, a.value.at, p));
                }
            }
            if let Some(a) = pv.attr("to") {
                if let Some(n) = int_in(
                    c,
                    &a.value,
                    &sub(&ppath, "to"),
                    1,
                    65535,
                    "a port number 1-65535",
                ) {
                    port.to = Some(u16::try_from(n).unwrap_or(0));
                }
            }
            r.ports.push(port);
        }
    }
    (r, statics)
}

fn decode_logs(c: &mut Collector<'_>, b: &Block, path: &str) -> LogSpec {
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

// ---- body views -------------------------------------------------------------

/// The checked content of one body: known attributes and blocks only.
struct View<'a> {
    attrs: Vec<&'a Attr>,
    blocks: Vec<&'a Block>,
}

impl<'a> View<'a> {
    fn attr(&self, key: &str) -> Option<&'a Attr> {
        self.attrs.iter().copied().find(|a| a.key == key)
    }

    fn blocks(&self, ident: &str) -> Vec<&'a Block> {
        self.blocks
            .iter()
            .copied()
            .filter(|b| b.ident == ident)
            .collect()
    }

    fn has(&self, name: &str) -> bool {
        self.attr(name).is_some() || !self.blocks(name).is_empty()
    }

    fn first_at(&self, name: &str) -> usize {
        self.attr(name)
            .map(|a| a.at)
            .or_else(|| self.blocks(name).first().map(|b| b.at))
            .unwrap_or(0)
    }

    /// A block that may appear once; later ones are errors.
    fn single_block(&self, c: &mut Collector<'_>, ident: &str, path: &str) -> Option<&'a Block> {
        let bs = self.blocks(ident);
        for extra in bs.iter().skip(1) {
            c.error(
                extra.at,
                &sub(path, ident),
                format!("only one {ident} block is allowed here"),
            );
        }
        bs.first().copied()
    }
}

fn expected(names: &[&str]) -> String {
    if names.is_empty() {
        "none are allowed here".to_string()
    } else {
        format!("expected one of: {}", names.join(", "))
    }
}

/// Sorts a body into known attributes and blocks, recording unknown and
/// duplicate ones. A name in both lists (`env`, `meta` ...) may be written
/// either way.
fn view<'a>(
    c: &mut Collector<'_>,
    body: &'a Body,
    path: &str,
    attrs: &[&str],
    blocks: &[&str],
) -> View<'a> {
    let mut v = View {
        attrs: Vec::new(),
        blocks: Vec::new(),
    };
    let mut seen = HashSet::new();
    for item in &body.items {
        match item {
            Item::Attr(a) => {
                let p = sub(path, &a.key);
                if attrs.contains(&a.key.as_str()) {
                    if !seen.insert(a.key.clone()) {
                        c.error(a.at, &p, format!("duplicate attribute \"{}\"", a.key));
                    } else {
                        v.attrs.push(a);
                    }
                } else if blocks.contains(&a.key.as_str()) {
                    c.error(
                        a.at,
                        &p,
                        format!("\"{}\" is a block: write {} {{ ... }}", a.key, a.key),
                    );
                } else {
                    c.error(
                        a.at,
                        &p,
                        format!("unknown attribute \"{}\" ({})", a.key, expected(attrs)),
                    );
                }
            }
            Item::Block(b) => {
                let p = sub(path, &b.ident);
                if blocks.contains(&b.ident.as_str()) {
                    if attrs.contains(&b.ident.as_str()) && !seen.insert(b.ident.clone()) {
                        c.error(b.at, &p, format!("duplicate \"{}\"", b.ident));
                    } else {
                        v.blocks.push(b);
                    }
                } else if attrs.contains(&b.ident.as_str()) {
                    c.error(
                        b.at,
                        &p,
                        format!("\"{}\" is an attribute: write {} = ...", b.ident, b.ident),
                    );
                } else {
                    c.error(
                        b.at,
                        &p,
                        format!("unknown block \"{}\" ({})", b.ident, expected(blocks)),
                    );
                }
            }
        }
    }
    v
}

fn sub(path: &str, name: &str) -> String {
    if path.is_empty() {
        name.to_string()
    } else {
        format!("{path}.{name}")
    }
}

fn no_labels(c: &mut Collector<'_>, b: &Block, path: &str) {
    if let Some((_, at)) = b.labels.first() {
        c.error(
            *at,
            path,
            format!("{} takes no label: write {} {{ ... }}", b.ident, b.ident),
        );
    }
}

/// The one label of a job, group or task block, checked to be a plain file name.
fn name_label(c: &mut Collector<'_>, b: &Block, kind: &str, parent: &str) -> String {
    let Some((name, at)) = b.labels.first() else {
        c.error(
            b.at,
            &sub(parent, kind),
            format!("{kind} needs a name: {kind} \"NAME\" {{ ... }}"),
        );
        return String::new();
    };
    let path = if kind == "job" {
        format!("job.{name}")
    } else {
        format!("{parent}.{kind}.{name}")
    };
    if b.labels.len() > 1 {
        c.error(
            b.labels[1].1,
            &path,
            format!("{kind} takes one label, got {}", b.labels.len()),
        );
    }
    if name.is_empty()
        || name == "."
        || name == ".."
        || name.contains('/')
        || name.contains('\0')
        || name.len() > 200
    {
        c.error(
            *at,
            &path,
            format!("{kind} name must be a plain file name (not empty, \".\" or \"..\", no \"/\" or NUL, at most 200 bytes), got {name:?}"),
        );
    } else if kind == "task" {
        // The task's dir is <alloc_dir>/<name>, beside tend's own entries.
        if let Some(why) = tend_proto::names::reserved_in_alloc_dir(name) {
            c.error(
                *at,
                &path,
                format!(
                    "task name {name:?} {why}: tend keeps it in the alloc dir, choose another name"
                ),
            );
        }
    }
    name.clone()
}

// ---- values -----------------------------------------------------------------

fn string(c: &mut Collector<'_>, v: &Value, path: &str) -> Option<String> {
    match &v.kind {
        Kind::Str(s) => Some(s.clone()),
        other => {
            c.error(
                v.at,
                path,
                format!("must be a string, got {}", other.describe()),
            );
            None
        }
    }
}

fn boolean(c: &mut Collector<'_>, v: &Value, path: &str) -> Option<bool> {
    match &v.kind {
        Kind::Bool(b) => Some(*b),
        other => {
            c.error(
                v.at,
                path,
                format!("must be true or false, got {}", other.describe()),
            );
            None
        }
    }
}

fn int_in(
    c: &mut Collector<'_>,
    v: &Value,
    path: &str,
    min: i64,
    max: i64,
    what: &str,
) -> Option<i64> {
    match &v.kind {
        Kind::Int(i) if (min..=max).contains(i) => Some(*i),
        other => {
            c.error(
                v.at,
                path,
                format!("must be {what}, got {}", other.describe()),
            );
            None
        }
    }
}

fn positive(c: &mut Collector<'_>, v: &Value, path: &str, unit: &str) -> Option<u64> {
    match &v.kind {
        Kind::Int(i) if *i > 0 => u64::try_from(*i).ok(),
        other => {
            c.error(
                v.at,
                path,
                format!("must be a positive integer{unit}, got {}", other.describe()),
            );
            None
        }
    }
}

fn duration(c: &mut Collector<'_>, v: &Value, path: &str) -> Option<Duration> {
    let s = match &v.kind {
        Kind::Str(s) => s,
        other => {
            c.error(
                v.at,
                path,
                format!("must be {DURATION_FORM}, got {}", other.describe()),
            );
            return None;
        }
    };
    let d = parse_duration(s);
    if d.is_none() {
        c.error(
            v.at,
            path,
            format!("bad duration {s:?}: expected {DURATION_FORM}"),
        );
    }
    d
}

/// The elements of a list, each with its path `path[i]`; `of` says what the
/// list holds, for the message when `v` is no list.
fn list<'v>(
    c: &mut Collector<'_>,
    v: &'v Value,
    path: &str,
    of: &str,
) -> Option<Vec<(String, &'v Value)>> {
    let Kind::Array(elems) = &v.kind else {
        c.error(
            v.at,
            path,
            format!("must be a list of {of}, got {}", v.kind.describe()),
        );
        return None;
    };
    Some(
        elems
            .iter()
            .enumerate()
            .map(|(i, e)| (format!("{path}[{i}]"), e))
            .collect(),
    )
}

fn string_list(c: &mut Collector<'_>, v: &Value, path: &str) -> Option<Vec<String>> {
    let strings: Vec<Option<String>> = list(c, v, path, "strings")?
        .into_iter()
        .map(|(p, e)| string(c, e, &p))
        .collect();
    strings.into_iter().collect()
}

/// Entries of a map written as a block (`env { A = "b" }`) or as an attribute
/// (`env = { A = "b" }`, and always so in JSON).
fn map_entries<'a>(
    c: &mut Collector<'_>,
    v: &View<'a>,
    name: &str,
    path: &str,
) -> Vec<(String, usize, &'a Value)> {
    let p = sub(path, name);
    let mut out = Vec::new();
    if let Some(a) = v.attr(name) {
        match &a.value.kind {
            Kind::Object(entries) => {
                out.extend(entries.iter().map(|(k, at, val)| (k.clone(), *at, val)))
            }
            other => c.error(
                a.value.at,
                &p,
                format!("must be a map, got {}", other.describe()),
            ),
        }
    }
    for b in v.blocks(name) {
        no_labels(c, b, &p);
        let mut seen = HashSet::new();
        for item in &b.body.items {
            match item {
                Item::Attr(a) => {
                    if !seen.insert(a.key.clone()) {
                        c.error(
                            a.at,
                            &sub(&p, &a.key),
                            format!("duplicate key \"{}\"", a.key),
                        );
                    }
                    out.push((a.key.clone(), a.at, &a.value));
                }
                Item::Block(inner) => {
                    c.error(
                        inner.at,
                        &sub(&p, &inner.ident),
                        format!("{name} holds only KEY = value entries, not blocks"),
                    );
                }
            }
        }
    }
    out
}

/// A map of strings; numbers and bools become strings as Nomad does.
/// `env_names` checks keys are usable environment variable names.
fn string_map(
    c: &mut Collector<'_>,
    v: &View<'_>,
    name: &str,
    path: &str,
    env_names: bool,
) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for (key, at, val) in map_entries(c, v, name, path) {
        let p = format!("{}.{key}", sub(path, name));
        if key.is_empty() || key.contains('\0') || (env_names && key.contains('=')) {
            c.error(
                at,
                &p,
                format!(
                    "bad key {key:?}: must be non-empty, without NUL{}",
                    if env_names { " or \"=\"" } else { "" }
                ),
            );
            continue;
        }
        let s = match &val.kind {
            Kind::Str(s) => s.clone(),
            Kind::Int(i) => i.to_string(),
            Kind::Float(f) => f.to_string(),
            Kind::Bool(b) => b.to_string(),
            other => {
                c.error(
                    val.at,
                    &p,
                    format!("must be a string, number or bool, got {}", other.describe()),
                );
                continue;
            }
        };
        if env_names && s.contains('\0') {
            c.error(val.at, &p, "environment values must not contain NUL");
            continue;
        }
        out.insert(key, s);
    }
    out
}
