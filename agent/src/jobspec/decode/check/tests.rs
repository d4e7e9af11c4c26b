//! Tests of the module above: checks as Nomad writes them, and each bad
//! field refused where it is written.

use std::time::Duration;

use crate::jobspec::{parse_str, CheckKind, CheckRestart, Diagnostic, Job};

/// A job whose task `t` (driver `driver`, a port "http" of its own and a
/// group port "admin") has `body` in it.
fn job(driver: &str, body: &str) -> String {
    let config = if driver == "docker" {
        "image = \"busybox\""
    } else {
        "command = \"/bin/sleep\"\n        args = [\"30\"]"
    };
    format!(
        "job \"j\" {{
  group \"g\" {{
    network {{
      port \"admin\" {{}}
    }}
    task \"t\" {{
      driver = \"{driver}\"
      config {{
        {config}
      }}
      resources {{
        network {{
          port \"http\" {{}}
        }}
      }}
{body}
    }}
  }}
}}
"
    )
}

fn ok(src: &str) -> Job {
    parse_str(src, "t.hcl").unwrap_or_else(|e| panic!("{e}"))
}

fn errs(src: &str) -> Vec<Diagnostic> {
    match parse_str(src, "t.hcl") {
        Ok(j) => panic!("expected errors, got {j:?}"),
        Err(d) => d.errors,
    }
}

/// The one error: its line, column and a part of its message.
fn one(src: &str, line: usize, column: usize, msg: &str) {
    let e = errs(src);
    assert_eq!(e.len(), 1, "{e:#?}");
    assert_eq!((e[0].line, e[0].column), (line, column), "{}", e[0]);
    assert!(e[0].message.contains(msg), "{} lacks {msg:?}", e[0]);
}

#[test]
fn checks_in_a_service_and_bare() {
    let j = ok(&job(
        "exec",
        r#"      service {
        name = "web"
        port = "http"
        tags = ["a"]
        check_restart {
          limit = 3
          grace = "10s"
        }
        check {
          type     = "http"
          path     = "/health"
          interval = "10s"
          timeout  = "2s"
        }
        check {
          name     = "alive"
          type     = "tcp"
          port     = "admin"
          interval = "5s"
          timeout  = "1s"
          check_restart {
            limit           = 1
            ignore_warnings = true
          }
        }
      }
      check {
        type     = "script"
        command  = "/bin/test"
        args     = ["-f", "/local/ready"]
        interval = "1.5s"
        timeout  = "1s"
      }"#,
    ));
    let checks = &j.groups[0].tasks[0].checks;
    assert_eq!(checks.len(), 3);
    assert_eq!(checks[0].name, "service: \"web\" check");
    assert_eq!(
        checks[0].kind,
        CheckKind::Http {
            port: "http".into(),
            path: "/health".into(),
            method: "GET".into()
        }
    );
    assert_eq!(checks[0].interval, Duration::from_secs(10));
    assert_eq!(checks[0].timeout, Duration::from_secs(2));
    assert_eq!(
        checks[0].check_restart,
        Some(CheckRestart {
            limit: 3,
            grace: Duration::from_secs(10),
            ignore_warnings: false
        })
    );
    assert_eq!(checks[1].name, "alive");
    assert_eq!(
        checks[1].kind,
        CheckKind::Tcp {
            port: "admin".into()
        }
    );
    assert_eq!(
        checks[1].check_restart,
        Some(CheckRestart {
            limit: 1,
            grace: Duration::from_secs(1),
            ignore_warnings: true
        })
    );
    assert_eq!(checks[2].name, "script");
    assert_eq!(
        checks[2].kind,
        CheckKind::Script {
            command: "/bin/test".into(),
            args: vec!["-f".into(), "/local/ready".into()]
        }
    );
    assert_eq!(checks[2].interval, Duration::from_millis(1500));
    assert_eq!(checks[2].check_restart, None);
}

#[test]
fn the_json_form_gives_the_same_checks() {
    let hcl = ok(&job(
        "raw_exec",
        r#"      service {
        port = "http"
        check {
          type     = "tcp"
          interval = "2s"
          timeout  = "1s"
          check_restart { limit = 2 }
        }
      }"#,
    ));
    let json = ok(r#"{"job": {"j": {"group": {"g": {
        "task": {"t": {
          "driver": "raw_exec",
          "config": {"command": "/bin/sleep", "args": ["30"]},
          "resources": {"network": {"port": {"http": {}}}},
          "service": [{"port": "http", "check": [{"type": "tcp", "interval": "2s", "timeout": "1s",
            "check_restart": {"limit": 2}}]}]
        }}}}}}}"#);
    assert_eq!(
        hcl.groups[0].tasks[0].checks,
        json.groups[0].tasks[0].checks
    );
}

const TCP: &str = "      check {\n        type = \"tcp\"\n        port = \"http\"\n";

