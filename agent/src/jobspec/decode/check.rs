//! A task's health checks: `check {}` blocks, bare in the task or inside a
//! `service {}` as Nomad writes them. The service is no registration here:
//! its `port` is only the default port of its checks, its `check_restart`
//! the default of theirs.

use std::collections::HashSet;
use std::time::Duration;

use super::value::{boolean, duration, int_in, string, string_list};
use super::view::{no_labels, sub, view, View};
use crate::jobspec::diag::Collector;
use crate::jobspec::model::*;
use crate::jobspec::tree::Block;

/// The shortest `interval` and `timeout` a check takes, as Nomad's.
pub const MIN_CHECK_PERIOD: Duration = Duration::from_secs(1);

const SERVICE_ATTRS: &[&str] = &["name", "port", "provider", "tags"];
const CHECK_ATTRS: &[&str] = &[
    "type", "name", "command", "args", "port", "path", "method", "protocol", "interval", "timeout",
];
/// The fields that belong to one type of check only, and that type.
const TYPED_FIELDS: &[(&str, &str)] = &[
    ("command", "script"),
    ("args", "script"),
    ("path", "http"),
    ("method", "http"),
    ("protocol", "http"),
];

/// Where a check names a port label, for the group to look the label up.
pub(super) struct PortRef {
    /// The label.
    pub(super) label: String,
    /// Where it is written.
    pub(super) at: usize,
    /// Its field path.
    pub(super) path: String,
}

/// Every check of the task body `v`, services' first, then bare ones.
pub(super) fn decode_checks(
    c: &mut Collector<'_>,
    v: &View<'_>,
    path: &str,
) -> (Vec<Check>, Vec<PortRef>) {
    let mut checks = Vec::new();
    let mut ports = Vec::new();
    for (i, sb) in v.blocks("service").into_iter().enumerate() {
        let spath = format!("{path}.service[{i}]");
        no_labels(c, sb, &spath);
        let sv = view(
            c,
            &sb.body,
            &spath,
            SERVICE_ATTRS,
            &["check", "check_restart"],
        );
        let name = sv
            .attr("name")
            .and_then(|a| string(c, &a.value, &sub(&spath, "name")));
        if let Some(a) = sv.attr("provider") {
            let p = sub(&spath, "provider");
            if let Some(s) = string(c, &a.value, &p) {
                if s != "nomad" {
                    c.error(
                        a.value.at,
                        &p,
                        format!("{s:?}: tend registers no service anywhere; \"nomad\" (its checks run by the agent) is the only provider"),
                    );
                }
            }
        }
        if let Some(a) = sv.attr("tags") {
            // Accepted as Nomad writes them; nothing reads them here.
            let _ = string_list(c, &a.value, &sub(&spath, "tags"));
        }
        let port = sv.attr("port").and_then(|a| {
            let p = sub(&spath, "port");
            string(c, &a.value, &p).map(|label| PortRef {
                label,
                at: a.value.at,
                path: p,
            })
        });
        let restart = sv
            .single_block(c, "check_restart", &spath)
            .map(|b| decode_check_restart(c, b, &sub(&spath, "check_restart")));
        let checks_of_service = sv.blocks("check");
        if checks_of_service.is_empty() {
            c.error(
                sb.at,
                &spath,
                "a service without a check does nothing here: tend registers no service, it only runs the checks; add check { ... } or remove the service",
            );
        }
        for (j, cb) in checks_of_service.into_iter().enumerate() {
            let default_name = name.as_ref().map(|n| format!("service: {n:?} check"));
            let cpath = format!("{spath}.check[{j}]");
            let (check, port_ref) =
                decode_check(c, cb, &cpath, default_name, port.as_ref(), restart);
            ports.extend(port_ref);
            checks.push((cb.at, cpath, check));
        }
    }
    for (j, cb) in v.blocks("check").into_iter().enumerate() {
        let cpath = format!("{path}.check[{j}]");
        let (check, port_ref) = decode_check(c, cb, &cpath, None, None, None);
        ports.extend(port_ref);
        checks.push((cb.at, cpath, check));
    }
    let mut names = HashSet::new();
    for (at, cpath, check) in &checks {
        if !names.insert(check.name.clone()) {
            c.error(
                *at,
                cpath,
                format!(
                    "two checks of the task are named {:?}: give each its own name = \"...\"",
                    check.name
                ),
            );
        }
    }
    (checks.into_iter().map(|(_, _, ch)| ch).collect(), ports)
}

