//! The located tree -> the validated [`Job`], every problem recorded, none
//! fatal: the decoder goes on with defaults so all errors of a file come out
//! together.

use std::collections::HashSet;

use super::diag::Collector;
use super::model::*;
use super::tree::{Block, Body};

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
