//! `tend signal ALLOC TASK SIGNAL`: send a signal to a running task.

use std::io::Write;

use super::client::{enc, ApiClient};
use crate::api::wire::{SignalName, SignalRequest, SignalSent};

/// Run `tend signal`.
pub async fn run(
    client: &ApiClient,
    alloc: &str,
    task: &str,
    signal: &str,
    json: bool,
    out: &mut dyn Write,
) -> anyhow::Result<i32> {
    let body = SignalRequest {
        signal: SignalName::Name(signal.to_string()),
    };
    let sent: SignalSent = client
        .call_as(
            "POST",
            &format!("/v1/allocations/{}/tasks/{}/signal", enc(alloc), enc(task)),
            &serde_json::to_vec(&body)?,
            "application/json",
        )
        .await?;
    if json {
        writeln!(out, "{}", serde_json::to_string_pretty(&sent)?)?;
    } else {
        writeln!(out, "sent signal {} to {task} of {}", sent.signal, sent.id)?;
    }
    Ok(0)
}
