use std::time::Duration;

use super::*;

/// Parses a document that must fail; returns its errors.
fn errs(src: &str) -> Vec<Diagnostic> {
    match parse_str(src, "t.hcl") {
        Ok(job) => panic!("expected errors, got {job:?}"),
        Err(d) => d.errors,
    }
}

/// Asserts the only error is at line:column, on path, with a message containing `msg`.
fn one_err(src: &str, line: usize, column: usize, path: &str, msg: &str) {
    let e = errs(src);
    assert_eq!(e.len(), 1, "expected one error, got {e:#?}");
    let d = &e[0];
    assert_eq!((d.line, d.column), (line, column), "{d}");
    assert_eq!(d.path, path, "{d}");
    assert!(d.message.contains(msg), "{d:?} does not contain {msg:?}");
}

/// A valid job with one raw_exec task, `extra` inserted in the task body.
fn task_with(extra: &str) -> String {
    format!(
        "job \"web\" {{\n  group \"g\" {{\n    task \"t\" {{\n      driver = \"raw_exec\"\n      config {{\n        command = \"/bin/true\"\n      }}\n{extra}\n    }}\n  }}\n}}\n"
    )
}

const GREET: &str = r#"job "hello" {
  group "g" {
    task "greet" {
      driver = "raw_exec"
      config {
        command = "/bin/sh"
        args    = ["-c", "echo hello from $TEND_TASK_NAME; exit 3"]
      }
      env { GREETING = "hi" }
      kill_timeout = "5s"
      logs {
        max_files     = 10
        max_file_size = 10   # MB
      }
    }
  }
}
"#;

const DESIGN_WEB: &str = r#"job "web" {
  group "g" {
    task "server" {
      driver = "exec"
      config {
        command = "/usr/bin/python3"
        args    = ["-m", "http.server", "${TEND_PORT_http}"]
      }
      resources {
        cpu    = 500   # MHz
        memory = 256   # MB
        network {
          port "http" {}
        }
      }
    }
  }
}
"#;

#[test]
fn brief_example_parses_with_one_line_env_block() {
    let job = parse_str(GREET, "greet.hcl").unwrap();
    assert_eq!(job.name, "hello");
    let g = &job.groups[0];
    assert_eq!((g.name.as_str(), g.count), ("g", 1));
    assert_eq!(g.restart, RestartPolicy::default());
    let t = &g.tasks[0];
    assert_eq!(t.name, "greet");
    assert_eq!(t.driver, Driver::RawExec);
    assert_eq!(t.config.command.as_deref(), Some("/bin/sh"));
    assert_eq!(
        t.config.args,
        ["-c", "echo hello from $TEND_TASK_NAME; exit 3"]
    );
    assert_eq!(t.env.get("GREETING").map(String::as_str), Some("hi"));
    assert_eq!(t.kill_timeout, Duration::from_secs(5));
    assert_eq!(t.kill_signal, 15);
    assert_eq!(
        t.logs,
        LogSpec {
            max_files: 10,
            max_file_size_mb: 10
        }
    );
    assert_eq!(t.resources, Resources::default());
    assert_eq!(t.user, None);
    assert_eq!(t.chroot_env, None);
}

#[test]
fn design_example_parses_and_keeps_interpolation() {
    let job = parse_str(DESIGN_WEB, "web.hcl").unwrap();
    let t = &job.groups[0].tasks[0];
    assert_eq!(t.driver, Driver::Exec);
    assert_eq!(t.config.args, ["-m", "http.server", "${TEND_PORT_http}"]);
    assert_eq!((t.resources.cpu, t.resources.memory), (500, 256));
    assert_eq!(
        t.resources.ports,
        [Port {
            label: "http".into(),
            static_port: None,
            to: None
        }]
    );
}

#[test]
fn hcl_escape_stays_literal_for_runtime() {
    let job = parse_str(
        &task_with("      env { A = \"$${X} ${Y} ${meta.z}\" }"),
        "t",
    )
    .unwrap();
    assert_eq!(job.groups[0].tasks[0].env["A"], "$${X} ${Y} ${meta.z}");
}

