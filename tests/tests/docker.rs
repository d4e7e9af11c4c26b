//! The docker driver against a real engine: the one `.ci/docker-up` starts, found
//! at `$TEND_TEST_DOCKER_SOCK` (default `/run/tend-test-docker.sock`), with the
//! image `tend-test/busybox:latest` imported offline. Without an engine every
//! test prints "skipped: no docker engine" and passes (under `CI=true` it fails).
//!
//! Every test labels its containers with an alloc id of its own, and a guard
//! removes whatever carries that label when the test ends, failed or not.

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bollard::query_parameters::{ListContainersOptionsBuilder, RemoveContainerOptionsBuilder};
use bollard::Docker;
use tend::driver::docker::{
    logs, ContainerState, DockerDriver, DockerOptions, DockerStart, ExitMeta,
};
use tend::jobspec::{Driver, LogSpec, Port, Resources, Task, TaskConfig};
use tend::paths::AllocDir;
use tend::ports::AssignedPort;
use tend_proto::ExitStatus;
use tend_tests::docker::{socket, TEST_IMAGE};
use tend_tests::{require_root, skip_or_fail};

const IMAGE: &str = TEST_IMAGE;

/// One test's world: a driver, a raw client, an alloc dir and the cleanup guard.
struct World {
    driver: DockerDriver,
    docker: Docker,
    alloc_id: String,
    alloc: AllocDir,
    tmp: tempfile::TempDir,
    _guard: Guard,
}

/// Removes every container labelled with the test's alloc id, on drop.
struct Guard {
    socket: PathBuf,
    alloc_id: String,
}

impl Drop for Guard {
    fn drop(&mut self) {
        // Synchronous on purpose: a drop may run inside or outside a runtime.
        let host = format!("unix://{}", self.socket.display());
        let filter = format!("label=tend.alloc_id={}", self.alloc_id);
        let Ok(out) = std::process::Command::new("/usr/bin/docker")
            .args(["-H", &host, "ps", "-aq", "--filter", &filter])
            .output()
        else {
            return;
        };
        let ids: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .map(str::to_string)
            .collect();
        if !ids.is_empty() {
            let _ = std::process::Command::new("/usr/bin/docker")
                .args(["-H", &host, "rm", "-f", "-v"])
                .args(&ids)
                .output();
        }
    }
}

async fn world(opts: DockerOptions) -> Option<World> {
    let socket = socket();
    let driver = DockerDriver::new(DockerOptions {
        endpoint: socket.clone(),
        ..opts
    })
    .unwrap();
    let docker = match tokio::time::timeout(Duration::from_secs(10), driver.engine()).await {
        Ok(Ok(d)) => d.clone(),
        _ => {
            skip_or_fail(&format!("no docker engine at {}", socket.display()));
            return None;
        }
    };
    if docker.inspect_image(IMAGE).await.is_err() {
        skip_or_fail(&format!(
            "no docker engine with {IMAGE} (run .ci/docker-up)"
        ));
        return None;
    }
    // The driver mounts each bind of the alloc dir for the engine itself.
    require_root!(None);
    let tmp = tempfile::tempdir().unwrap();
    let alloc_id = tend::paths::new_alloc_id();
    let alloc = AllocDir {
        root: tmp.path().join("allocs").join(&alloc_id),
    };
    Some(World {
        driver,
        docker,
        alloc: alloc.clone(),
        _guard: Guard {
            socket,
            alloc_id: alloc_id.clone(),
        },
        alloc_id,
        tmp,
    })
}

fn task(name: &str, script: &str) -> Task {
    Task {
        name: name.into(),
        driver: Driver::Docker,
        user: None,
        config: TaskConfig {
            image: Some(IMAGE.into()),
            command: Some("/bin/sh".into()),
            args: vec!["-c".into(), script.into()],
            ..Default::default()
        },
        env: BTreeMap::new(),
        meta: BTreeMap::new(),
        resources: Resources {
            cpu: 100,
            memory: 64,
            pids_limit: Some(100),
            ports: Vec::new(),
            ..Resources::default()
        },
        logs: LogSpec::default(),
        kill_timeout: Duration::from_secs(5),
        kill_signal: 15,
        chroot_env: None,
        checks: Vec::new(),
    }
}

