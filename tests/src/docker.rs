//! The docker engine of the tests: the one `.ci/docker-up` starts, at
//! `$TEND_TEST_DOCKER_SOCK` (default `/run/tend-test-docker.sock`), with the
//! image [`TEST_IMAGE`] imported offline. A test that needs it starts with
//! [`require_docker!`](crate::require_docker): without the engine it prints
//! "skipped: no docker engine ..." and returns, and under `CI=true` it fails.

use std::path::PathBuf;
use std::process::Command;

/// The image every docker test runs.
pub const TEST_IMAGE: &str = "tend-test/busybox:latest";

/// The test engine's socket.
pub fn socket() -> PathBuf {
    std::env::var_os("TEND_TEST_DOCKER_SOCK")
        .filter(|s| !s.is_empty())
        .map_or_else(
            || PathBuf::from("/run/tend-test-docker.sock"),
            PathBuf::from,
        )
}

/// `docker ARGS` against the test engine: its stdout when it succeeds.
pub fn cli(args: &[&str]) -> Option<String> {
    let host = format!("unix://{}", socket().display());
    let out = Command::new("/usr/bin/docker")
        .args(["-H", &host])
        .args(args)
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Whether the test engine answers and holds [`TEST_IMAGE`]; when not, the
/// test is skipped (see [`crate::skip_or_fail`]).
pub fn engine_ready() -> bool {
    if cli(&["image", "inspect", TEST_IMAGE]).is_some() {
        return true;
    }
    crate::skip_or_fail(&format!(
        "no docker engine at {} with {TEST_IMAGE} (run .ci/docker-up)",
        socket().display()
    ));
    false
}

/// Return from the calling test (with the value given, if any) unless the
/// test engine is up: prints "skipped: no docker engine ..." as
/// [`crate::require_root!`] does, and fails under `CI=true`.
#[macro_export]
macro_rules! require_docker {
    () => {
        $crate::require_docker!(())
    };
    ($ret:expr) => {
        if !$crate::docker::engine_ready() {
            return $ret;
        }
    };
}