#[test]
fn full_job_with_every_field() {
    let src = r#"
job "full" {
  datacenters = ["dc1"]
  meta { owner = "ops"  }
  group "g" {
    count = 2
    meta {
      tier = 1
      on   = true
    }
    restart {
      attempts = 3
      interval = "10m"
      delay    = "1m30s"
      mode     = "delay"
    }
    task "web" {
      driver       = "docker"
      user         = "nobody"
      kill_timeout = "100ms"
      kill_signal  = "INT"
      config {
        image              = "redis:7"
        command            = "redis-server"
        args               = ["--port", "${TEND_PORT_db}"]
        hostname           = "cache"
        labels             = { team = "a" }
        network_mode       = "bridge"
        dns_servers        = ["1.1.1.1"]
        dns_search_domains = ["local"]
        port_map           = { db = 6379 }
        privileged         = false
      }
      meta = { version = 1.5 }
      resources {
        cpu        = 200
        memory     = 128
        pids_limit = 64
        network {
          port "db" {
            static = 16379
            to     = 6379
          }
          port "metrics" {}
        }
      }
      chroot_env = {
        "/bin" = "/bin"
      }
    }
  }
}
"#;
    let job = parse_str(src, "full.hcl").unwrap();
    assert_eq!(job.datacenters, ["dc1"]);
    assert_eq!(job.meta["owner"], "ops");
    let g = &job.groups[0];
    assert_eq!(g.count, 2);
    assert_eq!(g.meta["tier"], "1");
    assert_eq!(g.meta["on"], "true");
    assert_eq!(
        g.restart,
        RestartPolicy {
            attempts: 3,
            interval: Duration::from_secs(600),
            delay: Duration::from_secs(90),
            mode: RestartMode::Delay
        }
    );
    let t = &g.tasks[0];
    assert_eq!(t.driver, Driver::Docker);
    assert_eq!(t.user.as_deref(), Some("nobody"));
    assert_eq!(t.kill_timeout, Duration::from_millis(100));
    assert_eq!(t.kill_signal, 2);
    assert_eq!(t.config.image.as_deref(), Some("redis:7"));
    assert_eq!(t.config.labels["team"], "a");
    assert_eq!(t.config.port_map["db"], 6379);
    assert_eq!(t.meta["version"], "1.5");
    assert_eq!(t.resources.pids_limit, Some(64));
    assert_eq!(
        t.resources.ports[0],
        Port {
            label: "db".into(),
            static_port: Some(16379),
            to: Some(6379)
        }
    );
    assert_eq!(t.resources.ports[1].static_port, None);
    assert_eq!(t.chroot_env.as_ref().unwrap()["/bin"], "/bin");
}

#[test]
fn json_form_gives_the_same_job() {
    let json = r#"{
  "job": {
    "hello": {
      "group": {
        "g": {
          "task": {
            "greet": {
              "driver": "raw_exec",
              "config": {
                "command": "/bin/sh",
                "args": ["-c", "echo hello from $TEND_TASK_NAME; exit 3"]
              },
              "env": { "GREETING": "hi" },
              "kill_timeout": "5s",
              "logs": { "max_files": 10, "max_file_size": 10 }
            }
          }
        }
      }
    }
  }
}"#;
    assert_eq!(
        parse_str(json, "greet.json").unwrap(),
        parse_str(GREET, "greet.hcl").unwrap()
    );

    let web_json = r#"{"job": {"web": {"group": [{"g": {"task": {"server": {
        "driver": "exec",
        "config": {"command": "/usr/bin/python3", "args": ["-m", "http.server", "${TEND_PORT_http}"]},
        "resources": {"cpu": 500, "memory": 256, "network": {"port": {"http": {}}}}
    }}}}]}}}"#;
    assert_eq!(
        parse_str(web_json, "web.json").unwrap(),
        parse_str(DESIGN_WEB, "web.hcl").unwrap()
    );
}

#[test]
fn json_errors_are_located() {
    let json = "{\n  \"job\": {\n    \"x\": {\n      \"group\": {\"g\": {\"task\": {\"t\": {\n        \"driver\": \"raw_exec\",\n        \"config\": {\"command\": \"/bin/true\"},\n        \"resources\": {\"memory\": -5}\n      }}}}\n    }\n  }\n}";
    let e = errs(json);
    assert_eq!(e.len(), 1, "{e:#?}");
    assert_eq!((e[0].line, e[0].column), (7, 33));
    assert_eq!(e[0].path, "job.x.group.g.task.t.resources.memory");
    assert_eq!(
        e[0].to_string(),
        "t.hcl:7:33: job.x.group.g.task.t.resources.memory: must be a positive integer (MB), got -5"
    );
    let e = errs("{\n  \"job\": [1,]\n}");
    assert_eq!((e[0].line, e[0].column), (2, 13));
    assert!(e[0].message.starts_with("JSON syntax error"));
}

#[test]
fn hcl_syntax_error_is_located() {
    let e = errs("job \"x\" {\n  group \"g\" {\n    count = \n  }\n}\n");
    assert_eq!(e.len(), 1);
    assert_eq!(e[0].line, 3);
    assert!(e[0].message.starts_with("HCL syntax error"), "{}", e[0]);
}

#[test]
fn error_display_format() {
    let e = errs(&task_with(
        "      resources {\n        memory = -5\n      }",
    ));
    assert_eq!(
        e[0].to_string(),
        "t.hcl:9:18: job.web.group.g.task.t.resources.memory: must be a positive integer (MB), got -5"
    );
}

// Line 8 is the first line of `extra` in task_with.

#[test]
fn unknown_attribute() {
    one_err(
        &task_with("      foo = 1"),
        8,
        7,
        "job.web.group.g.task.t.foo",
        "unknown attribute \"foo\" (expected one of: driver, user,",
    );
}

#[test]
fn unknown_block() {
    one_err(
        &task_with("      template {\n      }"),
        8,
        7,
        "job.web.group.g.task.t.template",
        "unknown block \"template\" (expected one of: config,",
    );
}

