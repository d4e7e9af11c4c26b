//! End-to-end tests of health checks as root: the built agent and
//! tend-spawn, real tasks, and each kind of check seen from the API, the
//! CLI and the event stream: tcp passing against a listening task, http
//! critical on a missing page, script checks inside an exec task's
//! isolation, check_restart restarting a task until its restart policy
//! gives up, checks resumed after an agent restart, and decode errors.

use std::time::Duration;

use serde_json::Value;
use tend_tests::{pid_alive, require_root, wait_until, AgentProc, Sandbox};

const LONG: Duration = Duration::from_secs(30);

/// The task `t` of allocation `id`, as `GET /v1/allocations/{id}` shows it.
fn task(agent: &AgentProc, id: &str) -> Value {
    agent.get_json(&format!("/v1/allocations/{id}"))["tasks"][0].clone()
}

/// Poll task `t` until `f` holds; it then.
fn wait_task(agent: &AgentProc, id: &str, what: &str, f: impl Fn(&Value) -> bool) -> Value {
    let mut last = Value::Null;
    let ok = wait_until(LONG, || {
        last = task(agent, id);
        f(&last)
    });
    assert!(ok, "task never {what}: {last:#}\nlog:\n{}", agent.log());
    last
}

/// The check `name` of task view `t`.
fn check<'a>(t: &'a Value, name: &str) -> &'a Value {
    t["checks"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["name"] == name))
        .unwrap_or_else(|| panic!("no check {name} in {t:#}"))
}

fn status_is(t: &Value, name: &str, status: &str) -> bool {
    t["checks"].as_array().is_some_and(|cs| {
        cs.iter()
            .any(|c| c["name"] == name && c["status"] == status)
    })
}

/// The messages of the task's events of `kind`.
fn events(t: &Value, kind: &str) -> Vec<String> {
    t["events"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["kind"] == kind)
        .map(|e| e["message"].as_str().unwrap_or("").to_string())
        .collect()
}

/// `tend stop ID` (which waits), and every process of the task gone.
fn stop(agent: &AgentProc, id: &str, pids: &[i64]) {
    let out = agent.cli(&["stop", id]);
    assert!(
        out.status.success(),
        "tend stop: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for pid in pids {
        let pid = i32::try_from(*pid).unwrap();
        assert!(
            wait_until(LONG, || !pid_alive(pid)),
            "pid {pid} outlived its stop"
        );
    }
}

/// A raw_exec python web server on its port "http", checked by tcp (the
/// port) and by http (a page it does not have).
const WEB: &str = r#"job "web" {
  group "g" {
    task "t" {
      driver = "raw_exec"
      config {
        command = "/usr/bin/python3"
        args    = ["-m", "http.server", "--bind", "127.0.0.1", "${TEND_PORT_http}"]
      }
      resources {
        network {
          port "http" {}
        }
      }
      service {
        name = "web"
        port = "http"
        check {
          name     = "alive"
          type     = "tcp"
          interval = "1s"
          timeout  = "1s"
        }
        check {
          name     = "page"
          type     = "http"
          path     = "/no-such-page"
          interval = "1s"
          timeout  = "1s"
        }
      }
    }
  }
}
"#;

