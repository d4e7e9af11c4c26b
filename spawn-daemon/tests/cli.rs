//! The command line of the built binary: `--version`, refusals, a bad config.

use std::io::Write;
use std::process::{Command, Stdio};

use tend_proto::frame::{read_frame, MAX_FRAME_LEN};
use tend_proto::{Stage, StartReport};

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_tend-spawn"));
    c.env_clear();
    c
}

#[test]
fn version_works() {
    let out = bin().arg("--version").output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("tend-spawn "));
}

#[test]
fn unknown_argument_is_refused() {
    let out = bin()
        .arg("--config=/etc/x")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown argument"));
}

#[test]
fn garbage_config_is_a_config_failure() {
    let mut child = bin()
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"TEND garbage garbage")
        .unwrap();
    let mut out = child.stdout.take().unwrap();
    let report: StartReport = read_frame(&mut out, MAX_FRAME_LEN)
        .unwrap()
        .decode()
        .unwrap();
    assert!(
        matches!(
            report,
            StartReport::Failed {
                stage: Stage::Config,
                errno: 0,
                ..
            }
        ),
        "{report:?}"
    );
    assert_eq!(child.wait().unwrap().code(), Some(1));
}

#[test]
fn empty_stdin_is_a_config_failure() {
    let out = bin().stdin(Stdio::null()).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let report: StartReport = read_frame(&mut &out.stdout[..], MAX_FRAME_LEN)
        .unwrap()
        .decode()
        .unwrap();
    assert!(matches!(
        report,
        StartReport::Failed {
            stage: Stage::Config,
            ..
        }
    ));
}