#[test]
fn unknown_attribute_in_resources() {
    one_err(
        &task_with("      resources {\n        disk = 300\n      }"),
        9,
        9,
        "job.web.group.g.task.t.resources.disk",
        "unknown attribute \"disk\" (expected one of: cpu, memory, memory_max, cpu_hard_limit, io_weight, oom_kill_group, pids_limit)",
    );
}

#[test]
fn wrong_type() {
    one_err(
        &task_with("      resources {\n        cpu = \"lots\"\n      }"),
        9,
        15,
        "job.web.group.g.task.t.resources.cpu",
        "must be a positive integer (MHz), got \"lots\"",
    );
    one_err(
        &task_with("      kill_timeout = 5"),
        8,
        22,
        "job.web.group.g.task.t.kill_timeout",
        "got 5",
    );
    one_err(
        &task_with("      env = [\"A\"]"),
        8,
        13,
        "job.web.group.g.task.t.env",
        "must be a map, got a list",
    );
}

#[test]
fn bad_duration() {
    one_err(
        &task_with("      kill_timeout = \"5x\""),
        8,
        22,
        "job.web.group.g.task.t.kill_timeout",
        "bad duration \"5x\": expected a duration such as \"5s\"",
    );
}

#[test]
fn unknown_driver() {
    let src = "job \"j\" {\n  group \"g\" {\n    task \"t\" {\n      driver = \"podman\"\n      config {\n        command = \"/bin/true\"\n      }\n    }\n  }\n}\n";
    one_err(
        src,
        4,
        16,
        "job.j.group.g.task.t.driver",
        "unknown driver \"podman\" (expected one of: raw_exec, exec, docker, oci)",
    );
}

#[test]
fn unknown_signal() {
    one_err(
        &task_with("      kill_signal = \"SIGTREM\""),
        8,
        21,
        "job.web.group.g.task.t.kill_signal",
        "unknown signal \"SIGTREM\"",
    );
}

#[test]
fn duplicate_task_names() {
    let src = "job \"j\" {\n  group \"g\" {\n    task \"t\" {\n      driver = \"raw_exec\"\n      config { command = \"/bin/true\" }\n    }\n    task \"t\" {\n      driver = \"raw_exec\"\n      config { command = \"/bin/true\" }\n    }\n  }\n}\n";
    one_err(
        src,
        7,
        10,
        "job.j.group.g.task.t",
        "duplicate task name \"t\" in group \"g\"",
    );
}

#[test]
fn task_names_that_are_tend_s_own_entries_of_the_alloc_dir_are_refused() {
    for name in [
        "logs",
        "alloc",
        ".cache",
        "web_exit_status",
        "web_exit_status.2",
        "web_docker_log_cursor",
    ] {
        let src = format!("job \"j\" {{\n  group \"g\" {{\n    task \"{name}\" {{\n      driver = \"docker\"\n      config {{\n        image = \"busybox\"\n        volumes = [\".:/x\"]\n      }}\n    }}\n  }}\n}}\n");
        let e = errs(&src);
        assert_eq!(e.len(), 1, "{name}: {e:#?}");
        assert_eq!((e[0].line, e[0].column), (3, 10), "{name}");
        assert_eq!(e[0].path, format!("job.j.group.g.task.{name}"));
        assert!(
            e[0].message.starts_with(&format!("task name {name:?} ")),
            "{}",
            e[0]
        );
        assert!(e[0].message.ends_with("choose another name"), "{}", e[0]);
    }
    // Names that only look alike are free.
    for name in ["logs2", "my_alloc", "exit_status", "web.x"] {
        let src = format!("job \"j\" {{\n  group \"g\" {{\n    task \"{name}\" {{\n      driver = \"raw_exec\"\n      config {{ command = \"/bin/true\" }}\n    }}\n  }}\n}}\n");
        assert!(parse_str(&src, "t.hcl").is_ok(), "{name}");
    }
}

#[test]
fn task_names_must_be_plain_file_names() {
    for (name, shown) in [
        ("..", "\"..\""),
        ("a/b", "\"a/b\""),
        ("a\\u0000b", "\"a\\0b\""),
        (".", "\".\""),
        ("", "\"\""),
    ] {
        let src = format!("job \"j\" {{\n  group \"g\" {{\n    task \"{name}\" {{\n      driver = \"raw_exec\"\n      config {{ command = \"/bin/true\" }}\n    }}\n  }}\n}}\n");
        let e = errs(&src);
        assert_eq!(e.len(), 1, "{name}: {e:#?}");
        assert_eq!((e[0].line, e[0].column), (3, 10), "{name}");
        assert!(
            e[0].message.contains("must be a plain file name"),
            "{}",
            e[0]
        );
        assert!(e[0].message.ends_with(shown), "{} vs {shown}", e[0]);
    }
}