#[test]
fn tcp_passes_and_http_goes_critical_with_one_event_per_change() {
    require_root!();
    if !std::path::Path::new("/usr/bin/python3").is_file() {
        tend_tests::skip_or_fail("no /usr/bin/python3 for a listening task");
        return;
    }
    let sb = Sandbox::new();
    let agent = AgentProc::start(&sb);
    let id = agent.submit(WEB).remove(0);
    let t = wait_task(&agent, &id, "had its checks settle", |t| {
        status_is(t, "alive", "passing")
            && status_is(t, "page", "critical")
            && check(t, "page")["output"]
                .as_str()
                .is_some_and(|o| o.contains(": 404 "))
    });
    let port = agent.get_json(&format!("/v1/allocations/{id}"))["ports"]["t"][0]["host_port"]
        .as_u64()
        .unwrap();
    let alive = check(&t, "alive");
    assert_eq!(alive["type"], "tcp");
    assert_eq!(
        alive["output"],
        format!("TCP connect 127.0.0.1:{port}: Success")
    );
    assert!(alive["time"].is_string(), "{alive:#}");
    let page = check(&t, "page");
    assert_eq!(page["type"], "http");
    let out = page["output"].as_str().unwrap();
    assert!(
        out.starts_with(&format!(
            "HTTP GET http://127.0.0.1:{port}/no-such-page: 404"
        )),
        "{out}"
    );
    // More runs of each (one seen, two or so slept through): still one
    // event per change of state.
    let first = check(&t, "alive")["time"].clone();
    wait_task(&agent, &id, "ran its checks again", |t| {
        check(t, "alive")["time"] != first
    });
    std::thread::sleep(Duration::from_millis(2500));
    let t = task(&agent, &id);
    let said = events(&t, "check");
    let passing: Vec<&String> = said
        .iter()
        .filter(|m| m.starts_with("check 'alive' is passing"))
        .collect();
    assert_eq!(passing.len(), 1, "{said:#?}");
    let critical: Vec<&String> = said
        .iter()
        .filter(|m| m.starts_with("check 'page' is critical"))
        .collect();
    assert_eq!(critical.len(), 1, "{said:#?}");
    assert_eq!(
        t["state"], "running",
        "an unhealthy check alone restarts nothing"
    );
    assert_eq!(t["restarts"], 0);
    // The CLI: a table of checks, and the same in --json.
    let out = agent.cli(&["status", &id]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("Checks of t:"), "{text}");
    let row = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("no row {name}: {text}"))
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
    };
    assert_eq!(row("alive"), ["alive", "tcp", "passing"]);
    assert_eq!(row("page"), ["page", "http", "critical"]);
    let out = agent.cli(&["status", &id, "--json"]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["tasks"][0]["checks"][0]["name"], "alive");
    // The event stream says the same.
    let out = agent.cli(&["events", "--alloc", &id, "--json"]);
    let lines = String::from_utf8_lossy(&out.stdout);
    assert!(
        lines
            .lines()
            .any(|l| l.contains("\"kind\":\"check\"") && l.contains("check 'page' is critical")),
        "{lines}"
    );
    stop(&agent, &id, &[t["pid"].as_i64().unwrap()]);
}

/// An exec task with a note in its /local and a variable in its env, and
/// script checks that look for both, from inside its root.
const INSIDE: &str = r#"job "inside" {
  group "g" {
    task "t" {
      driver = "exec"
      config {
        command = "/bin/sh"
        args    = ["-c", "echo written-by-the-task > /local/note; exec sleep 300"]
      }
      env {
        GREETING = "hello from the env"
      }
      check {
        name     = "sees"
        type     = "script"
        command  = "/bin/sh"
        args     = ["-c", "echo \"$GREETING\"; cat /local/note; test -d /alloc && test ! -e /tmp/outside-$TEND_ALLOC_ID"]
        interval = "1s"
        timeout  = "1s"
      }
      check {
        name     = "degraded"
        type     = "script"
        command  = "/bin/sh"
        args     = ["-c", "echo almost; exit 1"]
        interval = "1s"
        timeout  = "1s"
      }
      check {
        name     = "slow"
        type     = "script"
        command  = "/bin/sleep"
        args     = ["30"]
        interval = "1s"
        timeout  = "1s"
      }
    }
  }
}
"#;

