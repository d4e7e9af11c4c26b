//! What `tend run` does after a submit, as `nomad job run` monitors its
//! deployment: it prints each task's events as they come, until every task
//! of the new allocations has started (or ended for good), then a summary
//! line per task. Exit 0 when every task runs or completed, 1 when one
//! failed to start or failed for good. Ctrl-C leaves: the tasks go on.

use std::collections::BTreeMap;
use std::io::Write;
use std::time::Duration;

use super::client::{enc, ApiClient};
use crate::api::wire::{AllocView, TaskView};
use crate::state::TaskPhase;

/// How often the allocations are looked at.
const POLL: Duration = Duration::from_millis(100);

/// Whether a task has got where the monitor waits for: it has started
/// once, or it ended for good without.
fn settled(t: &TaskView) -> bool {
    t.run >= 1 && t.state != TaskPhase::Pending || t.state == TaskPhase::Dead
}

/// Whether a settled task is a failure to report with exit status 1.
fn failed(t: &TaskView) -> bool {
    t.state == TaskPhase::Dead && (t.failed || t.lost || t.run == 0)
}

/// Monitor the allocations `ids` until all their tasks settle.
pub async fn monitor(
    client: &ApiClient,
    ids: &[String],
    out: &mut dyn Write,
) -> anyhow::Result<i32> {
    // Events already printed, per (alloc, task): how many of its kept ones,
    // and the time of the last (the kept list is bounded, so a count alone
    // would not do).
    let mut seen: BTreeMap<(String, String), String> = BTreeMap::new();
    loop {
        let mut views = Vec::new();
        for id in ids {
            let v: AllocView = client
                .call_as(
                    "GET",
                    &format!("/v1/allocations/{}", enc(id)),
                    b"",
                    "application/json",
                )
                .await?;
            views.push(v);
        }
        for v in &views {
            let short: String = v.id.chars().take(8).collect();
            for t in &v.tasks {
                let key = (v.id.clone(), t.name.clone());
                let last = seen.get(&key).cloned().unwrap_or_default();
                for e in t.events.iter().flatten().filter(|e| e.time > last) {
                    writeln!(out, "==> {short} {}: {} {}", t.name, e.kind, e.message)?;
                    seen.insert(key.clone(), e.time.clone());
                }
            }
        }
        out.flush()?;
        if views.iter().all(|v| v.tasks.iter().all(settled)) {
            let mut code = 0;
            for v in &views {
                let short: String = v.id.chars().take(8).collect();
                for t in &v.tasks {
                    let now = match (t.state, failed(t)) {
                        (_, true) => {
                            code = 1;
                            "failed"
                        }
                        (TaskPhase::Dead, false) => "completed",
                        _ => "running",
                    };
                    writeln!(out, "==> {short} {}: {now}", t.name)?;
                }
            }
            return Ok(code);
        }
        tokio::time::sleep(POLL).await;
    }
}