#[test]
fn negative_and_zero_resources() {
    one_err(
        &task_with("      resources {\n        memory = -5\n      }"),
        9,
        18,
        "job.web.group.g.task.t.resources.memory",
        "must be a positive integer (MB), got -5",
    );
    one_err(
        &task_with("      resources {\n        cpu = 0\n      }"),
        9,
        15,
        "job.web.group.g.task.t.resources.cpu",
        "must be a positive integer (MHz), got 0",
    );
    one_err(
        &task_with("      resources {\n        pids_limit = 0\n      }"),
        9,
        22,
        "job.web.group.g.task.t.resources.pids_limit",
        "must be a positive integer, got 0",
    );
    one_err(
        &task_with("      logs {\n        max_files = 0\n      }"),
        9,
        21,
        "job.web.group.g.task.t.logs.max_files",
        "must be an integer >= 1, got 0",
    );
    one_err(
        &task_with("      logs {\n        max_file_size = -1\n      }"),
        9,
        25,
        "job.web.group.g.task.t.logs.max_file_size",
        "must be a positive integer (MB), got -1",
    );
}

#[test]
fn ports_are_checked() {
    one_err(
        &task_with(
            "      resources {\n        network {\n          port \"a-b\" {}\n        }\n      }",
        ),
        10,
        16,
        "job.web.group.g.task.t.resources.network.port.a-b",
        "port label must be letters, digits and _",
    );
    one_err(&task_with("      resources {\n        network {\n          port \"a\" {}\n          port \"a\" {}\n        }\n      }"), 11, 16, "job.web.group.g.task.t.resources.network.port.a", "duplicate port label \"a\"");
    one_err(&task_with("      resources {\n        network {\n          port \"a\" {\n            static = 70000\n          }\n        }\n      }"), 11, 22, "job.web.group.g.task.t.resources.network.port.a.static", "must be a port number 1-65535, got 70000");
}

#[test]
fn driver_specific_config() {
    let src = "job \"j\" {\n  group \"g\" {\n    task \"t\" {\n      driver = \"exec\"\n      config {\n        command = \"/bin/true\"\n        image = \"redis\"\n      }\n    }\n  }\n}\n";
    one_err(
        src,
        7,
        9,
        "job.j.group.g.task.t.config.image",
        "\"image\" is not a field of the exec driver (exec accepts: command, args)",
    );
    let src = "job \"j\" {\n  group \"g\" {\n    task \"t\" {\n      driver = \"docker\"\n      config {\n        image = \"redis\"\n        args = [\"x\"]\n      }\n    }\n  }\n}\n";
    one_err(
        src,
        7,
        9,
        "job.j.group.g.task.t.config.args",
        "args without command",
    );
    let src = "job \"j\" {\n  group \"g\" {\n    task \"t\" {\n      driver = \"docker\"\n      config {\n        command = \"x\"\n      }\n    }\n  }\n}\n";
    one_err(src, 5, 7, "job.j.group.g.task.t.config", "missing image");
    let src = "job \"j\" {\n  group \"g\" {\n    task \"t\" {\n      driver = \"raw_exec\"\n      config {\n        command = \"\"\n      }\n    }\n  }\n}\n";
    one_err(
        src,
        6,
        19,
        "job.j.group.g.task.t.config.command",
        "must be a non-empty program path or name",
    );
    let src = "job \"j\" {\n  group \"g\" {\n    task \"t\" {\n      driver = \"raw_exec\"\n      config {\n        args = [\"x\"]\n      }\n    }\n  }\n}\n";
    one_err(src, 5, 7, "job.j.group.g.task.t.config", "missing command");
}

#[test]
fn job_group_task_counts() {
    one_err("# nothing\n", 1, 1, "", "no job in file");
    let two = "job \"a\" {\n  group \"g\" {\n    task \"t\" {\n      driver = \"raw_exec\"\n      config { command = \"/bin/true\" }\n    }\n  }\n}\njob \"b\" {\n}\n";
    let e = errs(two);
    assert_eq!((e[0].line, e[0].column), (9, 1));
    assert!(e[0].message.contains("only one job per file"));
    one_err("job \"a\" {\n}\n", 1, 1, "job.a", "job has no group");
    one_err(
        "job \"a\" {\n  group \"g\" {\n  }\n}\n",
        2,
        3,
        "job.a.group.g",
        "group has no task",
    );
    one_err(
        "job \"a\" {\n  group \"g\" {\n    task \"t\" {\n    }\n  }\n}\n",
        3,
        5,
        "job.a.group.g.task.t",
        "missing driver",
    );
}

#[test]
fn restart_is_checked() {
    let src = "job \"j\" {\n  group \"g\" {\n    restart {\n      mode = \"retry\"\n      delay = \"soon\"\n    }\n    task \"t\" {\n      driver = \"raw_exec\"\n      config { command = \"/bin/true\" }\n    }\n  }\n}\n";
    let e = errs(src);
    assert_eq!(e.len(), 2, "{e:#?}");
    assert_eq!(
        (e[0].line, e[0].column, e[0].path.as_str()),
        (4, 14, "job.j.group.g.restart.mode")
    );
    assert!(e[0]
        .message
        .contains("must be \"fail\" or \"delay\", got \"retry\""));
    assert_eq!((e[1].line, e[1].column), (5, 15));
}

