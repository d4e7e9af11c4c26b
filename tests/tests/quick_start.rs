//! The README's first command, taken from README.md itself so the two cannot
//! drift: its build step must build `tend-spawn` too, and its run step, run
//! against this build, runs the example job. Without a `tend-spawn` where
//! `tend` looks, the error says where it looked and how to build one.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use tend_tests::{bin, Sandbox, TendOutput};

const LONG: Duration = Duration::from_secs(30);

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// The one-line command of the first `sh` block under "## Two commands".
fn readme_quick_start() -> String {
    let readme = fs::read_to_string(workspace_root().join("README.md")).expect("README.md");
    let section = readme
        .split_once("## Two commands")
        .expect("README has a \"Two commands\" section")
        .1;
    let block = section
        .split_once("```sh\n")
        .and_then(|(_, rest)| rest.split_once("```"))
        .expect("a ```sh block in \"Two commands\"")
        .0;
    let lines: Vec<&str> = block.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "the quick start is one command: {block}");
    lines[0].trim().to_string()
}

/// A `tend` command run as a person runs it: from the workspace root, with no
/// `TEND_*` variable and a PATH that holds no `tend-spawn`, so the supervisor
/// is found beside `tend` or not at all.
fn as_a_person(program: &Path, args: &[String]) -> Command {
    let mut cmd = Command::new(program);
    cmd.args(args)
        .current_dir(workspace_root())
        .env("PATH", "/usr/bin:/bin")
        .stdin(Stdio::null());
    for (k, _) in std::env::vars_os() {
        if k.to_str().is_some_and(|k| k.starts_with("TEND_")) {
            cmd.env_remove(k);
        }
    }
    cmd
}

/// The run step's arguments, with the README's /tmp dirs swapped for the
/// sandbox's: tests running at once never share a data dir.
fn sandboxed_args(sb: &Sandbox, args: &[&str]) -> Vec<String> {
    for dir in ["/tmp/tend-data", "/tmp/tend-run"] {
        assert!(args.contains(&dir), "the quick start names {dir}: {args:?}");
    }
    args.iter()
        .map(|a| match *a {
            "/tmp/tend-data" => sb.data_dir().display().to_string(),
            "/tmp/tend-run" => sb.run_dir().display().to_string(),
            other => other.to_string(),
        })
        .collect()
}

fn run(sb: &Sandbox, cmd: Command) -> TendOutput {
    sb.spawn_captured(cmd).wait(LONG)
}

#[test]
fn the_readmes_first_command_builds_tend_spawn_and_runs_the_example() {
    let command = readme_quick_start();
    let (build, run_step) = command
        .split_once(" && ")
        .unwrap_or_else(|| panic!("the quick start builds, then runs: {command}"));

    // `cargo run --bin tend` or `-p tend` alone builds no tend-spawn: the build
    // step is the whole workspace, or names tend-spawn.
    let build: Vec<&str> = build.split_whitespace().collect();
    assert_eq!(build[..2], ["cargo", "build"], "{command}");
    let narrowed = build
        .iter()
        .any(|a| ["-p", "--package", "--bin"].contains(a) || a.starts_with("--package="));
    assert!(
        !narrowed || build.contains(&"tend-spawn"),
        "the build step must build tend-spawn: {command}"
    );
    let profile = if build.contains(&"--release") {
        "release"
    } else {
        "debug"
    };

    let words: Vec<&str> = run_step.split_whitespace().collect();
    assert_eq!(
        words[0],
        format!("target/{profile}/tend"),
        "the run step runs the tend just built: {command}"
    );
    // Run against this build of tend (debug under `cargo nextest run`), with
    // its tend-spawn beside it, as the build step leaves them.
    let sb = Sandbox::new();
    let out = run(
        &sb,
        as_a_person(&bin("tend"), &sandboxed_args(&sb, &words[1..])),
    );
    assert_eq!(out.code, Some(3), "{out}");
    assert!(out.stdout.contains("hello from greet\n"), "{out}");
    assert!(out.stderr.contains("greet: exited with code 3"), "{out}");
}

#[test]
fn without_tend_spawn_beside_it_tend_says_where_it_looked_and_how_to_build_it() {
    let sb = Sandbox::new();
    // A tend alone in its dir, the way `cargo run --bin tend` leaves it.
    let alone = sb.scratch_dir().join("bin");
    fs::create_dir_all(&alone).expect("mkdir");
    let tend = alone.join("tend");
    if fs::hard_link(bin("tend"), &tend).is_err() {
        fs::copy(bin("tend"), &tend).expect("copy tend");
    }
    let command = readme_quick_start();
    let words: Vec<&str> = command
        .split_once(" && ")
        .map_or(command.as_str(), |(_, r)| r)
        .split_whitespace()
        .collect();
    let out = run(&sb, as_a_person(&tend, &sandboxed_args(&sb, &words[1..])));
    assert_ne!(out.code, Some(0), "{out}");
    assert_ne!(out.code, Some(3), "{out}");
    let want = format!(
        "greet: failed to start: cannot execute tend-spawn: no {}/tend-spawn nor tend-spawn on PATH; \
         build it with `cargo build --release`",
        alone.display()
    );
    assert!(out.stderr.contains(&want), "want {want:?} in:\n{out}");
    assert!(
        out.stderr.contains("--spawn-bin or TEND_SPAWN_BIN"),
        "{out}"
    );

    // Named, but missing: that path is where it looked.
    let mut args = vec![
        "run".to_string(),
        "--spawn-bin".into(),
        "/nonexistent/tend-spawn".into(),
    ];
    args.extend(sandboxed_args(&sb, &words[2..]));
    let out = run(&sb, as_a_person(&tend, &args));
    assert!(
        out.stderr.contains(
            "cannot execute tend-spawn: /nonexistent/tend-spawn does not exist; build it"
        ),
        "{out}"
    );
}
