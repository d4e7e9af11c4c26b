//! Figure 6: the OCI runtime CLI and Slurm.
//!
//! 6a: `tend-spawn oci run` of a busybox bundle beside `runc run` and `crun
//! run` of the very same bundle (one config.json, one rootfs), round-robin,
//! whole process. The bundle is `runc spec`'s, with `/bin/true` for its
//! process and without what tend-spawn refuses (each removed field is named
//! in the row's note), so every runtime does the same work.
//!
//! 6b: `srun /bin/true` on a one-node Slurm cluster (`.ci/slurm`), with
//! Slurm's default launch and with `srun --container` through oci.conf naming
//! `tend-spawn oci` as the runtime, round-robin on the same cluster.

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use serde_json::Value;

use crate::latency::{ms, oci_bundle};
use crate::report::Row;
use crate::{say, sum, which, Bench};

/// One runtime's command line up to its verb: the program and its leading
/// arguments (`tend-spawn oci --root S`, `runc --root S`).
struct Runtime {
    name: String,
    argv: Vec<String>,
    /// `run` leaves a record to delete (tend-spawn keeps it, as runc does
    /// only with `--keep`).
    delete_after: bool,
}

impl Runtime {
    fn command(&self, verb: &[&str]) -> Command {
        let mut c = Command::new(&self.argv[0]);
        c.args(&self.argv[1..]).args(verb);
        c.stdin(Stdio::null()).stdout(Stdio::null());
        c.stderr(Stdio::piped());
        c
    }
}

/// Run `cmd`; its stderr is the error.
fn checked(mut cmd: Command, what: &str) -> Result<(), String> {
    let o = cmd.output().map_err(|e| format!("{what}: {e}"))?;
    if o.status.success() {
        return Ok(());
    }
    Err(format!(
        "{what}: {} {}",
        o.status,
        String::from_utf8_lossy(&o.stderr).trim()
    ))
}

/// The runtimes' state roots: on tmpfs, as `/run` is where they live (runc's
/// `/run/runc`, tend-spawn's `/run/tend-oci`), in the harness's own dir
/// there, which its cleanup removes.
fn state_root() -> std::path::PathBuf {
    std::path::PathBuf::from(format!("/dev/shm/tb{}/oci6", std::process::id()))
}

/// What of `runc spec`'s bundle tend-spawn refuses, removed from it; the
/// removed fields, named. Everything else stays, for every runtime.
pub fn strip_for_tend(config: &mut Value) -> Vec<String> {
    let mut removed = Vec::new();
    if let Some(p) = config["process"].as_object_mut() {
        if p.remove("capabilities").is_some() {
            removed.push("process.capabilities".to_string());
        }
    }
    if let Some(l) = config["linux"].as_object_mut() {
        if l.remove("resources").is_some() {
            removed.push("linux.resources (devices)".to_string());
        }
    }
    if let Some(m) = config["mounts"].as_array_mut() {
        m.retain(|m| {
            let kind = m["type"].as_str().unwrap_or("bind");
            let dest = m["destination"].as_str().unwrap_or("");
            // tend-spawn makes /dev itself, with its nodes.
            let keep = matches!((kind, dest), ("proc", "/proc") | ("bind", _))
                || (kind == "tmpfs" && dest != "/dev");
            if !keep {
                removed.push(format!("mount {kind} at {dest}"));
            }
            keep
        });
    }
    removed
}

impl Bench {
    /// Figure 6 (both parts).
    pub(crate) fn oci(&mut self) {
        let what = "tend-spawn oci run of a busybox bundle (/bin/true), whole process";
        if !self.root {
            self.rows.push(Row::not_measured("6a", what, "needs root"));
            self.rows
                .push(Row::not_measured("6b", "srun /bin/true", "needs root"));
            return;
        }
        let Some(runc) = which("runc").or_else(|| which("crun")) else {
            self.rows.push(Row::not_measured(
                "6a",
                what,
                "neither runc nor crun is installed (their `spec` writes the bundle)",
            ));
            return;
        };
        let dir = self.base.join("oci6");
        let bundle = match oci_bundle(&runc, &dir, &["/bin/true"]).and_then(|b| {
            let path = b.join("config.json");
            let mut v: Value = serde_json::from_slice(&fs::read(&path).map_err(|e| e.to_string())?)
                .map_err(|e| format!("config.json: {e}"))?;
            let removed = strip_for_tend(&mut v);
            fs::write(
                &path,
                serde_json::to_vec_pretty(&v).map_err(|e| e.to_string())?,
            )
            .map_err(|e| e.to_string())?;
            Ok((b, removed))
        }) {
            Ok(b) => b,
            Err(e) => {
                self.rows.push(Row::not_measured("6a", what, e));
                return;
            }
        };
        self.oci_run(&bundle.0, &bundle.1);
        self.srun(&bundle.0);
    }