impl World {
    async fn start(&self, t: &Task, ports: &[AssignedPort]) -> Result<String, String> {
        self.alloc.create(&[t.name.as_str()]).unwrap();
        let labels = BTreeMap::from([("tend.test".to_string(), "docker".to_string())]);
        self.driver
            .start(&DockerStart {
                alloc_id: &self.alloc_id,
                alloc: &self.alloc,
                binds_dir: &self.tmp.path().join("run/binds"),
                task: t,
                job_labels: &labels,
                command: t.config.command.clone(),
                args: t.config.args.clone(),
                env: vec![
                    ("TEND_ALLOC_DIR".into(), "/alloc".into()),
                    ("TEND_TASK_DIR".into(), "/local".into()),
                    ("TEND_TASK_NAME".into(), t.name.clone()),
                ],
                ports,
            })
            .await
            .map_err(|e| e.to_string())
    }

    fn meta(&self, t: &str) -> ExitMeta {
        ExitMeta {
            alloc_id: self.alloc_id.clone(),
            task: t.to_string(),
            run: 1,
            exit_status_path: self.alloc.exit_status(t),
        }
    }

    /// The ids of the containers labelled with this test's alloc id.
    async fn containers(&self) -> Vec<String> {
        let filters = HashMap::from([(
            "label".to_string(),
            vec![format!("tend.alloc_id={}", self.alloc_id)],
        )]);
        let opts = ListContainersOptionsBuilder::new()
            .all(true)
            .filters(&filters)
            .build();
        self.docker
            .list_containers(Some(opts))
            .await
            .unwrap()
            .into_iter()
            .filter_map(|c| c.id)
            .collect()
    }

    /// The container's start, as the engine wrote it.
    async fn started_at(&self, id: &str) -> String {
        let engine = self.driver.engine().await.expect("engine");
        let c = engine.inspect_container(id, None).await.expect("inspect");
        c.state
            .and_then(|s| s.started_at)
            .expect("a started container")
    }

    async fn host_config(&self, id: &str) -> bollard::models::HostConfig {
        self.docker
            .inspect_container(id, None)
            .await
            .unwrap()
            .host_config
            .unwrap()
    }

    fn log(&self, task: &str, stream: &str) -> String {
        std::fs::read_to_string(self.alloc.log_file(task, stream)).unwrap_or_default()
    }
}

#[tokio::test]
async fn exit_code_logs_env_and_alloc_dir() {
    let Some(w) = world(DockerOptions::default()).await else {
        return;
    };
    let t = task(
        "echo",
        "sleep 0.5; echo out-line; echo err-line >&2; echo \"$TEND_ALLOC_DIR $TEND_TASK_DIR\"; \
         echo shared > /alloc/from-task; echo mine > /local/own; exit 3",
    );
    let id = w.start(&t, &[]).await.unwrap();
    assert_eq!(w.containers().await, vec![id.clone()]);
    let copy = w.driver.copy_logs(&id, &w.alloc, &t.name, t.logs, None);
    let status = w.driver.wait(&id, &w.meta(&t.name)).await.unwrap();
    copy.await.unwrap().unwrap();

    assert_eq!(status.exit_code, Some(3));
    assert_eq!(status.signal, None);
    assert!(!status.oom_killed);
    assert!(status.pid.is_some_and(|p| p > 0), "{status:?}");
    assert!(status.started_at.is_some());
    let file = ExitStatus::read(&w.alloc.exit_status(&t.name)).unwrap();
    assert_eq!(file, status);
    assert_eq!(file.shell_code(), 3);

    assert_eq!(w.log(&t.name, "stdout"), "out-line\n/alloc /local\n");
    assert_eq!(w.log(&t.name, "stderr"), "err-line\n");
    let shared = std::fs::read_to_string(w.alloc.shared().join("from-task")).unwrap();
    assert_eq!(shared, "shared\n");
    let own = std::fs::read_to_string(w.alloc.task_local(&t.name).join("own")).unwrap();
    assert_eq!(own, "mine\n");

    // A second copy from the stored cursor (a reattach) copies nothing again.
    let since = logs::read_cursor(&w.alloc, &t.name);
    assert!(since.is_some());
    let again = w.driver.copy_logs(&id, &w.alloc, &t.name, t.logs, since);
    again.await.unwrap().unwrap();
    assert_eq!(w.log(&t.name, "stdout"), "out-line\n/alloc /local\n");
    assert_eq!(w.log(&t.name, "stderr"), "err-line\n");

    // probe of an ended container: Exited, with the same status.
    match w.driver.probe(&id, &w.meta(&t.name)).await.unwrap() {
        ContainerState::Exited(s) => assert_eq!(s.exit_code, Some(3)),
        other => panic!("{other:?}"),
    }
    w.driver.remove(&id).await.unwrap();
    w.driver.remove(&id).await.unwrap();
    assert!(w.containers().await.is_empty());
}

