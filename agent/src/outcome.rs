//! How a run ended, in the words the agent records and the CLI prints, and as
//! the code a shell would report: below both, so that neither reaches up.

use std::time::Duration;

use tend_proto::ExitStatus;

/// A delay or grace as the events say it: "15s", "500ms".
pub fn humanize(d: Duration) -> String {
    if d.as_secs() >= 1 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

/// Describe an exit for a person: "exited with code 3", "killed by signal 9 (SIGKILL)".
pub fn describe_exit(e: &ExitStatus) -> String {
    let d = match (e.exit_code, e.signal) {
        (Some(c), _) => format!("exited with code {c}"),
        (None, Some(s)) => {
            let name = nix::sys::signal::Signal::try_from(s)
                .map(|s| format!(" ({})", s.as_str()))
                .unwrap_or_default();
            let mut d = format!("killed by signal {s}{name}");
            if e.oom_killed {
                d.push_str(", out of memory");
            }
            if e.core_dumped {
                d.push_str(", core dumped");
            }
            d
        }
        (None, None) => match &e.error {
            Some(err) => format!("failed: {err}"),
            None => "ended, status unknown".to_string(),
        },
    };
    match oom_note(e.oom_kills) {
        Some(note) if !e.oom_killed => format!("{d}; {note}"),
        _ => d,
    }
}

/// The line for a run in which the kernel's OOM killer killed `kills` processes
/// in the task's cgroup (the task itself or any process of it); None for none.
pub fn oom_note(kills: u64) -> Option<String> {
    match kills {
        0 => None,
        1 => Some("a process of this task was killed for memory (1 OOM kill)".into()),
        n => Some(format!(
            "a process of this task was killed for memory ({n} OOM kills)"
        )),
    }
}

/// The code a shell reports for a task's last run: the exit code, 128+N for
/// signal N, 127/126 for a command that is missing / not executable (the
/// errno of the failed start), 1 for a run that never started otherwise or
/// whose end is unknown (`None`).
pub fn shell_code(exit: Option<&ExitStatus>, start_errno: Option<i32>) -> i32 {
    match (exit, start_errno) {
        (Some(e), _) if e.exit_code.is_some() || e.signal.is_some() => e.shell_code(),
        (_, Some(errno)) if errno == nix::errno::Errno::ENOENT as i32 => 127,
        (_, Some(errno)) if errno == nix::errno::Errno::EACCES as i32 => 126,
        _ => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_follow_the_shell() {
        let mut e = ExitStatus::from_wait("a", "t", 1, 5, 3 << 8, "s".into(), "f".into());
        assert_eq!(shell_code(Some(&e), None), 3);
        e = ExitStatus::from_wait("a", "t", 1, 5, 9, "s".into(), "f".into());
        assert_eq!(shell_code(Some(&e), None), 137);
        assert_eq!(describe_exit(&e), "killed by signal 9 (SIGKILL)");
        let never = ExitStatus::never_started("a", "t", 1, "no".into());
        let enoent = nix::errno::Errno::ENOENT as i32;
        assert_eq!(shell_code(Some(&never), Some(enoent)), 127);
        assert_eq!(
            shell_code(Some(&never), Some(nix::errno::Errno::EACCES as i32)),
            126
        );
        assert_eq!(shell_code(Some(&never), None), 1);
        assert_eq!(shell_code(None, None), 1);
    }

    #[test]
    fn an_oom_kill_in_the_task_is_told_beside_its_exit() {
        let mut e = ExitStatus::from_wait("a", "t", 1, 5, 137 << 8, "s".into(), "f".into());
        e.oom_kills = 1;
        assert_eq!(
            describe_exit(&e),
            "exited with code 137; a process of this task was killed for memory (1 OOM kill)"
        );
        e = ExitStatus::from_wait("a", "t", 1, 5, 9, "s".into(), "f".into());
        e.oom_killed = true;
        e.oom_kills = 2;
        assert_eq!(
            describe_exit(&e),
            "killed by signal 9 (SIGKILL), out of memory"
        );
    }
}
