//! `tend job init [FILE]`: writes a commented example job file, as `nomad job
//! init` writes `example.nomad`. It runs as it is, with raw_exec and `/bin/sh`.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};

/// The file written when no name is given.
pub const DEFAULT_FILE_NAME: &str = "example.tend.hcl";

/// The example job.
pub const EXAMPLE_JOB: &str = r##"# An example tend job. tend job files have the shape of Nomad's jobspec.
#
#   tend validate example.tend.hcl   checks it and shows what would run
#   tend run example.tend.hcl        runs it
#
# The same document is accepted as JSON (HCL's JSON syntax).

# One job per file. Its name appears in TEND_JOB_NAME and in allocation names.
job "example" {
  # Free-form key/values, exported to every task as TEND_META_<key>
  # (task meta wins over group meta, which wins over job meta).
  meta {
    owner = "me"
  }

  # A group is what one allocation runs: its tasks share one alloc dir
  # ($TEND_ALLOC_DIR).
  group "hello" {
    # How many allocations of this group run.
    count = 1

    # What happens when a task fails: up to `attempts` restarts within
    # `interval`, `delay` apart; then "fail", or "delay" until the interval ends.
    restart {
      attempts = 2
      interval = "30m"
      delay    = "15s"
      mode     = "fail"
    }

    task "greet" {
      # raw_exec: no isolation. exec: cgroup limits, a chroot and an
      # unprivileged user. docker: a container.
      driver = "raw_exec"

      config {
        command = "/bin/sh"
        # ${NAME} is replaced from the task environment before the start,
        # each argument on its own: a value with spaces stays one argument.
        # $NAME (no braces) is left to the shell. Write $${ for a literal ${.
        args = [
          "-c",
          "echo \"$GREETING from ${TEND_TASK_NAME} (${TEND_ALLOC_NAME}), port ${TEND_PORT_http}, owner ${TEND_META_owner}\"",
        ]
      }

      # The task's own environment. Nothing of the agent's environment is
      # passed on, except names on the agent's allow-list asked for here,
      # like PATH = "${PATH}".
      env {
        GREETING = "hello"
      }

      resources {
        cpu    = 100 # MHz, TEND_CPU_LIMIT
        memory = 64  # MB, TEND_MEMORY_LIMIT

        network {
          # A dynamic port: TEND_PORT_http, TEND_IP_http, TEND_ADDR_http.
          # Use static = 8080 for a fixed one, to = 80 to map it into a container.
          port "http" {}
        }
      }

      # stdout and stderr go to <alloc dir>/logs/greet.stdout and .stderr,
      # rotated at max_file_size MB, max_files kept.
      logs {
        max_files     = 10
        max_file_size = 10
      }

      # How the task is stopped: kill_signal, then SIGKILL after kill_timeout.
      kill_signal  = "SIGTERM"
      kill_timeout = "5s"

      # Health checks run while the task runs: "tcp" or "http" to a port
      # label, or "script" inside the task; tend status shows their state.
      # check_restart { limit = 3 } restarts the task after 3 unhealthy
      # results in a row. (This task exits at once, so none is set here.)
      # check {
      #   type     = "http"
      #   port     = "http"
      #   path     = "/"
      #   interval = "10s"
      #   timeout  = "2s"
      # }
    }
  }
}
"##;

/// Why the example could not be written.
#[derive(Debug, thiserror::Error)]
pub enum JobInitError {
    /// The file is there already; it is never overwritten.
    #[error("{path} already exists, not overwriting it")]
    Exists {
        /// The file.
        path: PathBuf,
    },
    /// Creating or writing the file failed.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// Writes [`EXAMPLE_JOB`] to `path` (default [`DEFAULT_FILE_NAME`] in the
/// current directory), refusing to replace an existing file, and tells `out`
/// where it went. Returns the path written.
pub fn run_job_init(path: Option<&Path>, out: &mut dyn Write) -> Result<PathBuf, JobInitError> {
    let path = path.map_or_else(|| PathBuf::from(DEFAULT_FILE_NAME), Path::to_path_buf);
    let werr = |source| JobInitError::Write {
        path: path.clone(),
        source,
    };
    // create_new: the existence check and the creation are one step.
    let mut file = match OpenOptions::new().write(true).create_new(true).open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            return Err(JobInitError::Exists { path });
        }
        Err(e) => return Err(werr(e)),
    };
    file.write_all(EXAMPLE_JOB.as_bytes()).map_err(werr)?;
    file.sync_all().map_err(werr)?;
    writeln!(out, "Example job file written to {}", path.display()).map_err(werr)?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::net::{IpAddr, Ipv4Addr};

    use super::*;
    use crate::jobspec::{parse_file, parse_str, Driver};
    use crate::ports::AssignedPort;
    use crate::taskenv::{prepare_command, TaskEnvInputs};

    #[test]
    fn example_validates() {
        let job = parse_str(EXAMPLE_JOB, DEFAULT_FILE_NAME).unwrap_or_else(|d| panic!("{d}"));
        assert_eq!(job.name, "example");
        assert_eq!(job.groups[0].tasks[0].driver, Driver::RawExec);
    }

    #[test]
    fn writes_once_and_refuses_to_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join(DEFAULT_FILE_NAME);
        let mut out = Vec::new();
        assert_eq!(run_job_init(Some(&p), &mut out).unwrap(), p);
        assert!(String::from_utf8(out)
            .unwrap()
            .starts_with("Example job file written to "));
        assert!(parse_file(&p).is_ok());
        std::fs::write(&p, "mine").unwrap();
        let err = run_job_init(Some(&p), &mut Vec::new()).unwrap_err();
        assert!(matches!(err, JobInitError::Exists { .. }), "{err}");
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "mine");
    }

    /// The example runs as it is: its command, with its environment and
    /// nothing else, exits 0 and prints the interpolated greeting.
    #[test]
    fn example_runs_with_raw_exec() {
        let job = parse_str(EXAMPLE_JOB, DEFAULT_FILE_NAME).unwrap();
        let g = &job.groups[0];
        let t = &g.tasks[0];
        let dir = tempfile::tempdir().unwrap();
        let ports = [AssignedPort {
            label: "http".into(),
            host_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            host_port: 20000,
            to: None,
        }];
        let (alloc_dir, task_dir) = (dir.path().join("alloc"), dir.path().join("greet/local"));
        let empty = BTreeMap::new();
        let inputs = TaskEnvInputs {
            alloc_id: "a1",
            job: &job.name,
            group: &g.name,
            index: 0,
            task: &t.name,
            driver: t.driver,
            host_alloc_dir: &alloc_dir,
            host_task_dir: &task_dir,
            resources: &t.resources,
            ports: &ports,
            job_meta: &job.meta,
            group_meta: &g.meta,
            task_meta: &t.meta,
            task_env: &t.env,
            env_allow_list: &[],
            agent_env: &empty,
        };
        let env = inputs.build();
        let cmd = prepare_command(t.driver, &t.config, &inputs.interpolation_vars(&env)).unwrap();
        let output = std::process::Command::new(cmd.command.unwrap())
            .args(&cmd.args)
            .env_clear()
            .envs(env)
            .output()
            .unwrap();
        assert!(output.status.success(), "{output:?}");
        assert_eq!(
            String::from_utf8(output.stdout).unwrap(),
            "hello from greet (example.hello[0]), port 20000, owner me\n"
        );
    }
}
