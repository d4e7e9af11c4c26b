//! `tend adopt [--root DIR] [--job NAME] ID`: take up a running container of
//! `tend-oci` as an allocation of the agent.

use std::io::Write;
use std::path::PathBuf;

use super::client::ApiClient;
use crate::api::wire::{self, AdoptBody, Adopted};

/// Run `tend adopt`.
pub async fn run(
    client: &ApiClient,
    root: PathBuf,
    id: &str,
    job: Option<String>,
    json: bool,
    out: &mut dyn Write,
) -> anyhow::Result<i32> {
    // The agent checks the path it is given: make it the one meant here.
    let root = std::path::absolute(&root)?;
    let body = AdoptBody {
        root,
        id: id.to_string(),
        job,
    };
    let adopted: Adopted = client
        .call_as(
            "POST",
            "/v1/adopt",
            &serde_json::to_vec(&body)?,
            "application/json",
        )
        .await?;
    if json {
        out.write_all(&wire::to_json(&adopted))?;
    } else {
        writeln!(
            out,
            "adopted container {id} as allocation {} (logs and exit file stay in {})",
            adopted.id,
            adopted.container_dir.display()
        )?;
    }
    Ok(0)
}