#[test]
fn script_checks_run_inside_the_task_and_resume_after_an_agent_restart() {
    require_root!();
    let sb = Sandbox::new();
    let mut agent = AgentProc::start(&sb);
    let id = agent.submit(INSIDE).remove(0);
    // A file on the host's /tmp that the task's private /tmp must not show.
    let outside = std::path::PathBuf::from(format!("/tmp/outside-{id}"));
    std::fs::write(&outside, "host").unwrap();
    let t = wait_task(&agent, &id, "had its script checks settle", |t| {
        status_is(t, "sees", "passing")
            && status_is(t, "degraded", "warning")
            && status_is(t, "slow", "critical")
    });
    std::fs::remove_file(&outside).unwrap();
    assert_eq!(
        check(&t, "sees")["output"],
        "hello from the env\nwritten-by-the-task"
    );
    assert_eq!(check(&t, "degraded")["output"], "almost");
    assert_eq!(check(&t, "slow")["output"], "timed out after 1s");
    // The timed-out sleeps were killed with their connection: no more than
    // the one in flight lives beside the task.
    let daemon = t["daemon_pid"].as_i64().unwrap();
    let sleeps = || {
        std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter(|e| {
                std::fs::read_to_string(e.path().join("cmdline"))
                    .is_ok_and(|c| c == "/bin/sleep\x0030\x00")
            })
            .count()
    };
    assert!(
        sleeps() <= 1,
        "timed-out script checks left {} sleeps",
        sleeps()
    );
    // The agent goes and comes back: the checks go on from where they were,
    // with no new event for a state that did not change.
    let before = events(&t, "check").len();
    agent.kill9();
    std::thread::sleep(Duration::from_millis(1500));
    agent.restart();
    let seen = task(&agent, &id);
    assert_eq!(
        seen["daemon_pid"].as_i64(),
        Some(daemon),
        "the run was taken up"
    );
    let time = check(&seen, "sees")["time"].clone();
    let t = wait_task(&agent, &id, "ran its checks again", |t| {
        check(t, "sees")["time"] != time && status_is(t, "sees", "passing")
    });
    assert_eq!(
        events(&t, "check").len(),
        before,
        "{:#?}",
        events(&t, "check")
    );
    stop(&agent, &id, &[t["pid"].as_i64().unwrap(), daemon]);
    assert!(
        wait_until(LONG, || sleeps() == 0),
        "a script check outlived its task"
    );
}

/// A task whose check never passes (nothing listens on its port), restarted
/// by check_restart until its restart policy has no attempt left.
const UNHEALTHY: &str = r#"job "sick" {
  group "g" {
    restart {
      attempts = 1
      interval = "10m"
      delay    = "0s"
      mode     = "fail"
    }
    task "t" {
      driver = "raw_exec"
      config {
        command = "/bin/sleep"
        args    = ["300"]
      }
      resources {
        network {
          port "http" {}
        }
      }
      check {
        name     = "web"
        type     = "tcp"
        port     = "http"
        interval = "1s"
        timeout  = "1s"
        check_restart {
          limit = 3
          grace = "0s"
        }
      }
    }
  }
}
"#;

#[test]
fn check_restart_restarts_the_task_until_its_policy_gives_up() {
    require_root!();
    let sb = Sandbox::new();
    let agent = AgentProc::start(&sb);
    let id = agent.submit(UNHEALTHY).remove(0);
    let first = wait_task(&agent, &id, "ran", |t| t["state"] == "running");
    let first_pid = first["pid"].as_i64().unwrap();
    let t = wait_task(&agent, &id, "was restarted", |t| {
        t["restarts"] == 1 && t["state"] == "running" && t["pid"].as_i64() != Some(first_pid)
    });
    assert!(
        wait_until(LONG, || !pid_alive(i32::try_from(first_pid).unwrap())),
        "the first run outlived its restart"
    );
    let said = events(&t, "restarting");
    assert_eq!(
        said,
        ["restarting in 0ms: check 'web' unhealthy 3 times"],
        "{:#}",
        t["events"]
    );
    assert_eq!(
        events(&t, "restart_signaled"),
        ["check 'web' unhealthy 3 times: restarting the task"]
    );
    // The second run is as sick: its restart is one more than attempts = 1.
    let t = wait_task(&agent, &id, "failed for good", |t| t["state"] == "dead");
    assert_eq!(t["failed"], true);
    assert_eq!(t["restarts"], 1);
    assert_eq!(
        events(&t, "dead"),
        ["failed: restart attempts exhausted"],
        "{:#}",
        t["events"]
    );
    let last = t["checks"][0]["time"].clone();
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(
        task(&agent, &id)["checks"][0]["time"],
        last,
        "a check ran on after its task ended"
    );
}