#[test]
fn a_job_with_three_errors_reports_three() {
    let src = r#"job "web" {
  group "g" {
    task "t" {
      driver = "raw_exec"
      config {
        command = "/bin/true"
      }
      kill_timeout = "5x"
      resources {
        memory = -5
        bogus  = 1
      }
    }
  }
}
"#;
    let e = errs(src);
    let shown: Vec<String> = e.iter().map(ToString::to_string).collect();
    assert_eq!(
        shown,
        [
            "t.hcl:8:22: job.web.group.g.task.t.kill_timeout: bad duration \"5x\": expected a duration such as \"5s\", \"100ms\", \"1m30s\" or \"2h\" (units ns, us, ms, s, m, h)",
            "t.hcl:10:18: job.web.group.g.task.t.resources.memory: must be a positive integer (MB), got -5",
            "t.hcl:11:9: job.web.group.g.task.t.resources.bogus: unknown attribute \"bogus\" (expected one of: cpu, memory, memory_max, cpu_hard_limit, io_weight, oom_kill_group, pids_limit)",
        ]
    );
}

#[test]
fn unsupported_expressions_are_refused() {
    let e = errs(&task_with("      user = upper(\"x\")"));
    assert_eq!(e.len(), 1, "{e:#?}");
    assert!(e[0]
        .message
        .contains("must be a string, got a function call"));
}

#[test]
fn columns_count_characters_not_bytes() {
    let e = errs(&task_with("      meta { é = \"x\" }\n      foo = 1"));
    let d = e.iter().find(|d| d.path.ends_with("foo")).unwrap();
    assert_eq!((d.line, d.column), (9, 7));
    let e = errs(&task_with("      env { A = \"é\" } \n      x = 1"));
    assert_eq!((e[0].line, e[0].column), (9, 7));
}

#[test]
fn parse_file_reads_and_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("j.hcl");
    std::fs::write(&p, GREET).unwrap();
    assert_eq!(parse_file(&p).unwrap().name, "hello");
    let e = parse_file(&dir.path().join("missing.hcl")).unwrap_err();
    assert!(
        e.to_string().contains("missing.hcl: cannot read job file"),
        "{e}"
    );
}

#[test]
fn json_unknown_keys_and_block_shapes_are_located() {
    let json = "{\"job\": {\"j\": {\"group\": {\"g\": {\"task\": {\"t\": {\n  \"driver\": \"raw_exec\",\n  \"config\": {\"command\": \"/bin/true\"},\n  \"bogus\": 1,\n  \"logs\": 3\n}}}}}}}";
    let e = errs(json);
    let shown: Vec<String> = e.iter().map(ToString::to_string).collect();
    assert_eq!(shown.len(), 2, "{shown:#?}");
    assert!(
        shown[0].starts_with("t.hcl:4:3: job.j.group.g.task.t.bogus: unknown attribute \"bogus\""),
        "{}",
        shown[0]
    );
    assert!(
        shown[1].starts_with("t.hcl:5:11: job.j.group.g.task.t.logs: \"logs\" is a block: expected a JSON object, got 3"),
        "{}",
        shown[1]
    );
}

#[test]
fn chroot_env_needs_the_attribute_form_in_hcl2() {
    // HCL2 allows only identifiers as keys in a block body, so quoted paths
    // need `chroot_env = { ... }`.
    let ok = parse_str(
        &task_with("      chroot_env = { \"/bin\" = \"/bin\", \"/etc/ssl\" = \"/etc/ssl\" }"),
        "t",
    )
    .unwrap();
    assert_eq!(ok.groups[0].tasks[0].chroot_env.as_ref().unwrap().len(), 2);
    let e = errs(&task_with(
        "      chroot_env {\n        \"/bin\" = \"/bin\"\n      }",
    ));
    assert!(e[0].message.starts_with("HCL syntax error"));
    one_err(
        &task_with("      chroot_env = { bin = \"/bin\" }"),
        8,
        7,
        "job.web.group.g.task.t.chroot_env",
        "absolute",
    );
}

/// A valid job with one docker task, `extra` inserted in its config body.
/// Line 7 is the first line of `extra`.
fn docker_config(extra: &str) -> String {
    format!(
        "job \"j\" {{\n  group \"g\" {{\n    task \"t\" {{\n      driver = \"docker\"\n      config {{\n        image = \"busybox\"\n{extra}\n      }}\n    }}\n  }}\n}}\n"
    )
}

/// The errors of a document, each as `file:line:col: path: message`.
fn shown(src: &str) -> Vec<String> {
    errs(src).iter().map(ToString::to_string).collect()
}

const DOCKER_HOST_FIELDS: &str = r#"        volumes  = ["shared:/data", "./a/../b/.:/b:ro", "../alloc/x:/x:rw", "/srv/www:/www"]
        devices  = [
          { host_path = "/dev/fuse" },
          { host_path = "/dev/sda", container_path = "/dev/xvda", cgroup_permissions = "r" },
        ]
        cap_add  = ["NET_ADMIN", "sys_time", "CAP_CHOWN"]
        cap_drop = ["ALL"]"#;

