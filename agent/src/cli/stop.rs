//! `tend stop ALLOC`: stop every task of an allocation and wait until they are
//! dead (`--detach`: return once the stop is asked for).

use std::io::Write;

use serde_json::Value;

use super::client::{enc, ApiClient};

/// Run `tend stop`. Exits 0 once every task is dead; a stop the agent could
/// not carry out in time is an error that names each task still alive.
pub async fn run(
    client: &ApiClient,
    alloc: &str,
    detach: bool,
    json: bool,
    out: &mut dyn Write,
) -> anyhow::Result<i32> {
    let wait = if detach { "false" } else { "true" };
    let v = client
        .call(
            "POST",
            &format!("/v1/allocations/{}/stop?wait={wait}", enc(alloc)),
            b"",
            "application/json",
        )
        .await?;
    if json {
        writeln!(out, "{}", serde_json::to_string_pretty(&v)?)?;
        return Ok(0);
    }
    let id = v["id"].as_str().unwrap_or(alloc);
    if detach {
        writeln!(out, "stopping allocation {id}")?;
        return Ok(0);
    }
    let tasks: Vec<String> = v["tasks"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|t| format!("{} {}", name(t), end(t)))
        .collect();
    writeln!(
        out,
        "allocation {id} stopped ({}): {}",
        v["status"].as_str().unwrap_or("?"),
        tasks.join(", ")
    )?;
    Ok(0)
}

fn name(t: &Value) -> &str {
    t["name"].as_str().unwrap_or("?")
}

/// How a task ended, in a few words.
fn end(t: &Value) -> String {
    let e = &t["exit"];
    let how = if let Some(c) = e["exit_code"].as_i64() {
        format!("code {c}")
    } else if let Some(s) = e["signal"].as_i64() {
        format!("signal {s}")
    } else {
        "before it ran".to_string()
    };
    if t["lost"].as_bool() == Some(true) {
        "lost".to_string()
    } else if t["stopped"].as_bool() == Some(true) {
        format!("stopped ({how})")
    } else if t["failed"].as_bool() == Some(true) {
        format!("failed ({how})")
    } else {
        format!("complete ({how})")
    }
}