#[test]
fn bad_checks_are_refused_where_they_are_written() {
    let sb = Sandbox::new();
    let file = sb.write_job(
        "bad.hcl",
        r#"job "bad" {
  group "g" {
    task "t" {
      driver = "raw_exec"
      config {
        command = "/bin/true"
      }
      check {
        type     = "tcp"
        port     = "http"
        interval = "100ms"
        timeout  = "1s"
        success_before_passing = 2
      }
    }
  }
}
"#,
    );
    let out = sb.run_tend(&["validate", file.to_str().unwrap()], LONG);
    assert_eq!(out.code, Some(1), "{out:?}");
    let err = format!("{}{}", out.stdout, out.stderr);
    let f = file.display();
    for line in [
        format!("{f}:10:20: job.bad.group.g.task.t.check[0].port: \"http\" is not a port of the task's or the group's network block (there are none)"),
        format!("{f}:11:20: job.bad.group.g.task.t.check[0].interval: must be at least 1s, got 100ms"),
        format!("{f}:13:9: job.bad.group.g.task.t.check[0].success_before_passing: unknown attribute \"success_before_passing\""),
    ] {
        assert!(err.contains(&line), "no {line:?} in:\n{err}");
    }
}

#[test]
fn a_foreground_run_says_each_change_of_a_check() {
    let sb = Sandbox::new();
    let file = sb.write_job(
        "fg.hcl",
        r#"job "fg" {
  group "g" {
    task "t" {
      driver = "raw_exec"
      config {
        command = "/bin/sleep"
        args    = ["2.5"]
      }
      check {
        name     = "fine"
        type     = "script"
        command  = "/bin/sh"
        args     = ["-c", "echo all is well in $TEND_TASK_NAME"]
        interval = "1s"
        timeout  = "1s"
      }
    }
  }
}
"#,
    );
    let out = sb.run_tend(&["run", file.to_str().unwrap()], LONG);
    assert_eq!(out.code, Some(0), "{out}");
    let said: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| l.contains("check 'fine'"))
        .collect();
    assert_eq!(
        said,
        ["==> t: check 'fine' is passing: all is well in t"],
        "{out}"
    );
}

#[test]
fn a_docker_task_is_checked_through_the_engine() {
    require_root!();
    tend_tests::require_docker!();
    let sb = Sandbox::new();
    let agent = AgentProc::start_with_config(
        &sb,
        &format!(
            "plugin \"docker\" {{\n  endpoint = \"{}\"\n}}\n",
            tend_tests::docker::socket().display()
        ),
    );
    let job = format!(
        r#"job "boxed" {{
  group "g" {{
    task "t" {{
      driver = "docker"
      config {{
        image   = "{}"
        command = "/bin/sh"
        args    = ["-c", "touch /tmp/mark; exec httpd -f -p 8080"]
      }}
      env {{
        GREETING = "hello from the container's env"
      }}
      resources {{
        network {{
          port "http" {{
            to = 8080
          }}
        }}
      }}
      check {{
        name     = "inside"
        type     = "script"
        command  = "/bin/sh"
        args     = ["-c", "echo \"$GREETING\"; test -f /tmp/mark"]
        interval = "1s"
        timeout  = "5s"
      }}
      check {{
        name     = "port"
        type     = "tcp"
        port     = "http"
        interval = "1s"
        timeout  = "1s"
      }}
    }}
  }}
}}
"#,
        tend_tests::docker::TEST_IMAGE
    );
    let id = agent.submit(&job).remove(0);
    let label = format!("tend.alloc_id={id}");
    let _cleanup = RemoveContainers(label.clone());
    let t = wait_task(&agent, &id, "had its checks pass", |t| {
        status_is(t, "inside", "passing") && status_is(t, "port", "passing")
    });
    assert_eq!(
        check(&t, "inside")["output"],
        "hello from the container's env"
    );
    let out = agent.cli(&["stop", &id]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let left = tend_tests::docker::cli(&["ps", "-aq", "--filter", &format!("label={label}")]);
    assert_eq!(left.as_deref().map(str::trim), Some(""), "containers left");
}

/// Removes the containers with this label when dropped (a failed test's).
struct RemoveContainers(String);

impl Drop for RemoveContainers {
    fn drop(&mut self) {
        let filter = format!("label={}", self.0);
        let ids = tend_tests::docker::cli(&["ps", "-aq", "--filter", &filter]).unwrap_or_default();
        for id in ids.split_whitespace() {
            let _ = tend_tests::docker::cli(&["rm", "-f", "-v", id]);
        }
    }
}