#[test]
fn docker_volumes_devices_and_caps_parse() {
    let job = parse_str(&docker_config(DOCKER_HOST_FIELDS), "t.hcl").unwrap();
    let c = &job.groups[0].tasks[0].config;
    let vol = |source: VolumeSource, target: &str, read_only: bool| Volume {
        source,
        target: target.into(),
        read_only,
    };
    assert_eq!(
        c.volumes,
        [
            vol(VolumeSource::InAlloc("t/shared".into()), "/data", false),
            vol(VolumeSource::InAlloc("t/b".into()), "/b", true),
            vol(VolumeSource::InAlloc("alloc/x".into()), "/x", false),
            vol(VolumeSource::Host("/srv/www".into()), "/www", false),
        ]
    );
    assert_eq!(
        c.devices,
        [
            Device {
                host_path: "/dev/fuse".into(),
                container_path: "/dev/fuse".into(),
                cgroup_permissions: "rwm".into(),
            },
            Device {
                host_path: "/dev/sda".into(),
                container_path: "/dev/xvda".into(),
                cgroup_permissions: "r".into(),
            },
        ]
    );
    assert_eq!(c.cap_add, ["NET_ADMIN", "SYS_TIME", "CHOWN"]);
    assert_eq!(c.cap_drop, ["ALL"]);

    // `..` from the task's dir is the alloc dir itself, with the logs and exit
    // files of every task: not the task's to bind.
    assert!(parse_str(&docker_config("        volumes = [\"..:/all\"]"), "t").is_err());
}

#[test]
fn docker_host_fields_in_json_give_the_same_job() {
    let json = r#"{"job": {"j": {"group": {"g": {"task": {"t": {
  "driver": "docker",
  "config": {
    "image": "busybox",
    "volumes": ["shared:/data", "./a/../b/.:/b:ro", "../alloc/x:/x:rw", "/srv/www:/www"],
    "devices": [
      {"host_path": "/dev/fuse"},
      {"host_path": "/dev/sda", "container_path": "/dev/xvda", "cgroup_permissions": "r"}
    ],
    "cap_add": ["NET_ADMIN", "sys_time", "CAP_CHOWN"],
    "cap_drop": ["ALL"]
  }
}}}}}}}"#;
    assert_eq!(
        parse_str(json, "j.json").unwrap(),
        parse_str(&docker_config(DOCKER_HOST_FIELDS), "j.hcl").unwrap()
    );
    let bad = "{\"job\": {\"j\": {\"group\": {\"g\": {\"task\": {\"t\": {\n  \"driver\": \"docker\",\n  \"config\": {\"image\": \"busybox\",\n    \"volumes\": [\"shared:/data\", \"../../etc:/etc\"],\n    \"devices\": [{\"host_path\": \"fuse\"}]}\n}}}}}}}";
    assert_eq!(
        shown(bad),
        [
            "t.hcl:4:33: job.j.group.g.task.t.config.volumes[1]: the source \"../../etc\" leaves \
             the task's dir: a relative source is taken from the task's dir (<alloc_dir>/t) and \
             must stay in it or in the alloc's shared dir (../alloc); the alloc dir's logs and \
             exit files are not the task's (an absolute source is a host bind)",
            "t.hcl:5:31: job.j.group.g.task.t.config.devices[0].host_path: must be an absolute \
             path, got \"fuse\"",
        ]
    );
}

#[test]
fn bad_volumes_are_located() {
    let p = "job.j.group.g.task.t.config.volumes";
    for (extra, want) in [
        (
            r#"        volumes = ["shared"]"#,
            format!("t.hcl:7:20: {p}[0]: expected \"SOURCE:TARGET\" or \"SOURCE:TARGET:MODE\" (MODE ro or rw), got \"shared\""),
        ),
        (
            r#"        volumes = ["a:/a", "shared:data"]"#,
            format!("t.hcl:7:28: {p}[1]: the target \"data\" must be an absolute path in the container, without \"..\""),
        ),
        (
            r#"        volumes = ["shared:/data:rx"]"#,
            format!("t.hcl:7:20: {p}[0]: the mode \"rx\" must be \"ro\" or \"rw\""),
        ),
        (
            r#"        volumes = ["a/../../../etc:/etc"]"#,
            format!("t.hcl:7:20: {p}[0]: the source \"a/../../../etc\" leaves the task's dir: a relative source is taken from the task's dir (<alloc_dir>/t) and must stay in it or in the alloc's shared dir (../alloc); the alloc dir's logs and exit files are not the task's (an absolute source is a host bind)"),
        ),
        (
            r#"        volumes = ["..:/whole-alloc"]"#,
            format!("t.hcl:7:20: {p}[0]: the source \"..\" leaves the task's dir: a relative source is taken from the task's dir (<alloc_dir>/t) and must stay in it or in the alloc's shared dir (../alloc); the alloc dir's logs and exit files are not the task's (an absolute source is a host bind)"),
        ),
        (
            r#"        volumes = ["../logs:/logs"]"#,
            format!("t.hcl:7:20: {p}[0]: the source \"../logs\" leaves the task's dir: a relative source is taken from the task's dir (<alloc_dir>/t) and must stay in it or in the alloc's shared dir (../alloc); the alloc dir's logs and exit files are not the task's (an absolute source is a host bind)"),
        ),
        (
            r#"        volumes = [":/data"]"#,
            format!("t.hcl:7:20: {p}[0]: the source \"\" must be a path relative to the task's dir or an absolute host path"),
        ),
        (
            r#"        volumes = ["a:/local"]"#,
            format!("t.hcl:7:20: {p}[0]: the target \"/local\" is where the driver binds the alloc's dirs (/alloc and /local): choose another path"),
        ),
        (
            r#"        volumes = ["a:/data", "b:/data/"]"#,
            format!("t.hcl:7:31: {p}[1]: the target \"/data/\" is already bound by volumes[0]"),
        ),
        (
            r#"        volumes = "a:/data""#,
            format!("t.hcl:7:19: {p}: must be a list of strings, got \"a:/data\""),
        ),
    ] {
        assert_eq!(shown(&docker_config(extra)), [want], "{extra}");
    }
}

