//! `tend status [ALLOC]`: allocations and their tasks, as a table or JSON.

use std::io::Write;

use serde_json::Value;

use super::client::{enc, table, ApiClient};
use crate::outcome::oom_note;

fn s(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn short(id: &str) -> String {
    id.chars().take(8).collect()
}

/// Describe a task's last exit in a few words.
fn exit_words(t: &Value) -> String {
    if t["lost"].as_bool() == Some(true) {
        return "lost".into();
    }
    if t["stopped"].as_bool() == Some(true) {
        let how = exit_code_words(t);
        return if how == "-" {
            "stopped".into()
        } else {
            format!("stopped ({how})")
        };
    }
    exit_code_words(t)
}

/// A task's state, with what a person must know beside it.
fn state_words(t: &Value) -> String {
    match t["unreachable"].as_str() {
        Some(_) => format!("{} (tend-spawn unreachable)", s(&t["state"])),
        None => s(&t["state"]),
    }
}

/// The code or signal of a task's last exit.
fn exit_code_words(t: &Value) -> String {
    let e = &t["exit"];
    if e.is_null() {
        return "-".into();
    }
    if let Some(c) = e["exit_code"].as_i64() {
        return format!("code {c}");
    }
    if let Some(sig) = e["signal"].as_i64() {
        let oom = if e["oom_killed"].as_bool() == Some(true) {
            ", oom"
        } else {
            ""
        };
        return format!("signal {sig}{oom}");
    }
    e["error"]
        .as_str()
        .map_or("-".into(), |m| format!("error: {m}"))
}

/// "http 127.0.0.1:23456 (to 80)" for each port given to a task.
fn port_words(ports: &Value) -> Vec<String> {
    ports
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            let ip = s(&p["host_ip"]);
            let addr = if ip.contains(':') {
                format!("[{ip}]:{}", s(&p["host_port"]))
            } else {
                format!("{ip}:{}", s(&p["host_port"]))
            };
            match p["to"].as_u64() {
                Some(to) => format!("{} {addr} (to {to})", s(&p["label"])),
                None => format!("{} {addr}", s(&p["label"])),
            }
        })
        .collect()
}

/// Allocations as the table of `tend status`, or their JSON.
/// A task's health checks: state, when, and the last output's first line
/// (`--json` has it whole).
fn print_checks(t: &Value, out: &mut dyn Write) -> anyhow::Result<()> {
    let checks = t["checks"].as_array().cloned().unwrap_or_default();
    if checks.is_empty() {
        return Ok(());
    }
    writeln!(out, "\nChecks of {}:", s(&t["name"]))?;
    let mut rows = vec![vec![
        "NAME".to_string(),
        "TYPE".into(),
        "STATUS".into(),
        "TIME".into(),
        "OUTPUT".into(),
    ]];
    for c in &checks {
        let output = c["output"].as_str().unwrap_or("");
        let mut line = output.lines().next().unwrap_or("").to_string();
        if line.chars().count() > 100 {
            line = line.chars().take(99).collect::<String>() + "…";
        }
        rows.push(vec![
            s(&c["name"]),
            s(&c["type"]),
            s(&c["status"]),
            s(&c["time"]),
            line,
        ]);
    }
    write!(out, "{}", table(&rows))?;
    Ok(())
}

fn print_list(allocs: &[Value], json: bool, out: &mut dyn Write) -> anyhow::Result<i32> {
    if json {
        let v = serde_json::json!({ "allocations": allocs });
        writeln!(out, "{}", serde_json::to_string_pretty(&v)?)?;
        return Ok(0);
    }
    let mut rows = vec![vec![
        "ID".to_string(),
        "NAME".into(),
        "STATUS".into(),
        "DESIRED".into(),
        "TASKS".into(),
        "CREATED".into(),
    ]];
    for a in allocs {
        let tasks: Vec<String> = a["tasks"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|t| format!("{}={}", s(&t["name"]), s(&t["state"])))
            .collect();
        rows.push(vec![
            short(a["id"].as_str().unwrap_or("")),
            s(&a["name"]),
            s(&a["status"]),
            s(&a["desired"]),
            tasks.join(","),
            s(&a["created_at"]),
        ]);
    }
    write!(out, "{}", table(&rows))?;
    Ok(0)
}

