//! `tend doctor` as root checks the install a root agent uses, and says it is
//! fine when it is; each way someone else could change what root runs or
//! reads is one error line; the setuid install is checked only on request or
//! when tend-spawn has the setuid bit.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Output;

use tend_tests::{require_root, spawn_bin, Sandbox};

fn chmod(p: &Path, mode: u32) {
    fs::set_permissions(p, fs::Permissions::from_mode(mode)).unwrap();
}

struct Install {
    sb: Sandbox,
    _bin_base: tempfile::TempDir,
    bin_dir: PathBuf,
    spawn: PathBuf,
    config: PathBuf,
}

impl Install {
    /// A root install in the sandbox: tend-spawn copied into a dir of its
    /// own, an agent config naming the docker engine at `endpoint`.
    fn new(endpoint: &str) -> Install {
        let sb = Sandbox::new();
        // Apart from the data dir, whose mode a case below spoils.
        let bin_base = tempfile::tempdir().unwrap();
        chmod(bin_base.path(), 0o755);
        let bin_dir = bin_base.path().join("bin");
        fs::create_dir(&bin_dir).unwrap();
        chmod(&bin_dir, 0o755);
        let spawn = bin_dir.join("tend-spawn");
        fs::copy(spawn_bin(), &spawn).unwrap();
        chmod(&spawn, 0o755);
        let config = sb.scratch_dir().join("agent.hcl");
        fs::write(
            &config,
            format!("plugin \"docker\" {{\n  endpoint = \"{endpoint}\"\n}}\n"),
        )
        .unwrap();
        Install {
            sb,
            _bin_base: bin_base,
            bin_dir,
            spawn,
            config,
        }
    }

    fn doctor(&self, extra: &[&str]) -> (Option<i32>, String) {
        let mut args = vec![
            "doctor".to_string(),
            "--spawn-bin".into(),
            self.spawn.display().to_string(),
            "--config".into(),
            self.config.display().to_string(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let o: Output = self.sb.tend_command(&args).output().unwrap();
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr),
        )
    }
}

#[test]
fn a_root_install_is_fine_and_each_hole_is_one_error() {
    require_root!();
    let engine = std::env::var("TEND_TEST_DOCKER_SOCK").unwrap_or_default();
    let i = Install::new(if engine.is_empty() {
        "/nonexistent/docker.sock"
    } else {
        &engine
    });
    let (code, out) = i.doctor(&[]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.lines().all(|l| !l.starts_with("error: ")), "{out}");
    assert!(out.contains("only root can change it"), "{out}");
    assert!(out.contains("can hold tasks"), "{out}");
    assert!(out.contains("setuid install: not checked"), "{out}");
    assert!(out.ends_with("tend doctor: all is well\n"), "{out}");
    // The engine of .ci/docker-up where it runs (not inside the v2 guest).
    if !engine.is_empty() && std::os::unix::net::UnixStream::connect(&engine).is_ok() {
        assert!(
            out.contains(&format!("ok: docker: the engine at {engine} answers")),
            "{out}"
        );
    }

    // Each: spoil the install, mend it, the error line the spoil gives.
    type Hole<'a> = (&'a dyn Fn(), &'a dyn Fn(), &'a str);
    let holes: &[Hole<'_>] = &[
        (
            &|| chmod(&i.spawn, 0o775),
            &|| chmod(&i.spawn, 0o755),
            "has mode 0775: writable by group or other, who could become root",
        ),
        (
            &|| std::os::unix::fs::chown(&i.spawn, Some(65534), None).unwrap(),
            &|| std::os::unix::fs::chown(&i.spawn, Some(0), None).unwrap(),
            "is owned by uid 65534: the agent runs it as root",
        ),
        (
            &|| chmod(&i.bin_dir, 0o777),
            &|| chmod(&i.bin_dir, 0o755),
            "has mode 0777: others may replace what is in it",
        ),
        (
            &|| chmod(i.sb.data_dir(), 0o777),
            &|| chmod(i.sb.data_dir(), 0o700),
            "data dir",
        ),
    ];
    for (n, (spoil, mend, want)) in holes.iter().enumerate() {
        spoil();
        let (code, out) = i.doctor(&[]);
        mend();
        assert_eq!(code, Some(1), "hole {n}: {out}");
        let errors: Vec<&str> = out.lines().filter(|l| l.starts_with("error: ")).collect();
        assert_eq!(errors.len(), 1, "hole {n}: {out}");
        assert!(errors[0].contains(want), "hole {n}: {want:?} not in {out}");
        assert!(
            out.ends_with("tend doctor: fix the errors above\n"),
            "{out}"
        );
    }
    assert_eq!(i.doctor(&[]).0, Some(0));

    // Asked for: the setuid install, which this one is not.
    let (code, out) = i.doctor(&["--setuid"]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("setuid install (--setuid):"), "{out}");
    assert!(out.contains("want 4750 (no setuid bit)"), "{out}");
}

#[test]
fn an_engine_that_does_not_answer_is_a_note_not_an_error() {
    require_root!();
    let i = Install::new("/nonexistent/docker.sock");
    let (code, out) = i.doctor(&[]);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("note: docker: no engine answers at /nonexistent/docker.sock"),
        "{out}"
    );
}