#[test]
fn bad_devices_and_caps_are_located() {
    let p = "job.j.group.g.task.t.config";
    for (extra, want) in [
        (
            r#"        devices = [{ container_path = "/dev/fuse" }]"#,
            format!("t.hcl:7:20: {p}.devices[0]: missing host_path: expected host_path = \"/dev/...\", the device on the host"),
        ),
        (
            r#"        devices = [{ host_path = "/dev/fuse", cgroup_permissions = "rx" }]"#,
            format!("t.hcl:7:68: {p}.devices[0].cgroup_permissions: must be some of r, w and m, each at most once (such as \"rwm\" or \"r\"), got \"rx\""),
        ),
        (
            r#"        devices = [{ host_path = "/dev/fuse", cgroup_permissions = "rr" }]"#,
            format!("t.hcl:7:68: {p}.devices[0].cgroup_permissions: must be some of r, w and m, each at most once (such as \"rwm\" or \"r\"), got \"rr\""),
        ),
        (
            r#"        devices = [{ host_path = "/dev/fuse", cgroup_permissions = "" }]"#,
            format!("t.hcl:7:68: {p}.devices[0].cgroup_permissions: must be some of r, w and m, each at most once (such as \"rwm\" or \"r\"), got \"\""),
        ),
        (
            r#"        devices = [{ host_path = "/dev/fuse", mode = "rw" }]"#,
            format!("t.hcl:7:47: {p}.devices[0].mode: unknown attribute \"mode\" (expected one of: host_path, container_path, cgroup_permissions)"),
        ),
        (
            r#"        devices = ["/dev/fuse"]"#,
            format!("t.hcl:7:20: {p}.devices[0]: must be an object {{ host_path = \"/dev/...\" }}, got \"/dev/fuse\""),
        ),
        (
            r#"        cap_add = ["NET_ADMIN", "NET_ADMN"]"#,
            format!("t.hcl:7:33: {p}.cap_add[1]: unknown capability \"NET_ADMN\": expected a Linux capability such as \"NET_ADMIN\" (or \"CAP_NET_ADMIN\"), or \"ALL\""),
        ),
        (
            r#"        cap_drop = [12]"#,
            format!("t.hcl:7:21: {p}.cap_drop[0]: must be a string, got 12"),
        ),
    ] {
        assert_eq!(shown(&docker_config(extra)), [want], "{extra}");
    }
}

