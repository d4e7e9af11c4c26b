//! A resources block: cpu, memory, pids, io weight and the network's ports.

use std::collections::HashSet;

use super::value::{boolean, int_in, positive, string};
use super::view::{no_labels, sub, view};
use crate::jobspec::diag::Collector;
use crate::jobspec::model::*;
use crate::jobspec::tree::Block;

/// A located static port, for the group's duplicate check.
pub(super) type StaticPort = (u16, usize, String);

pub(super) fn decode_resources(
    c: &mut Collector<'_>,
    b: &Block,
    path: &str,
) -> (Resources, Vec<StaticPort>) {
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
        let (ports, s) = decode_network(c, nb, &sub(path, "network"), false);
        r.ports = ports;
        statics = s;
    }
    (r, statics)
}

/// A `network { port "LABEL" { static, to } }` block: its ports, and its
/// static ones located for the group's duplicate check. A group's block
/// (`group_level`) may also say `mode = "host"`, the only mode without
/// network namespaces.
pub(super) fn decode_network(
    c: &mut Collector<'_>,
    nb: &Block,
    npath: &str,
    group_level: bool,
) -> (Vec<Port>, Vec<StaticPort>) {
    no_labels(c, nb, npath);
    let attrs: &[&str] = if group_level { &["mode"] } else { &[] };
    let nv = view(c, &nb.body, npath, attrs, &["port"]);
    if let Some(a) = nv.attr("mode") {
        let p = sub(npath, "mode");
        if let Some(mode) = string(c, &a.value, &p) {
            if mode != "host" {
                c.error(
                    a.value.at,
                    &p,
                    format!(
                        "{mode:?}: tend gives a group no network namespace of its own; \
                         \"host\" is the only mode (a docker task's own network is its \
                         config.network_mode)"
                    ),
                );
            }
        }
    }
    let mut ports = Vec::new();
    let mut statics = Vec::new();
    let mut labels = HashSet::new();
    for pb in nv.blocks("port") {
        let Some((label, lat)) = pb.labels.first().cloned() else {
            c.error(
                pb.at,
                &sub(npath, "port"),
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
            let whose = if group_level { "group" } else { "task" };
            c.error(
                lat,
                &ppath,
                format!("duplicate port label \"{label}\" in this {whose}"),
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
        ports.push(port);
    }
    (ports, statics)
}
