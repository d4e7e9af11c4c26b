//! `tend logs [-f] [--stderr] ALLOC TASK`: a task's log, from the agent.

use std::io::Write;

use super::client::{enc, ApiClient};

/// Run `tend logs`.
pub async fn run(
    client: &ApiClient,
    alloc: &str,
    task: &str,
    follow: bool,
    stderr: bool,
    offset: u64,
    out: &mut dyn Write,
) -> anyhow::Result<i32> {
    let target = format!(
        "/v1/allocations/{}/tasks/{}/logs?stream={}&offset={offset}&follow={follow}",
        enc(alloc),
        enc(task),
        if stderr { "stderr" } else { "stdout" }
    );
    let mut body = client.stream(&target).await?;
    while let Some(part) = body.next().await? {
        out.write_all(&part)?;
        out.flush()?;
    }
    Ok(0)
}