#[test]
fn docker_host_fields_are_refused_for_process_drivers() {
    for (driver, field, value) in [
        ("exec", "volumes", r#"["shared:/data"]"#),
        ("raw_exec", "devices", r#"[{ host_path = "/dev/fuse" }]"#),
        ("exec", "cap_add", r#"["NET_ADMIN"]"#),
        ("raw_exec", "cap_drop", r#"["ALL"]"#),
    ] {
        let src = format!("job \"j\" {{\n  group \"g\" {{\n    task \"t\" {{\n      driver = \"{driver}\"\n      config {{\n        command = \"/bin/true\"\n        {field} = {value}\n      }}\n    }}\n  }}\n}}\n");
        assert_eq!(
            shown(&src),
            [format!("t.hcl:7:9: job.j.group.g.task.t.config.{field}: \"{field}\" is not a field of the {driver} driver ({driver} accepts: command, args)")],
        );
    }
}

#[test]
fn every_bad_host_field_of_a_file_is_reported() {
    let e = shown(&docker_config(
        "        volumes = [\"../../x:/x\", \"a:b\"]\n        devices = [{ cgroup_permissions = \"w\" }]\n        cap_add = [\"FLY\"]",
    ));
    assert_eq!(e.len(), 4, "{e:#?}");
    assert!(e[0].starts_with("t.hcl:7:20: job.j.group.g.task.t.config.volumes[0]: the source"));
    assert!(e[1].starts_with("t.hcl:7:34: job.j.group.g.task.t.config.volumes[1]: the target"));
    assert!(
        e[2].starts_with("t.hcl:8:20: job.j.group.g.task.t.config.devices[0]: missing host_path")
    );
    assert!(
        e[3].starts_with("t.hcl:9:20: job.j.group.g.task.t.config.cap_add[0]: unknown capability")
    );
}

proptest::proptest! {
    #[test]
    fn parsing_never_panics(src in proptest::prelude::any::<String>()) {
        let _ = parse_str(&src, "p");
        let _ = parse_str(&format!("{{{src}"), "p");
    }

    #[test]
    fn mutated_job_files_never_panic(cut in 0usize..600, insert in "[{}\"=\\[\\]$ a-z0-9\n#.-]{0,8}") {
        let mut s = GREET.to_string();
        let mut at = cut.min(s.len());
        while !s.is_char_boundary(at) { at -= 1; }
        s.insert_str(at, &insert);
        let _ = parse_str(&s, "p");
    }
}

#[test]
fn resource_options_decode() {
    let job = parse_str(
        &task_with(
            "      resources {\n        memory = 64\n        memory_max = 128\n        cpu_hard_limit = true\n        io_weight = 500\n        oom_kill_group = true\n      }",
        ),
        "t.hcl",
    )
    .unwrap_or_else(|d| panic!("{d}"));
    let r = &job.groups[0].tasks[0].resources;
    assert_eq!((r.memory, r.memory_max), (64, Some(128)));
    assert!(r.cpu_hard_limit && r.oom_kill_group);
    assert_eq!(r.io_weight, Some(500));
    let d = Resources::default();
    assert_eq!(
        (
            d.memory_max,
            d.cpu_hard_limit,
            d.io_weight,
            d.oom_kill_group
        ),
        (None, false, None, false)
    );
}

#[test]
fn resource_options_are_checked_where_they_are_written() {
    one_err(
        &task_with("      resources {\n        memory = 64\n        memory_max = 32\n      }"),
        10,
        22,
        "job.web.group.g.task.t.resources.memory_max",
        "must be at least memory (64 MB)",
    );
    one_err(
        &task_with("      resources {\n        io_weight = 0\n      }"),
        9,
        21,
        "job.web.group.g.task.t.resources.io_weight",
        "must be an integer 1-10000, got 0",
    );
    one_err(
        &task_with("      resources {\n        io_weight = 10001\n      }"),
        9,
        21,
        "job.web.group.g.task.t.resources.io_weight",
        "must be an integer 1-10000",
    );
    one_err(
        &task_with("      resources {\n        cpu_hard_limit = \"yes\"\n      }"),
        9,
        26,
        "job.web.group.g.task.t.resources.cpu_hard_limit",
        "must be true or false",
    );
}

const GROUP_NET: &str = r#"job "web" {
  group "g" {
    network {
      mode = "host"
      port "http" {}
      port "admin" { static = 9090 }
    }
    task "server" {
      driver = "raw_exec"
      config {
        command = "/bin/true"
      }
      resources {
        network {
          port "debug" {}
        }
      }
    }
    task "box" {
      driver = "docker"
      config {
        image = "busybox"
        ports = ["http"]
      }
    }
  }
}
"#;

#[test]
fn a_group_network_gives_ports_to_the_group_and_docker_names_those_it_publishes() {
    let job = parse_str(GROUP_NET, "t.hcl").unwrap();
    let g = &job.groups[0];
    let labels: Vec<&str> = g.network.iter().map(|p| p.label.as_str()).collect();
    assert_eq!(labels, ["http", "admin"]);
    assert_eq!(g.network[1].static_port, Some(9090));
    assert_eq!(g.tasks[0].resources.ports[0].label, "debug");
    assert_eq!(g.tasks[1].config.ports, ["http"]);
}

#[test]
fn group_ports_are_checked_against_the_tasks_and_the_mode() {
    // A docker task names a port the group does not have.
    let src = GROUP_NET.replace("ports = [\"http\"]", "ports = [\"web\"]");
    one_err(
        &src,
        23,
        17,
        "job.web.group.g.task.box.config.ports",
        "\"web\" is not a port of the group's network block (it has \"http\", \"admin\")",
    );
    // A task's port label is the group's too.
    let src = GROUP_NET.replace("port \"debug\" {}", "port \"http\" {}");
    let e = errs(&src);
    assert_eq!(e.len(), 1, "{e:#?}");
    assert_eq!(
        e[0].path,
        "job.web.group.g.task.server.resources.network.port.http"
    );
    assert!(e[0].message.contains("is the group's too"), "{e:?}");
    // A task's static port is the group's static port.
    let src = GROUP_NET.replace("port \"debug\" {}", "port \"debug\" { static = 9090 }");
    let e = errs(&src);
    assert!(
        e.iter()
            .any(|d| d.message.contains("static port 9090 is used twice")),
        "{e:#?}"
    );
    // Bridge mode needs namespaces tend does not make.
    let src = GROUP_NET.replace("mode = \"host\"", "mode = \"bridge\"");
    one_err(
        &src,
        4,
        14,
        "job.web.group.g.network.mode",
        "\"host\" is the only mode",
    );
    // Labels are unique in the group's block.
    let src = GROUP_NET.replace("port \"admin\"", "port \"http\"");
    let e = errs(&src);
    assert!(
        e.iter().any(|d| d
            .message
            .contains("duplicate port label \"http\" in this group")),
        "{e:#?}"
    );
}
