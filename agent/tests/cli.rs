//! The `tend` binary's offline verbs, run as a user runs them.
//!
//! These tests also make Cargo build `target/<profile>/tend` before any test
//! runs: a package's binaries are built for its own integration tests, and the
//! end-to-end tests in `tests/` drive that binary.

use std::path::Path;
use std::process::{Command, Output};

fn tend(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tend"))
        .args(args)
        .current_dir(dir)
        .env_remove("TEND_DATA_DIR")
        .env_remove("TEND_RUN_DIR")
        .output()
        .expect("run tend")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn version_names_the_binary() {
    let dir = tempfile::tempdir().unwrap();
    let out = tend(dir.path(), &["--version"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        text(&out.stdout).trim(),
        format!("tend {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn job_init_writes_a_job_that_validates() {
    let dir = tempfile::tempdir().unwrap();
    let out = tend(dir.path(), &["job", "init"]);
    assert!(out.status.success(), "{out:?}");
    let file = dir.path().join("example.tend.hcl");
    assert!(file.is_file(), "job init wrote no example.tend.hcl");

    let out = tend(dir.path(), &["validate", "example.tend.hcl"]);
    assert!(out.status.success(), "{out:?}");
    assert!(text(&out.stdout).contains("is valid"), "{out:?}");

    // A second init must not clobber the user's file.
    std::fs::write(&file, "edited").unwrap();
    let out = tend(dir.path(), &["job", "init"]);
    assert!(!out.status.success(), "init overwrote a file: {out:?}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "edited");
}

#[test]
fn validate_reports_every_error_with_its_place() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("bad.hcl"),
        "job \"x\" {\n  group \"g\" {\n    task \"t\" {\n      driver = \"nope\"\n      kill_timeout = \"5x\"\n    }\n  }\n}\n",
    )
    .unwrap();
    let out = tend(dir.path(), &["validate", "bad.hcl"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let all = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(
        all.contains("bad.hcl:4:16: job.x.group.g.task.t.driver: unknown driver \"nope\""),
        "{all}"
    );
    assert!(
        all.contains("bad.hcl:5:22: job.x.group.g.task.t.kill_timeout: bad duration \"5x\""),
        "{all}"
    );
    assert!(all.contains("2 errors in bad.hcl"), "{all}");
}

#[test]
fn the_examples_validate() {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    for name in ["hello.hcl", "isolated.hcl"] {
        let out = tend(&examples, &["validate", name]);
        assert!(out.status.success(), "{name}: {out:?}");
    }
}