/// Run `tend status`.
pub async fn run(
    client: &ApiClient,
    alloc: Option<&str>,
    json: bool,
    out: &mut dyn Write,
) -> anyhow::Result<i32> {
    match alloc {
        None => {
            let v = client.get("/v1/allocations").await?;
            let all: Vec<Value> = v["allocations"].as_array().cloned().unwrap_or_default();
            print_list(&all, json, out)
        }
        // An allocation id or prefix first; else a job's name: its allocations.
        Some(prefix) if !super::jobs::is_alloc(client, prefix).await? => {
            let of_job = super::jobs::allocs_of_job(client, prefix).await?;
            if of_job.is_empty() {
                anyhow::bail!("no allocation or job {prefix:?}");
            }
            print_list(&of_job, json, out)
        }
        Some(prefix) => {
            let a = client
                .get(&format!("/v1/allocations/{}", enc(prefix)))
                .await?;
            if json {
                writeln!(out, "{}", serde_json::to_string_pretty(&a)?)?;
                return Ok(0);
            }
            writeln!(out, "ID       = {}", s(&a["id"]))?;
            writeln!(out, "Name     = {}", s(&a["name"]))?;
            writeln!(out, "Status   = {}", s(&a["status"]))?;
            writeln!(out, "Desired  = {}", s(&a["desired"]))?;
            writeln!(out, "Created  = {}", s(&a["created_at"]))?;
            writeln!(out, "Dir      = {}", s(&a["dir"]))?;
            if let Some(c) = a["adopted"].as_str() {
                writeln!(out, "Adopted  = container {c} (tend-spawn oci)")?;
            }
            writeln!(out)?;
            let mut rows = vec![vec![
                "TASK".to_string(),
                "DRIVER".into(),
                "STATE".into(),
                "RUN".into(),
                "RESTARTS".into(),
                "PID".into(),
                "EXIT".into(),
                "STARTED".into(),
                "FINISHED".into(),
            ]];
            let tasks = a["tasks"].as_array().cloned().unwrap_or_default();
            for t in &tasks {
                rows.push(vec![
                    s(&t["name"]),
                    s(&t["driver"]),
                    state_words(t),
                    s(&t["run"]),
                    s(&t["restarts"]),
                    s(&t["pid"]),
                    exit_words(t),
                    s(&t["started_at"]),
                    s(&t["finished_at"]),
                ]);
            }
            write!(out, "{}", table(&rows))?;
            for t in &tasks {
                if let Some(why) = t["unreachable"].as_str() {
                    writeln!(
                        out,
                        "\n{}: its tend-spawn lives but does not answer ({why}); the agent keeps trying",
                        s(&t["name"])
                    )?;
                }
                if let Some(note) = oom_note(t["exit"]["oom_kills"].as_u64().unwrap_or(0)) {
                    writeln!(out, "{}: {note}", s(&t["name"]))?;
                }
            }
            let ports: Vec<(String, Vec<String>)> = a["ports"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(task, p)| (task.clone(), port_words(p)))
                .filter(|(_, p)| !p.is_empty())
                .collect();
            if !ports.is_empty() {
                writeln!(out, "\nPorts:")?;
                for (task, p) in ports {
                    writeln!(out, "  {task}: {}", p.join(", "))?;
                }
            }
            for t in &tasks {
                print_checks(t, out)?;
            }
            for t in &tasks {
                writeln!(out, "\nRecent events of {}:", s(&t["name"]))?;
                let mut rows = vec![vec!["TIME".to_string(), "KIND".into(), "MESSAGE".into()]];
                for e in t["events"].as_array().into_iter().flatten() {
                    rows.push(vec![s(&e["time"]), s(&e["kind"]), s(&e["message"])]);
                }
                write!(out, "{}", table(&rows))?;
            }
            Ok(0)
        }
    }
}
