//! Jobs by name: `tend job list`, `tend job purge JOB`, `tend gc`, and the
//! lookup `tend status JOB` and `tend stop JOB` fall back to when their
//! argument is no allocation.

use std::io::Write;

use serde_json::Value;

use super::client::{enc, table, ApiClient, ApiError};
use crate::api::wire::Collected;

/// Whether `prefix` names an allocation (an id or unique prefix). An
/// ambiguous prefix is an error, as everywhere.
pub async fn is_alloc(client: &ApiClient, prefix: &str) -> anyhow::Result<bool> {
    match client
        .get(&format!("/v1/allocations/{}", enc(prefix)))
        .await
    {
        Ok(_) => Ok(true),
        Err(ApiError::Refused { status: 404, .. }) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Every allocation of the job `name`, oldest first.
pub async fn allocs_of_job(client: &ApiClient, name: &str) -> anyhow::Result<Vec<Value>> {
    let v = client.get("/v1/allocations").await?;
    let mut of: Vec<Value> = v["allocations"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|a| a["job"] == name)
        .cloned()
        .collect();
    of.sort_by(|a, b| a["created_at"].as_str().cmp(&b["created_at"].as_str()));
    Ok(of)
}

/// `tend job list`: each job with its allocations by status.
pub async fn list(client: &ApiClient, json: bool, out: &mut dyn Write) -> anyhow::Result<i32> {
    let v = client.get("/v1/allocations").await?;
    let mut jobs: std::collections::BTreeMap<
        String,
        (usize, std::collections::BTreeMap<String, usize>),
    > = Default::default();
    for a in v["allocations"].as_array().into_iter().flatten() {
        let job = a["job"].as_str().unwrap_or("?").to_string();
        let status = a["status"].as_str().unwrap_or("?").to_string();
        let e = jobs.entry(job).or_default();
        e.0 += 1;
        *e.1.entry(status).or_default() += 1;
    }
    if json {
        let list: Vec<Value> = jobs
            .iter()
            .map(|(name, (n, by))| serde_json::json!({"name": name, "allocations": n, "by_status": by}))
            .collect();
        writeln!(
            out,
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({ "jobs": list }))?
        )?;
        return Ok(0);
    }
    let mut rows = vec![vec!["JOB".to_string(), "ALLOCS".into(), "STATUS".into()]];
    for (name, (n, by)) in &jobs {
        let by: Vec<String> = by.iter().map(|(s, c)| format!("{s}={c}")).collect();
        rows.push(vec![name.clone(), n.to_string(), by.join(",")]);
    }
    write!(out, "{}", table(&rows))?;
    Ok(0)
}

/// `tend gc`: remove every dead allocation now (of `job` only, if given).
pub async fn gc(
    client: &ApiClient,
    job: Option<&str>,
    json: bool,
    out: &mut dyn Write,
) -> anyhow::Result<i32> {
    let target = match job {
        Some(j) => format!("/v1/gc?job={}", enc(j)),
        None => "/v1/gc".to_string(),
    };
    let c: Collected = client
        .call_as("POST", &target, b"", "application/json")
        .await?;
    if json {
        writeln!(out, "{}", serde_json::to_string_pretty(&c)?)?;
    } else if c.collected.is_empty() {
        writeln!(out, "no dead allocation to remove")?;
    } else {
        for id in &c.collected {
            writeln!(out, "removed allocation {id}")?;
        }
    }
    Ok(0)
}

/// `tend job purge JOB`: stop every allocation of the job, wait until their
/// tasks are dead, then remove them (records, dirs, logs).
pub async fn purge(
    client: &ApiClient,
    name: &str,
    json: bool,
    out: &mut dyn Write,
) -> anyhow::Result<i32> {
    let allocs = allocs_of_job(client, name).await?;
    if allocs.is_empty() {
        anyhow::bail!("no job {name:?}");
    }
    for a in &allocs {
        let id = a["id"].as_str().unwrap_or_default();
        if a["status"] != "complete" && a["status"] != "failed" && a["status"] != "lost" {
            super::stop::run(client, id, false, false, &mut std::io::sink()).await?;
        }
    }
    gc(client, Some(name), json, out).await
}

/// `tend stop X`: the allocation X, or else every allocation of the job X
/// that is not already over (each waited for, unless `detach`).
pub async fn stop(
    client: &ApiClient,
    what: &str,
    detach: bool,
    json: bool,
    out: &mut dyn Write,
) -> anyhow::Result<i32> {
    if is_alloc(client, what).await? {
        return super::stop::run(client, what, detach, json, out).await;
    }
    let allocs = allocs_of_job(client, what).await?;
    if allocs.is_empty() {
        anyhow::bail!("no allocation or job {what:?}");
    }
    let mut code = 0;
    for a in allocs
        .iter()
        .filter(|a| a["status"] == "running" || a["status"] == "pending")
    {
        let id = a["id"].as_str().unwrap_or_default();
        code = code.max(super::stop::run(client, id, detach, json, out).await?);
    }
    Ok(code)
}
