//! `tend stop ALLOC`: stop every task of an allocation.

use std::io::Write;

use super::client::{enc, ApiClient};

/// Run `tend stop`.
pub async fn run(
    client: &ApiClient,
    alloc: &str,
    json: bool,
    out: &mut dyn Write,
) -> anyhow::Result<i32> {
    let v = client
        .call(
            "POST",
            &format!("/v1/allocations/{}/stop", enc(alloc)),
            b"",
            "application/json",
        )
        .await?;
    if json {
        writeln!(out, "{}", serde_json::to_string_pretty(&v)?)?;
    } else {
        writeln!(
            out,
            "stopping allocation {}",
            v["id"].as_str().unwrap_or(alloc)
        )?;
    }
    Ok(0)
}
