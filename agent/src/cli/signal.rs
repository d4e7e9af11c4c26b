//! `tend signal ALLOC TASK SIGNAL`: send a signal to a running task.

use std::io::Write;

use super::client::{enc, ApiClient};

/// Run `tend signal`.
pub async fn run(
    client: &ApiClient,
    alloc: &str,
    task: &str,
    signal: &str,
    json: bool,
    out: &mut dyn Write,
) -> anyhow::Result<i32> {
    let body = serde_json::json!({ "signal": signal }).to_string();
    let v = client
        .call(
            "POST",
            &format!("/v1/allocations/{}/tasks/{}/signal", enc(alloc), enc(task)),
            body.as_bytes(),
            "application/json",
        )
        .await?;
    if json {
        writeln!(out, "{}", serde_json::to_string_pretty(&v)?)?;
    } else {
        writeln!(
            out,
            "sent signal {} to {task} of {}",
            v["signal"],
            v["id"].as_str().unwrap_or(alloc)
        )?;
    }
    Ok(0)
}