fn decode_check(
    c: &mut Collector<'_>,
    b: &Block,
    path: &str,
    default_name: Option<String>,
    service_port: Option<&PortRef>,
    service_restart: Option<CheckRestart>,
) -> (Check, Option<PortRef>) {
    no_labels(c, b, path);
    let v = view(c, &b.body, path, CHECK_ATTRS, &["check_restart"]);
    let kind = v.attr("type").and_then(|a| {
        let p = sub(path, "type");
        let s = string(c, &a.value, &p)?;
        match s.as_str() {
            "script" | "tcp" | "http" => Some(s),
            other => {
                c.error(
                    a.value.at,
                    &p,
                    format!("unknown check type {other:?} (expected one of: script, tcp, http)"),
                );
                None
            }
        }
    });
    if v.attr("type").is_none() {
        c.error(
            b.at,
            path,
            "missing type: expected type = \"script\", \"tcp\" or \"http\"",
        );
    }
    let ty = kind.as_deref();
    for (field, of) in TYPED_FIELDS {
        if let (Some(a), Some(t)) = (v.attr(field), ty) {
            if t != *of {
                c.error(
                    a.at,
                    &sub(path, field),
                    format!("\"{field}\" is a field of {of} checks, not of {t} checks"),
                );
            }
        }
    }
    if let (Some(a), Some("script")) = (v.attr("port"), ty) {
        c.error(
            a.at,
            &sub(path, "port"),
            "\"port\" is a field of tcp and http checks: a script check runs inside the task",
        );
    }
    let name = match v.attr("name") {
        Some(a) => {
            let p = sub(path, "name");
            match string(c, &a.value, &p) {
                Some(s) if s.trim().is_empty() => {
                    c.error(a.value.at, &p, "must be a non-empty name");
                    String::new()
                }
                Some(s) => s,
                None => String::new(),
            }
        }
        None => default_name.unwrap_or_else(|| ty.unwrap_or("check").to_string()),
    };
    let interval = required_period(c, &v, b, path, "interval");
    let timeout = required_period(c, &v, b, path, "timeout");
    let check_restart = match v.single_block(c, "check_restart", path) {
        Some(rb) => Some(decode_check_restart(c, rb, &sub(path, "check_restart"))),
        None => service_restart,
    };
    let port_ref = match (ty, v.attr("port")) {
        (Some("tcp" | "http"), Some(a)) => {
            let p = sub(path, "port");
            string(c, &a.value, &p).map(|label| PortRef {
                label,
                at: a.value.at,
                path: p,
            })
        }
        (Some("tcp" | "http"), None) => match service_port {
            Some(sp) => Some(PortRef {
                label: sp.label.clone(),
                at: sp.at,
                path: sp.path.clone(),
            }),
            None => {
                c.error(
                    b.at,
                    path,
                    "missing port: a tcp or http check needs port = \"LABEL\" (a port of the task's or the group's network block), in the check or its service",
                );
                None
            }
        },
        _ => None,
    };
    let port = port_ref
        .as_ref()
        .map(|p| p.label.clone())
        .unwrap_or_default();
    let kind = match ty {
        Some("script") => {
            let command = v.attr("command").and_then(|a| {
                let p = sub(path, "command");
                let s = string(c, &a.value, &p)?;
                if s.trim().is_empty() || s.contains('\0') {
                    c.error(a.value.at, &p, "must be a non-empty program path or name");
                    return None;
                }
                Some(s)
            });
            if v.attr("command").is_none() {
                c.error(
                    b.at,
                    path,
                    "missing command: a script check needs command = \"/path/to/program\"",
                );
            }
            let args = v
                .attr("args")
                .and_then(|a| {
                    let p = sub(path, "args");
                    let l = string_list(c, &a.value, &p)?;
                    if l.iter().any(|s| s.contains('\0')) {
                        c.error(a.value.at, &p, "arguments must not contain NUL");
                        return None;
                    }
                    Some(l)
                })
                .unwrap_or_default();
            CheckKind::Script {
                command: command.unwrap_or_default(),
                args,
            }
        }
        Some("http") => {
            let check_path = match v.attr("path") {
                Some(a) => {
                    let p = sub(path, "path");
                    let s = string(c, &a.value, &p).unwrap_or_else(|| "/".into());
                    if !s.starts_with('/') || s.chars().any(|ch| ch.is_ascii_control() || ch == ' ')
                    {
                        c.error(
                            a.value.at,
                            &p,
                            format!("must be a URL path from \"/\" without spaces, got {s:?}"),
                        );
                    }
                    s
                }
                None => {
                    c.error(
                        b.at,
                        path,
                        "missing path: an http check needs path = \"/health\" (or \"/\")",
                    );
                    "/".into()
                }
            };
            let method = v
                .attr("method")
                .and_then(|a| {
                    let p = sub(path, "method");
                    let s = string(c, &a.value, &p)?;
                    if s.is_empty() || !s.bytes().all(|ch| ch.is_ascii_uppercase()) {
                        c.error(
                            a.value.at,
                            &p,
                            format!("must be an HTTP method in capitals such as \"GET\" or \"HEAD\", got {s:?}"),
                        );
                        return None;
                    }
                    Some(s)
                })
                .unwrap_or_else(|| "GET".into());
            if let Some(a) = v.attr("protocol") {
                let p = sub(path, "protocol");
                match string(c, &a.value, &p).as_deref() {
                    Some("http") | None => {}
                    Some("https") => c.error(
                        a.value.at,
                        &p,
                        "\"https\": tend's http checks speak plain HTTP only; check a plain port, or use a script check",
                    ),
                    Some(other) => c.error(
                        a.value.at,
                        &p,
                        format!("must be \"http\", got {other:?}"),
                    ),
                }
            }
            CheckKind::Http {
                port,
                path: check_path,
                method,
            }
        }
        _ => CheckKind::Tcp { port },
    };
    (
        Check {
            name,
            kind,
            interval,
            timeout,
            check_restart,
        },
        port_ref,
    )
}

