//! The located tree -> the validated [`Job`], every problem recorded, none
//! fatal: the decoder goes on with defaults so all errors of a file come out
//! together.

use std::collections::HashSet;

use super::diag::Collector;
use super::model::*;
use super::tree::{Block, Body};

mod check;
mod docker;
mod resources;
mod task;
mod value;
mod view;

use task::decode_task;
use value::{duration, int_in, string, string_list, string_map};
use view::{name_label, no_labels, sub, view};

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
        &["task", "restart", "meta", "network"],
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
    let (network, group_statics) = match v.single_block(c, "network", path) {
        Some(nb) => resources::decode_network(c, nb, &sub(path, "network"), true),
        None => (Vec::new(), Vec::new()),
    };
    for (port, _, _) in &group_statics {
        statics.insert(*port);
    }
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
        let (task, static_at, check_ports) = decode_task(c, t, tname, &tpath);
        check_group_ports(c, t, &tpath, &task, &network);
        check_check_ports(c, &task, &check_ports, &network);
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
        network,
        tasks,
    }
}

/// A task beside its group's ports: no port label of both (one
/// `TEND_PORT_<label>` each), and a docker task's `config.ports` names only
/// the group's.
fn check_group_ports(c: &mut Collector<'_>, t: &Block, tpath: &str, task: &Task, group: &[Port]) {
    for p in &task.resources.ports {
        if group.iter().any(|g| g.label == p.label) {
            c.error(
                t.at,
                &format!("{tpath}.resources.network.port.{}", p.label),
                format!(
                    "port label \"{}\" is the group's too: each label names one TEND_PORT_{}",
                    p.label, p.label
                ),
            );
        }
    }
    let at = config_attr_at(t, "ports").unwrap_or(t.at);
    for label in &task.config.ports {
        if !group.iter().any(|g| &g.label == label) {
            c.error(
                at,
                &format!("{tpath}.config.ports"),
                format!(
                    "\"{label}\" is not a port of the group's network block{}",
                    if group.is_empty() {
                        " (the group has none)".to_string()
                    } else {
                        format!(
                            " (it has {})",
                            group
                                .iter()
                                .map(|g| format!("{:?}", g.label))
                                .collect::<Vec<_>>()
                                .join(", ")
                        )
                    }
                ),
            );
        }
    }
}

/// Each port label a check names is the task's or the group's.
fn check_check_ports(c: &mut Collector<'_>, task: &Task, refs: &[check::PortRef], group: &[Port]) {
    for r in refs {
        let known = task.resources.ports.iter().chain(group);
        if known.clone().any(|p| p.label == r.label) {
            continue;
        }
        let labels: Vec<String> = known.map(|p| format!("{:?}", p.label)).collect();
        c.error(
            r.at,
            &r.path,
            format!(
                "\"{}\" is not a port of the task's or the group's network block ({})",
                r.label,
                if labels.is_empty() {
                    "there are none".to_string()
                } else {
                    format!("they have {}", labels.join(", "))
                }
            ),
        );
    }
}

/// Where the task's `config { KEY = ... }` attribute is, if it is there.
fn config_attr_at(t: &Block, key: &str) -> Option<usize> {
    t.body.items.iter().find_map(|i| match i {
        super::tree::Item::Block(b) if b.ident == "config" => {
            b.body.items.iter().find_map(|j| match j {
                super::tree::Item::Attr(a) if a.key == key => Some(a.value.at),
                _ => None,
            })
        }
        _ => None,
    })
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
