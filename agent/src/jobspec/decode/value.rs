//! Typed values: strings, bools, bounded integers, durations, lists and maps,
//! each wrong one recorded with its path.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use super::view::{no_labels, sub, View};
use crate::jobspec::diag::Collector;
use crate::jobspec::duration::{parse_duration, DURATION_FORM};
use crate::jobspec::tree::{Item, Kind, Value};

pub(super) fn string(c: &mut Collector<'_>, v: &Value, path: &str) -> Option<String> {
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

pub(super) fn boolean(c: &mut Collector<'_>, v: &Value, path: &str) -> Option<bool> {
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

pub(super) fn int_in(
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

pub(super) fn positive(c: &mut Collector<'_>, v: &Value, path: &str, unit: &str) -> Option<u64> {
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

pub(super) fn duration(c: &mut Collector<'_>, v: &Value, path: &str) -> Option<Duration> {
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
pub(super) fn list<'v>(
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

pub(super) fn string_list(c: &mut Collector<'_>, v: &Value, path: &str) -> Option<Vec<String>> {
    let strings: Vec<Option<String>> = list(c, v, path, "strings")?
        .into_iter()
        .map(|(p, e)| string(c, e, &p))
        .collect();
    strings.into_iter().collect()
}

/// Entries of a map written as a block (`env { A = "b" }`) or as an attribute
/// (`env = { A = "b" }`, and always so in JSON).
pub(super) fn map_entries<'a>(
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
pub(super) fn string_map(
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