fn cgroup_v1_file(controller: &str, id: &str, file: &str) -> Option<String> {
    let p = Path::new("/sys/fs/cgroup")
        .join(controller)
        .join("docker")
        .join(id)
        .join(file);
    std::fs::read_to_string(p)
        .ok()
        .map(|s| s.trim().to_string())
}

#[tokio::test]
async fn memory_and_cpu_limits_reach_the_cgroup() {
    let Some(w) = world(DockerOptions::default()).await else {
        return;
    };
    let mut t = task("limits", "sleep 30");
    t.resources.memory = 48;
    t.resources.cpu = 300;
    let id = w.start(&t, &[]).await.unwrap();
    let h = w.host_config(&id).await;
    assert_eq!(h.memory, Some(48 * 1024 * 1024));
    assert_eq!(h.memory_swap, Some(48 * 1024 * 1024));
    assert_eq!(h.cpu_shares, Some(300));
    match cgroup_v1_file("memory", &id, "memory.limit_in_bytes") {
        Some(limit) => {
            assert_eq!(limit, (48u64 * 1024 * 1024).to_string());
            assert_eq!(
                cgroup_v1_file("memory", &id, "memory.memsw.limit_in_bytes")
                    .unwrap_or_else(|| limit.clone()),
                limit
            );
            assert_eq!(
                cgroup_v1_file("cpu", &id, "cpu.shares").as_deref(),
                Some("300")
            );
        }
        None => println!("no cgroup v1 docker/<id> dir here: checked the engine's record only"),
    }
    w.driver.stop(&id, 9, Duration::from_secs(5)).await.unwrap();
    w.driver.remove(&id).await.unwrap();
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test]
async fn a_port_is_reachable_on_its_host_port() {
    let Some(w) = world(DockerOptions::default()).await else {
        return;
    };
    let mut t = task(
        "web",
        "while true; do echo hello-from-container | nc -l -p 8080; done",
    );
    t.resources.ports = vec![Port {
        label: "http".into(),
        static_port: None,
        to: None,
    }];
    t.config.port_map = BTreeMap::from([("http".to_string(), 8080)]);
    let host_port = free_port();
    let ports = [AssignedPort {
        label: "http".into(),
        host_ip: "127.0.0.1".parse().unwrap(),
        host_port,
        to: None,
    }];
    let id = w.start(&t, &ports).await.unwrap();

    let h = w.host_config(&id).await;
    let pb = h.port_bindings.unwrap();
    for proto in ["tcp", "udp"] {
        let b = pb[&format!("8080/{proto}")].as_ref().unwrap();
        assert_eq!(
            b[0].host_port.as_deref(),
            Some(host_port.to_string().as_str())
        );
    }

    let deadline = Instant::now() + Duration::from_secs(15);
    let got = loop {
        let attempt = std::net::TcpStream::connect(("127.0.0.1", host_port)).and_then(|mut s| {
            s.set_read_timeout(Some(Duration::from_secs(2)))?;
            let mut buf = String::new();
            s.read_to_string(&mut buf)?;
            Ok(buf)
        });
        match attempt {
            Ok(s) if s.contains("hello-from-container") => break s,
            _ if Instant::now() > deadline => panic!("port {host_port}: no answer: {attempt:?}"),
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    };
    assert_eq!(got, "hello-from-container\n");
    w.driver.stop(&id, 9, Duration::from_secs(5)).await.unwrap();
    w.driver.remove(&id).await.unwrap();
}

#[tokio::test]
async fn privileged_only_when_asked_and_allowed() {
    let Some(w) = world(DockerOptions::default()).await else {
        return;
    };
    let mut t = task("priv", "sleep 30");
    t.config.privileged = true;
    let e = w.start(&t, &[]).await.unwrap_err();
    assert_eq!(
        e,
        "task priv: config.privileged: the agent does not allow privileged containers \
         (set allow_privileged = true in plugin \"docker\")"
    );
    assert!(w.containers().await.is_empty());

    let Some(allowing) = world(DockerOptions {
        allow_privileged: true,
        ..Default::default()
    })
    .await
    else {
        return;
    };
    let plain = task("plain", "sleep 30");
    let id = allowing.start(&plain, &[]).await.unwrap();
    assert_eq!(allowing.host_config(&id).await.privileged, Some(false));
    let mut ids = vec![id];
    match allowing.start(&t, &[]).await {
        Ok(id2) => {
            assert_eq!(allowing.host_config(&id2).await.privileged, Some(true));
            ids.push(id2);
        }
        // Some sandboxes cannot hand a container every capability: the engine
        // refuses at start, and the driver must leave nothing behind.
        Err(e) if e.contains("operation not permitted") => {
            println!("privileged containers cannot run on this host: {e}");
            assert_eq!(allowing.containers().await, ids);
        }
        Err(e) => panic!("{e}"),
    }
    for id in ids {
        allowing
            .driver
            .stop(&id, 9, Duration::from_secs(5))
            .await
            .unwrap();
        allowing.driver.remove(&id).await.unwrap();
    }
}

#[tokio::test]
async fn bad_dns_and_network_mode_are_refused_before_any_container() {
    let Some(w) = world(DockerOptions::default()).await else {
        return;
    };
    assert!(w.containers().await.is_empty());
    let mut t = task("dns", "true");
    t.config.dns_servers = vec!["8.8.8.8".into(), "not-an-ip".into()];
    let e = w.start(&t, &[]).await.unwrap_err();
    assert_eq!(
        e,
        "task dns: config.dns_servers: \"not-an-ip\" is not an IP address"
    );
    let mut t = task("net", "true");
    t.config.network_mode = Some("overlay-please".into());
    let e = w.start(&t, &[]).await.unwrap_err();
    assert!(e.contains("config.network_mode: \"overlay-please\""), "{e}");
    let mut t = task("args", "true");
    t.config.command = None;
    let e = w.start(&t, &[]).await.unwrap_err();
    assert!(e.contains("config.args: args need a command"), "{e}");
    assert!(w.containers().await.is_empty());
}

#[tokio::test]
async fn a_container_removed_behind_our_back_probes_as_vanished() {
    let Some(w) = world(DockerOptions::default()).await else {
        return;
    };
    let t = task("gone", "sleep 60");
    let id = w.start(&t, &[]).await.unwrap();
    assert_eq!(
        w.driver.probe(&id, &w.meta(&t.name)).await.unwrap(),
        ContainerState::Running
    );
    let force = RemoveContainerOptionsBuilder::new().force(true).build();
    w.docker.remove_container(&id, Some(force)).await.unwrap();
    assert_eq!(
        w.driver.probe(&id, &w.meta(&t.name)).await.unwrap(),
        ContainerState::Vanished
    );
    assert!(!w.alloc.exit_status(&t.name).exists());
    // Stop and remove of a vanished container are no errors; wait says so.
    w.driver
        .stop(&id, 15, Duration::from_secs(1))
        .await
        .unwrap();
    w.driver.remove(&id).await.unwrap();
    let e = w.driver.wait(&id, &w.meta(&t.name)).await.unwrap_err();
    assert!(e.to_string().contains("does not exist"), "{e}");
}

#[tokio::test]
async fn stop_sends_the_kill_signal_then_escalates() {
    let Some(w) = world(DockerOptions::default()).await else {
        return;
    };
    // Handles SIGTERM: ends at once with its own code.
    let polite = task(
        "polite",
        "trap 'exit 7' TERM; while true; do sleep 0.1; done",
    );
    let id = w.start(&polite, &[]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t0 = Instant::now();
    w.driver
        .stop(&id, 15, Duration::from_secs(10))
        .await
        .unwrap();
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
    let s = w.driver.wait(&id, &w.meta(&polite.name)).await.unwrap();
    assert_eq!(s.exit_code, Some(7));

    // Ignores SIGTERM: SIGKILL after the timeout.
    let stubborn = task("stubborn", "trap '' TERM; while true; do sleep 0.1; done");
    let id = w.start(&stubborn, &[]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t0 = Instant::now();
    w.driver
        .stop(&id, 15, Duration::from_secs(2))
        .await
        .unwrap();
    let took = t0.elapsed();
    assert!(took >= Duration::from_secs(2), "{took:?}");
    assert!(took < Duration::from_secs(10), "{took:?}");
    let s = w.driver.wait(&id, &w.meta(&stubborn.name)).await.unwrap();
    assert_eq!(s.exit_code, Some(137), "{s:?}");
    // Killed, not out of memory: the engine logged no OOM for it.
    assert!(!s.oom_killed, "{s:?}");
    assert!(!w.driver.oom_event_seen(&id, &w.started_at(&id).await).await);
}

#[tokio::test]
async fn the_log_copy_rotates() {
    let Some(w) = world(DockerOptions::default()).await else {
        return;
    };
    // 1 MB is the smallest max_file_size a job can ask; ~2.6 MB of lines.
    let mut t = task(
        "chatty",
        "i=0; while [ $i -lt 30000 ]; do \
         echo \"line $i xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\"; \
         i=$((i+1)); done",
    );
    t.logs = LogSpec {
        max_files: 3,
        max_file_size_mb: 1,
    };
    let id = w.start(&t, &[]).await.unwrap();
    let copy = w.driver.copy_logs(&id, &w.alloc, &t.name, t.logs, None);
    let s = w.driver.wait(&id, &w.meta(&t.name)).await.unwrap();
    assert_eq!(s.exit_code, Some(0));
    copy.await.unwrap().unwrap();

    let dir = w.alloc.logs();
    let files = ["chatty.stdout.2", "chatty.stdout.1", "chatty.stdout"];
    let mut all = String::new();
    for f in files {
        let text = std::fs::read_to_string(dir.join(f)).unwrap();
        assert!(text.len() as u64 <= 1024 * 1024, "{f}: {}", text.len());
        all.push_str(&text);
    }
    assert!(!dir.join("chatty.stdout.3").exists());
    assert_eq!(
        std::fs::metadata(dir.join("chatty.stdout.1"))
            .unwrap()
            .len(),
        1024 * 1024
    );
    // What is kept is the end of the stream, whole and in order.
    let lines: Vec<&str> = all.lines().collect();
    assert!(lines.last().unwrap().starts_with("line 29999 "));
    let first_whole = lines
        .iter()
        .position(|l| l.starts_with("line ") && l.len() == lines[lines.len() - 1].len())
        .unwrap();
    let n0: usize = lines[first_whole]
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    for (k, l) in lines[first_whole..].iter().enumerate() {
        assert!(l.starts_with(&format!("line {} ", n0 + k)), "{l}");
    }
    w.driver.remove(&id).await.unwrap();
}

#[tokio::test]
async fn a_missing_engine_fails_the_start_with_one_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let alloc = AllocDir {
        root: tmp.path().join("a"),
    };
    alloc.create(&["t"]).unwrap();
    let driver = DockerDriver::new(DockerOptions {
        endpoint: tmp.path().join("no-engine.sock"),
        ..Default::default()
    })
    .unwrap();
    let t = task("t", "true");
    let e = driver
        .start(&DockerStart {
            alloc_id: "a",
            alloc: &alloc,
            binds_dir: &tmp.path().join("binds"),
            task: &t,
            job_labels: &BTreeMap::new(),
            command: t.config.command.clone(),
            args: t.config.args.clone(),
            env: Vec::new(),
            ports: &[],
        })
        .await
        .unwrap_err()
        .to_string();
    let want = format!(
        "docker driver: cannot reach the engine at {}: ",
        tmp.path().join("no-engine.sock").display()
    );
    assert!(e.starts_with(&want), "{e}");
}

#[tokio::test]
async fn an_oom_kill_is_reported() {
    let Some(w) = world(DockerOptions::default()).await else {
        return;
    };
    let mut t = task(
        "hog",
        "x=$(head -c 200000000 /dev/zero | tr '\\0' a); echo survived",
    );
    t.resources.memory = 16;
    let id = w.start(&t, &[]).await.unwrap();
    let s = w.driver.wait(&id, &w.meta(&t.name)).await.unwrap();
    assert!(s.oom_killed, "{s:?}");
    assert_ne!(s.exit_code, Some(0), "{s:?}");
    let file = ExitStatus::read(&w.alloc.exit_status(&t.name)).unwrap();
    assert!(file.oom_killed);
    // The engine's own log of it, which the wait reads when the shim told
    // the engine of the OOM only after the exit (then `OOMKilled` is false).
    assert!(w.driver.oom_event_seen(&id, &w.started_at(&id).await).await);
    w.driver.remove(&id).await.unwrap();
}

#[tokio::test]
async fn a_log_copy_resumed_from_its_cursor_loses_nothing() {
    let Some(w) = world(DockerOptions::default()).await else {
        return;
    };
    let t = task(
        "ticker",
        "i=0; while [ $i -lt 40 ]; do echo tick $i; i=$((i+1)); sleep 0.05; done",
    );
    let id = w.start(&t, &[]).await.unwrap();
    let first = w.driver.copy_logs(&id, &w.alloc, &t.name, t.logs, None);
    tokio::time::sleep(Duration::from_millis(700)).await;
    // The agent goes away mid-stream ...
    first.abort();
    let _ = first.await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    // ... and the next one reattaches from the stored cursor.
    let since = logs::read_cursor(&w.alloc, &t.name);
    assert!(since.is_some());
    let second = w.driver.copy_logs(&id, &w.alloc, &t.name, t.logs, since);
    w.driver.wait(&id, &w.meta(&t.name)).await.unwrap();
    second.await.unwrap().unwrap();

    let text = w.log(&t.name, "stdout");
    let seen: Vec<u32> = text
        .lines()
        .map(|l| l.strip_prefix("tick ").unwrap().parse().unwrap())
        .collect();
    let mut unique = seen.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique, (0..40).collect::<Vec<_>>(), "{text}");
    // Only what came after the last stored cursor (200 ms at most) is copied twice.
    assert!(seen.len() - unique.len() <= 5, "{text}");
    w.driver.remove(&id).await.unwrap();
}

/// Makes a path of the test's temp dir traversable by every user, as a data
/// dir such as /var/lib/tend is: only tend's own modes then stand between
/// another local user and the alloc dir.
fn open_to_all(p: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// Item 12.1: another task of the alloc (or another user, were the alloc dir
/// reachable) swaps the volume source `alloc/conf` between a dir and a symlink
/// to a host dir, as fast as it can, while containers with
/// `../alloc/conf:/conf` start. Whatever the timing, no container ever sees or
/// writes the host dir: the driver binds the dir it opened without following
/// symlinks, never the path.
#[tokio::test]
async fn a_volume_source_swapped_for_a_symlink_never_brings_a_host_dir_in() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use tend::jobspec::{Volume, VolumeSource};

    let Some(w) = world(DockerOptions::default()).await else {
        return;
    };
    let mut t = task(
        "racer",
        "if [ -e /conf/marker ]; then echo LEAK; exit 42; fi; touch /conf/written-$$",
    );
    t.config.volumes = vec![Volume {
        source: VolumeSource::InAlloc("alloc/conf".into()),
        target: "/conf".into(),
        read_only: false,
    }];
    let secret = w.tmp.path().join("host-secret");
    std::fs::create_dir(&secret).unwrap();
    std::fs::write(secret.join("marker"), "host").unwrap();
    w.alloc.create(&[t.name.as_str()]).unwrap();
    let conf = w.alloc.shared().join("conf");
    let swap = w.alloc.shared().join("conf.swap");
    std::fs::create_dir(&conf).unwrap();
    std::os::unix::fs::symlink(&secret, &swap).unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let attacker = {
        let (stop, conf, swap) = (stop.clone(), conf.clone(), swap.clone());
        std::thread::spawn(move || {
            let mut swaps = 0u64;
            while !stop.load(Ordering::Relaxed) {
                // Fails once the test is over and its dirs are gone.
                if nix::fcntl::renameat2(
                    nix::fcntl::AT_FDCWD,
                    &conf,
                    nix::fcntl::AT_FDCWD,
                    &swap,
                    nix::fcntl::RenameFlags::RENAME_EXCHANGE,
                )
                .is_err()
                {
                    break;
                }
                swaps += 1;
                // Often enough to flip many times in a start, without taking a
                // core from the tests running beside.
                std::thread::sleep(Duration::from_micros(100));
            }
            swaps
        })
    };
    // A refused start is cheap; go on until a few dozen containers ran.
    let (mut ran, mut refused) = (0, 0);
    while ran < 30 && refused < 3000 {
        match w.start(&t, &[]).await {
            Ok(id) => {
                let s = w.driver.wait(&id, &w.meta(&t.name)).await.unwrap();
                w.driver.remove(&id).await.unwrap();
                assert_eq!(
                    s.exit_code,
                    Some(0),
                    "the container saw the host dir: {s:?}"
                );
                ran += 1;
            }
            Err(e) => {
                assert!(e.contains("goes through the symlink"), "{e}");
                refused += 1;
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    let swaps = attacker.join().unwrap();
    println!("{ran} containers ran, {refused} starts refused, {swaps} swaps");
    assert_eq!(ran, 30, "too few containers ran: the test proved nothing");
    let mut left: Vec<String> = std::fs::read_dir(&secret)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(left, ["marker"], "a container wrote into the host dir");
    assert_eq!(
        std::fs::read_dir(w.tmp.path().join("run/binds"))
            .unwrap()
            .count(),
        0,
        "a staged bind was left behind"
    );
}

/// Item 12.2: a container under the default policy leaves a setuid-root copy
/// of busybox and a world-writable device node in /alloc. Both are there on
/// the host, and another local user can neither see, run nor open them: the
/// chain to the alloc dir is the agent's alone. In the container /alloc and
/// /local are nosuid,nodev too: the engine binds the agent's mounts, flags and all.
#[tokio::test]
async fn a_setuid_file_a_container_leaves_in_alloc_is_out_of_other_users_reach() {
    use std::os::unix::fs::MetadataExt;

    let Some(w) = world(DockerOptions::default()).await else {
        return;
    };
    open_to_all(w.tmp.path());
    let t = task(
        "suid",
        "cp /bin/busybox /alloc/sush && chmod 4755 /alloc/sush && \
         mknod /alloc/mem c 1 1 && chmod 666 /alloc/mem && \
         grep -E ' /(alloc|local) ' /proc/self/mountinfo",
    );
    let id = w.start(&t, &[]).await.unwrap();
    let copy = w.driver.copy_logs(&id, &w.alloc, &t.name, t.logs, None);
    let s = w.driver.wait(&id, &w.meta(&t.name)).await.unwrap();
    copy.await.unwrap().unwrap();
    w.driver.remove(&id).await.unwrap();
    assert_eq!(s.exit_code, Some(0), "{s:?}: {}", w.log(&t.name, "stderr"));
    let mounted = w.log(&t.name, "stdout");
    let lines: Vec<&str> = mounted.lines().collect();
    assert_eq!(lines.len(), 2, "{mounted}");
    for l in lines {
        let opts = l.split(' ').nth(5).unwrap_or_default();
        assert!(
            opts.split(',').any(|o| o == "nosuid") && opts.split(',').any(|o| o == "nodev"),
            "in the container: {l}"
        );
    }

    let sush = w.alloc.shared().join("sush");
    let m = std::fs::metadata(&sush).unwrap();
    assert_eq!((m.uid(), m.mode() & 0o4000), (0, 0o4000), "not setuid root");
    let mem = w.alloc.shared().join("mem");

    let other = tend_tests::ThrowawayUser::create();
    let allocs = w.alloc.root.parent().unwrap();
    for (cmd, args) in [
        ("/bin/ls", vec![allocs.as_os_str()]),
        ("/usr/bin/stat", vec![sush.as_os_str()]),
        (sush.to_str().unwrap(), vec!["id".as_ref(), "-u".as_ref()]),
        ("/usr/bin/head", vec!["-c1".as_ref(), mem.as_os_str()]),
    ] {
        let r = other.run(cmd, &args);
        assert!(r.is_err(), "{} {cmd} {args:?} worked: {r:?}", other.name);
    }
}