#[test]
fn interval_and_timeout_are_required_and_at_least_a_second() {
    // The check block opens on line 17, column 7.
    one(
        &job("exec", &format!("{TCP}        timeout = \"1s\"\n      }}")),
        17,
        7,
        "missing interval",
    );
    one(
        &job("exec", &format!("{TCP}        interval = \"1s\"\n      }}")),
        17,
        7,
        "missing timeout",
    );
    one(
        &job(
            "exec",
            &format!("{TCP}        interval = \"500ms\"\n        timeout = \"1s\"\n      }}"),
        ),
        20,
        20,
        "must be at least 1s, got 500ms",
    );
    one(
        &job(
            "exec",
            &format!("{TCP}        interval = \"1s\"\n        timeout = \"soon\"\n      }}"),
        ),
        21,
        19,
        "bad duration",
    );
}

#[test]
fn unknown_fields_are_refused_by_name() {
    let e = errs(&job(
        "exec",
        &format!("{TCP}        interval = \"1s\"\n        timeout = \"1s\"\n        header = {{}}\n        check_restart {{\n          attempts = 2\n        }}\n      }}"),
    ));
    let said: Vec<String> = e.iter().map(ToString::to_string).collect();
    assert_eq!(e.len(), 2, "{said:#?}");
    assert!(
        said[0].starts_with(
            "t.hcl:22:9: job.j.group.g.task.t.check[0].header: unknown attribute \"header\""
        ),
        "{said:#?}"
    );
    assert!(said[1].starts_with("t.hcl:24:11: job.j.group.g.task.t.check[0].check_restart.attempts: unknown attribute \"attempts\""), "{said:#?}");
    one(
        &job("exec", "      service {\n        meta = {}\n        check {\n          type = \"script\"\n          command = \"/bin/true\"\n          interval = \"1s\"\n          timeout = \"1s\"\n        }\n      }"),
        18,
        9,
        "unknown attribute \"meta\"",
    );
}

#[test]
fn bad_values_are_refused_where_they_are() {
    let base = |extra: &str| {
        job(
            "exec",
            &format!("      check {{\n        interval = \"1s\"\n        timeout = \"1s\"\n{extra}\n      }}"),
        )
    };
    one(
        &base("        type = \"grpc\""),
        20,
        16,
        "unknown check type \"grpc\"",
    );
    one(&base("        type = \"tcp\"\n        port = \"nope\""), 21, 16, "\"nope\" is not a port of the task's or the group's network block (they have \"http\", \"admin\")");
    one(&base("        type = \"tcp\""), 17, 7, "missing port");
    one(
        &base("        type = \"http\"\n        port = \"http\""),
        17,
        7,
        "missing path",
    );
    one(
        &base("        type = \"http\"\n        port = \"http\"\n        path = \"health\""),
        22,
        16,
        "must be a URL path",
    );
    one(&base("        type = \"http\"\n        port = \"http\"\n        path = \"/\"\n        protocol = \"https\""), 23, 20, "plain HTTP only");
    one(&base("        type = \"http\"\n        port = \"http\"\n        path = \"/\"\n        method = \"get\""), 23, 18, "in capitals");
    one(&base("        type = \"script\""), 17, 7, "missing command");
    one(
        &base("        type = \"tcp\"\n        port = \"http\"\n        command = \"/bin/true\""),
        22,
        9,
        "\"command\" is a field of script checks, not of tcp checks",
    );
    one(
        &base(
            "        type = \"script\"\n        command = \"/bin/true\"\n        port = \"http\"",
        ),
        22,
        9,
        "\"port\" is a field of tcp and http checks",
    );
    one(&base("        type = \"tcp\"\n        port = \"http\"\n        check_restart {\n          limit = -1\n        }"), 23, 19, "an integer >= 0");
    one(&base("        type = \"tcp\"\n        port = \"http\"\n        check_restart {\n          ignore_warnings = \"yes\"\n        }"), 23, 29, "must be true or false");
    one(
        &job(
            "exec",
            "      check {\n        interval = \"1s\"\n        timeout = \"1s\"\n      }",
        ),
        17,
        7,
        "missing type",
    );
}

#[test]
fn names_are_unique_and_services_need_checks() {
    let two = format!("{TCP}        interval = \"1s\"\n        timeout = \"1s\"\n      }}\n");
    one(
        &job("exec", &format!("{two}{two}")),
        23,
        7,
        "two checks of the task are named \"tcp\"",
    );
    one(
        &job("exec", "      service {\n        port = \"http\"\n      }"),
        17,
        7,
        "a service without a check does nothing here",
    );
    one(&job("exec", "      service {\n        provider = \"consul\"\n        check {\n          type = \"script\"\n          command = \"/bin/true\"\n          interval = \"1s\"\n          timeout = \"1s\"\n        }\n      }"), 18, 20, "registers no service");
}

#[test]
fn docker_tasks_take_script_checks_too() {
    let j = ok(&job(
        "docker",
        "      check {\n        type = \"script\"\n        command = \"/bin/true\"\n        interval = \"1s\"\n        timeout = \"1s\"\n      }",
    ));
    assert_eq!(j.groups[0].tasks[0].checks[0].kind.name(), "script");
}