    /// 6a: the runtimes round-robin on the same bundle.
    fn oci_run(&mut self, bundle: &Path, removed: &[String]) {
        let p = self.plan;
        let state = |n: &str| state_root().join(n);
        let mut runtimes = vec![Runtime {
            name: "tend-spawn oci".into(),
            argv: vec![
                self.spawn_bin.display().to_string(),
                "oci".into(),
                "--root".into(),
                state("tend").display().to_string(),
            ],
            delete_after: true,
        }];
        for rt in ["runc", "crun"] {
            if let Some(bin) = which(rt) {
                let s = state(rt);
                runtimes.push(Runtime {
                    name: rt.into(),
                    argv: vec![
                        bin.display().to_string(),
                        "--root".into(),
                        s.display().to_string(),
                    ],
                    delete_after: false,
                });
            }
        }
        say(&format!(
            "6a: {} run of one busybox bundle, round-robin",
            runtimes
                .iter()
                .map(|r| r.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ));
        nix::unistd::sync();
        let n = runtimes.len();
        let mut run_ms: Vec<Vec<f64>> = vec![Vec::new(); n];
        let mut delete_ms: Vec<f64> = Vec::new();
        let mut failed: Vec<Option<String>> = vec![None; n];
        let b = bundle.display().to_string();
        for round in 0..p.slow + p.warm {
            for (k, rt) in runtimes.iter().enumerate() {
                if failed[k].is_some() {
                    continue;
                }
                let id = format!("tb{}-6a-{k}-{round}", std::process::id());
                if !rt.delete_after {
                    crate::cleanup::add_container(
                        Path::new(&rt.argv[0]),
                        Path::new(&rt.argv[2]),
                        &id,
                    );
                }
                let t = Instant::now();
                let r = checked(
                    rt.command(&["run", "--bundle", &b, &id]),
                    &format!("{} run", rt.name),
                );
                let d = ms(t);
                let t = Instant::now();
                let r = r.and_then(|()| {
                    if rt.delete_after {
                        checked(rt.command(&["delete", &id]), &format!("{} delete", rt.name))
                    } else {
                        Ok(())
                    }
                });
                let del = ms(t);
                match r {
                    Err(e) => failed[k] = Some(e),
                    Ok(()) if round >= p.warm => {
                        run_ms[k].push(d);
                        if rt.delete_after {
                            delete_ms.push(d + del);
                        }
                    }
                    Ok(()) => {}
                }
            }
        }
        let runc = runtimes.iter().position(|r| r.name == "runc");
        let base = runc.and_then(|k| sum(&run_ms[k]));
        let note = if removed.is_empty() {
            "runc spec's bundle, unchanged but for args and terminal".to_string()
        } else {
            format!("runc spec's bundle without {}", removed.join(", "))
        };
        for (k, rt) in runtimes.iter().enumerate() {
            let label = format!("{} run of the bundle (/bin/true), whole process", rt.name);
            if let Some(e) = &failed[k] {
                self.rows.push(Row::not_measured("6a", &label, e.clone()));
                continue;
            }
            let s = sum(&run_ms[k]);
            let mut row = Row::measured(if k == 0 { "6a" } else { "6a base" }, &label, "ms", s);
            if k == 0 {
                row = row.vs("runc run", base).note(&note);
                let met = s.zip(base).map(|(s, b)| s.median <= b.median);
                row = row.target("<= runc run", met);
            } else if Some(k) != runc {
                row = row.vs("runc run", base);
            }
            self.rows.push(row);
        }
        if failed[0].is_none() {
            self.rows.push(
                Row::measured(
                    "6a",
                    "tend-spawn oci run + delete (runc run deletes its container itself)",
                    "ms",
                    sum(&delete_ms),
                )
                .vs("runc run", base),
            );
        }
    }

    /// 6b: srun with the default launch and through tend-spawn oci, on one
    /// cluster, round-robin.
    fn srun(&mut self, bundle: &Path) {
        let what = "srun /bin/true, default launch and through oci.conf (tend-spawn oci)";
        let harness = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.ci/slurm");
        if which("srun").is_none() || which("slurmctld").is_none() || which("munged").is_none() {
            self.rows.push(Row::not_measured(
                "6b",
                what,
                "slurm-wlm and munge are not installed (.ci/slurm install)",
            ));
            return;
        }
        let dir = self.base.join("slurm6");
        let state = state_root().join("slurm");
        let cluster = dir.join("cluster");
        if let Err(e) = fs::create_dir_all(&dir) {
            self.rows.push(Row::not_measured("6b", what, e.to_string()));
            return;
        }
        let rt = format!(
            "{} oci --root {}",
            self.spawn_bin.display(),
            state.display()
        );
        let conf = dir.join("oci.conf");
        let id = "%n.%u.%j.%s.%t";
        let text = format!(
            "RunTimeQuery=\"{rt} state {id}\"\nRunTimeKill=\"{rt} kill -a {id}\"\n\
             RunTimeDelete=\"{rt} delete --force {id}\"\nRunTimeRun=\"{rt} run {id} -b %b\"\n"
        );
        if let Err(e) = fs::write(&conf, text) {
            self.rows.push(Row::not_measured("6b", what, e.to_string()));
            return;
        }
        say("6b: a one-node Slurm cluster (.ci/slurm up)");
        let port = (20000 + 2 * (std::process::id() % 10000)).to_string();
        let up = Command::new(&harness)
            .arg("up")
            .arg(&cluster)
            .arg(&conf)
            .env("TEND_SLURM_PORT", &port)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output();
        let r = match up {
            Ok(o) if o.status.success() => self.srun_series(&cluster, bundle),
            Ok(o) => Err(format!(
                ".ci/slurm up: {} {}",
                o.status,
                String::from_utf8_lossy(&o.stderr).trim()
            )),
            Err(e) => Err(format!(".ci/slurm up: {e}")),
        };
        let _ = Command::new(&harness)
            .arg("down")
            .arg(&cluster)
            .env("TEND_SLURM_PORT", &port)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        match r {
            Ok((default, tend)) => {
                let base = sum(&default);
                self.rows.push(
                    Row::measured(
                        "6b base",
                        "srun /bin/true, Slurm's default launch",
                        "ms",
                        base,
                    )
                    .note("one-node cluster (.ci/slurm), round-robin with the row below"),
                );
                self.rows.push(
                    Row::measured(
                        "6b",
                        "srun --container=BUNDLE /bin/true through tend-spawn oci (RunTimeRun, state, delete)",
                        "ms",
                        sum(&tend),
                    )
                    .vs("default launch", base),
                );
            }
            Err(e) => self.rows.push(Row::not_measured("6b", what, e)),
        }
    }

    fn srun_series(&self, cluster: &Path, bundle: &Path) -> Result<(Vec<f64>, Vec<f64>), String> {
        let p = self.plan;
        let conf = cluster.join("slurm.conf");
        let srun = |container: Option<&Path>| -> Result<f64, String> {
            let mut c = Command::new("srun");
            c.env("SLURM_CONF", &conf).arg("-Q");
            if let Some(b) = container {
                c.arg(format!("--container={}", b.display()));
            }
            c.arg("/bin/true")
                .stdin(Stdio::null())
                .stdout(Stdio::null());
            c.stderr(Stdio::piped());
            let t = Instant::now();
            let o = c.output().map_err(|e| format!("srun: {e}"))?;
            let d = ms(t);
            if !o.status.success() {
                return Err(format!(
                    "srun: {} {}",
                    o.status,
                    String::from_utf8_lossy(&o.stderr).trim()
                ));
            }
            Ok(d)
        };
        let (mut default, mut tend) = (Vec::new(), Vec::new());
        for round in 0..p.slow + p.warm {
            let d = srun(None)?;
            let t = srun(Some(bundle))?;
            if round >= p.warm {
                default.push(d);
                tend.push(t);
            }
        }
        Ok((default, tend))
    }
}