/// `interval` or `timeout`: required, at least [`MIN_CHECK_PERIOD`].
fn required_period(
    c: &mut Collector<'_>,
    v: &View<'_>,
    b: &Block,
    path: &str,
    field: &str,
) -> Duration {
    let Some(a) = v.attr(field) else {
        c.error(
            b.at,
            path,
            format!("missing {field}: a check needs {field} = \"10s\" (at least 1s)"),
        );
        return MIN_CHECK_PERIOD;
    };
    let p = sub(path, field);
    match duration(c, &a.value, &p) {
        Some(d) if d < MIN_CHECK_PERIOD => {
            c.error(
                a.value.at,
                &p,
                format!(
                    "must be at least 1s, got {}",
                    crate::jobspec::duration::format_duration(d)
                ),
            );
            MIN_CHECK_PERIOD
        }
        Some(d) => d,
        None => MIN_CHECK_PERIOD,
    }
}

fn decode_check_restart(c: &mut Collector<'_>, b: &Block, path: &str) -> CheckRestart {
    no_labels(c, b, path);
    let v = view(
        c,
        &b.body,
        path,
        &["limit", "grace", "ignore_warnings"],
        &[],
    );
    let mut r = CheckRestart::default();
    if let Some(a) = v.attr("limit") {
        if let Some(n) = int_in(
            c,
            &a.value,
            &sub(path, "limit"),
            0,
            i64::from(u32::MAX),
            "an integer >= 0 (0: never restart)",
        ) {
            r.limit = u32::try_from(n).unwrap_or(0);
        }
    }
    if let Some(a) = v.attr("grace") {
        r.grace = duration(c, &a.value, &sub(path, "grace")).unwrap_or(r.grace);
    }
    if let Some(a) = v.attr("ignore_warnings") {
        r.ignore_warnings = boolean(c, &a.value, &sub(path, "ignore_warnings")).unwrap_or(false);
    }
    r
}

#[cfg(test)]
mod tests;
