//! A command in a running container through the engine's exec API, its
//! output read here: what a script health check of a docker task runs.

use bollard::exec::{CreateExecOptions, StartExecResults};
use futures_util::StreamExt;

use super::{DockerDriver, DockerError};

impl DockerDriver {
    /// Run `argv` in the running container `id`, as its user, in its env and
    /// working dir: its exit code and the first `limit` bytes of its stdout
    /// and stderr together. The engine offers no way to kill an exec: one
    /// that is given up on runs on until it ends or its container does.
    pub async fn exec_output(
        &self,
        id: &str,
        argv: Vec<String>,
        limit: usize,
    ) -> Result<(i64, Vec<u8>), DockerError> {
        let docker = self.engine().await?;
        let opts = CreateExecOptions {
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            cmd: Some(argv),
            ..Default::default()
        };
        let exec = docker
            .create_exec(id, opts)
            .await
            .map_err(|e| DockerError::engine("create exec in container", id, e))?;
        let started = docker
            .start_exec(&exec.id, None)
            .await
            .map_err(|e| DockerError::engine("start exec in container", id, e))?;
        let mut out = Vec::new();
        if let StartExecResults::Attached { mut output, .. } = started {
            while let Some(chunk) = output.next().await {
                let Ok(chunk) = chunk else { break };
                let bytes = chunk.into_bytes();
                let room = limit.saturating_sub(out.len());
                out.extend_from_slice(&bytes[..bytes.len().min(room)]);
            }
        }
        let done = docker
            .inspect_exec(&exec.id)
            .await
            .map_err(|e| DockerError::engine("inspect exec in container", id, e))?;
        // No code once the stream has ended means the engine lost it: not a pass.
        Ok((done.exit_code.unwrap_or(-1), out))
    }
}
