//! `tend stop ALLOC`: stop every task of an allocation and wait until they are
//! dead (`--detach`: return once the stop is asked for).

use std::io::Write;

use super::client::{enc, ApiClient};
use crate::api::wire::{self, AllocView, StopAccepted, TaskView};

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
    let target = format!("/v1/allocations/{}/stop?wait={wait}", enc(alloc));
    if detach {
        let stop: StopAccepted = client
            .call_as("POST", &target, b"", "application/json")
            .await?;
        if json {
            out.write_all(&wire::to_json(&stop))?;
        } else {
            writeln!(out, "stopping allocation {}", stop.id)?;
        }
        return Ok(0);
    }
    let stopped: AllocView = client
        .call_as("POST", &target, b"", "application/json")
        .await?;
    if json {
        out.write_all(&wire::to_json(&stopped))?;
        return Ok(0);
    }
    let tasks: Vec<String> = stopped
        .tasks
        .iter()
        .map(|t| format!("{} {}", t.name, end(t)))
        .collect();
    writeln!(
        out,
        "allocation {} stopped ({}): {}",
        stopped.id,
        stopped.status,
        tasks.join(", ")
    )?;
    Ok(0)
}

/// How a task ended, in a few words.
fn end(t: &TaskView) -> String {
    let e = t.exit.as_ref();
    let how = if let Some(c) = e.and_then(|e| e.exit_code) {
        format!("code {c}")
    } else if let Some(s) = e.and_then(|e| e.signal) {
        format!("signal {s}")
    } else {
        "before it ran".to_string()
    };
    if t.lost {
        "lost".to_string()
    } else if t.stopped {
        format!("stopped ({how})")
    } else if t.failed {
        format!("failed ({how})")
    } else {
        format!("complete ({how})")
    }
}
