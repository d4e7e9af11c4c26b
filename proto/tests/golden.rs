//! Golden byte fixtures: the wire encoding of every message and every variant,
//! pinned byte for byte under `tests/fixtures/v1/`.
//!
//! Each fixture holds one whole frame (header and body). The test encodes the value
//! and compares with the file, then decodes the file and compares with the value.
//! A daemon started by version N-1 must stay reachable from an agent of version N,
//! so a fixture never changes: a new payload is a new variant with a new fixture.
//!
//! `TEND_BLESS=1 cargo test -p tend-proto --test golden` writes missing fixtures
//! (and rewrites changed ones, loudly: that is a wire break, see the README).
//!
//! The values are written out here in full, never built by helpers of the crate
//! (such as `config::example`), which may change without the wire changing.

use std::collections::BTreeSet;
use std::fmt::Debug;
use std::path::{Path, PathBuf};

use serde::{de::DeserializeOwned, Serialize};
use tend_proto::config::{
    Bind, CgroupOptions, CgroupSpec, ChrootSpec, ConfigExtra, CpuQuota, Detach, FirstConnection,
    Isolation, LogConfig, Mount, MountKind, Namespaces, TaskIds, TaskStart, TaskStdin,
};
use tend_proto::frame::{self, FrameDecoder, HEADER_LEN, MAGIC, MAX_FRAME_LEN};
use tend_proto::msg::{
    CgroupStats, CpuStats, ExecRequest, IoStats, MemoryStats, Pressure, PressureLine, PsiStats,
    Stats, Status, TaskState, Welcome,
};
use tend_proto::{
    ExitStatus, ExitStatusV1, Hello, Instance, Request, Response, SpawnConfig, Stage, StartReport,
    Token, PROTOCOL_VERSION,
};

/// The protocol version these fixtures were written with. They stay at 1 forever;
/// a later version adds `fixtures/v2/` beside them.
const FIXTURE_VERSION: u16 = 1;

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/v1")
}

fn blessing() -> bool {
    std::env::var_os("TEND_BLESS").is_some_and(|v| v == "1")
}

/// Checks one value against the fixture at the given path.
type Check = Box<dyn Fn(&Path) -> Result<(), String>>;

/// One pinned value: its fixture name and the check that runs it.
struct Case {
    name: &'static str,
    check: Check,
}

fn case<T>(name: &'static str, value: T) -> Case
where
    T: Serialize + DeserializeOwned + PartialEq + Debug + 'static,
{
    Case {
        name,
        check: Box::new(move |path| check_fixture(name, path, &value)),
    }
}

fn check_fixture<T>(name: &str, path: &Path, value: &T) -> Result<(), String>
where
    T: Serialize + DeserializeOwned + PartialEq + Debug,
{
    let encoded = frame::encode_with_version(FIXTURE_VERSION, value)
        .map_err(|e| format!("{name}: cannot encode {value:?}: {e}"))?;
    if PROTOCOL_VERSION == FIXTURE_VERSION {
        // While v1 is current, the fixtures are exactly what `frame::encode` writes.
        let current = frame::encode(value).map_err(|e| format!("{name}: {e}"))?;
        if current != encoded {
            return Err(format!("{name}: frame::encode differs from a v1 frame"));
        }
    }

    let on_disk = read_or_bless(name, path, &encoded)?;

    if on_disk != encoded {
        return Err(format!(
            "{name}: encoding changed; the wire only grows (STYLE rule 8): add a variant \
             instead of changing this one\n  fixture: {}\n  encoded: {}",
            hex(&on_disk),
            hex(&encoded)
        ));
    }

    // The header is what the design says: magic, u16 LE version, u32 LE length.
    if on_disk[..4] != MAGIC
        || on_disk[4..6] != FIXTURE_VERSION.to_le_bytes()
        || on_disk[6..HEADER_LEN]
            != u32::try_from(on_disk.len() - HEADER_LEN)
                .unwrap_or(u32::MAX)
                .to_le_bytes()
    {
        return Err(format!(
            "{name}: bad header {}",
            hex(&on_disk[..HEADER_LEN])
        ));
    }

    // Decoding goes through the same path a reader takes: the incremental decoder.
    let mut dec = FrameDecoder::new();
    dec.push(&on_disk);
    let frame = dec
        .next_frame()
        .map_err(|e| format!("{name}: decoder refused the fixture: {e}"))?
        .ok_or_else(|| format!("{name}: decoder wants more bytes"))?;
    if dec.buffered() != 0 {
        return Err(format!(
            "{name}: {} bytes left in the decoder",
            dec.buffered()
        ));
    }
    if frame.version != FIXTURE_VERSION {
        return Err(format!("{name}: frame version {}", frame.version));
    }
    let decoded: T = frame
        .decode()
        .map_err(|e| format!("{name}: cannot decode the fixture: {e}"))?;
    if &decoded != value {
        return Err(format!(
            "{name}: fixture decodes to\n  {decoded:?}\nexpected\n  {value:?}"
        ));
    }

    // And the blocking reader agrees.
    let mut reader = &on_disk[..];
    let blocking = frame::read_frame(&mut reader, MAX_FRAME_LEN)
        .map_err(|e| format!("{name}: read_frame refused the fixture: {e}"))?;
    if blocking != frame {
        return Err(format!("{name}: read_frame and FrameDecoder disagree"));
    }
    Ok(())
}

/// The fixture's bytes. When blessing, first write `fresh` where the file is
/// missing or differs (warning loudly about the latter).
fn read_or_bless(name: &str, path: &Path, fresh: &[u8]) -> Result<Vec<u8>, String> {
    let on_disk = match std::fs::read(path) {
        Ok(bytes) => Some(bytes),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(format!("{name}: cannot read {}: {e}", path.display())),
    };
    if !blessing() {
        return on_disk.ok_or_else(|| {
            format!(
                "{name}: fixture {} is missing; write it with \
                 `TEND_BLESS=1 cargo test -p tend-proto --test golden` and commit it",
                path.display()
            )
        });
    }
    if on_disk.as_deref() != Some(fresh) {
        if on_disk.is_some() {
            eprintln!(
                "WARNING: rewriting existing fixture {} -- this changes the wire \
                 and breaks agents talking to older daemons",
                path.display()
            );
        }
        std::fs::create_dir_all(fixture_dir()).map_err(|e| format!("{name}: {e}"))?;
        std::fs::write(path, fresh)
            .map_err(|e| format!("{name}: cannot write {}: {e}", path.display()))?;
    }
    Ok(fresh.to_vec())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn run(cases: Vec<Case>) {
    let dir = fixture_dir();
    let failures: Vec<String> = cases
        .iter()
        .filter_map(|c| (c.check)(&dir.join(format!("{}.bin", c.name))).err())
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

// ---------------------------------------------------------------- values

fn token() -> Token {
    // Distinct bytes, so a shifted field shows in the hex.
    let mut t = [0u8; 32];
    for (i, b) in t.iter_mut().enumerate() {
        *b = 0xa0 ^ u8::try_from(i).unwrap_or(0);
    }
    Token(t)
}

fn instance() -> Instance {
    Instance([
        0x00, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 0x99, 0xaa, 0xbb, 0xcc, 0xdd, 0xee,
        0xff,
    ])
}

fn exit_code_0() -> ExitStatusV1 {
    ExitStatusV1 {
        version: 1,
        alloc_id: "0123abcd".into(),
        task: "web".into(),
        run: 1,
        pid: Some(4242),
        wait_status: Some(0),
        exit_code: Some(0),
        signal: None,
        core_dumped: false,
        oom_killed: false,
        started_at: Some("2024-05-01T12:00:00Z".into()),
        finished_at: "2024-05-01T12:00:05Z".into(),
        error: None,
    }
}

fn exit_oom_killed() -> ExitStatusV1 {
    ExitStatusV1 {
        version: 1,
        alloc_id: "0123abcd".into(),
        task: "web".into(),
        run: 3,
        pid: Some(70000),
        wait_status: Some(9),
        exit_code: None,
        signal: Some(9),
        core_dumped: false,
        oom_killed: true,
        started_at: Some("2024-05-01T12:00:00Z".into()),
        finished_at: "2024-05-01T13:30:00.250Z".into(),
        error: None,
    }
}

fn exit_core_dumped() -> ExitStatusV1 {
    ExitStatusV1 {
        version: 1,
        alloc_id: "0123abcd".into(),
        task: "worker".into(),
        run: 2,
        pid: Some(99),
        wait_status: Some(11 | 0x80),
        exit_code: None,
        signal: Some(11),
        core_dumped: true,
        oom_killed: false,
        started_at: Some("2024-05-01T12:00:00Z".into()),
        finished_at: "2024-05-01T12:00:01Z".into(),
        error: None,
    }
}

fn exit_never_started() -> ExitStatusV1 {
    ExitStatusV1 {
        version: 1,
        alloc_id: "0123abcd".into(),
        task: "web".into(),
        run: 1,
        pid: None,
        wait_status: None,
        exit_code: None,
        signal: None,
        core_dumped: false,
        oom_killed: false,
        started_at: None,
        finished_at: "2024-05-01T12:00:00Z".into(),
        error: Some("exec /bin/nope: No such file or directory".into()),
    }
}

/// A task that lived through a child's OOM kill and exited 137 itself.
fn exit_child_oom_killed() -> ExitStatusV1 {
    ExitStatusV1 {
        version: 1,
        alloc_id: "0123abcd".into(),
        task: "batch".into(),
        run: 1,
        pid: Some(5150),
        wait_status: Some(137 << 8),
        exit_code: Some(137),
        signal: None,
        core_dumped: false,
        oom_killed: false,
        started_at: Some("2024-05-01T12:00:00Z".into()),
        finished_at: "2024-05-01T12:00:02Z".into(),
        error: None,
    }
}

fn spawn_config_minimal() -> SpawnConfig {
    SpawnConfig {
        alloc_id: "0123abcd".into(),
        task: "t".into(),
        run: 1,
        token: token(),
        command: "/bin/true".into(),
        args: vec![],
        env: vec![],
        cwd: "/".into(),
        alloc_dir: "/var/lib/tend/allocs/0123abcd".into(),
        socket_path: "/run/tend/0123abcd/t.sock".into(),
        logs: LogConfig {
            max_files: 10,
            max_file_size: 10 * 1024 * 1024,
        },
        kill_signal: 15,
        kill_timeout_ms: 5000,
        linger_ms: 60_000,
        cgroup: None,
        isolation: None,
        stdin: TaskStdin::Null,
        start: TaskStart::Now,
        namespaces: Namespaces::default(),
        first_connection: FirstConnection::Socket,
        extras: Vec::new(),
        detach: Detach::Fork,
    }
}

fn spawn_config_full() -> SpawnConfig {
    SpawnConfig {
        alloc_id: "5f0e-alloc_7".into(),
        task: "web-server".into(),
        run: 7,
        token: token(),
        command: "/usr/local/bin/server".into(),
        args: vec![
            "/usr/local/bin/server".into(),
            "--port=8080".into(),
            "caf\u{e9} \u{2603}".into(),
        ],
        env: vec![
            ("PATH".into(), "/usr/bin:/bin".into()),
            ("HOME".into(), "/home/app".into()),
            ("EMPTY".into(), String::new()),
        ],
        cwd: "/srv/app".into(),
        alloc_dir: "/var/lib/tend/allocs/5f0e-alloc_7".into(),
        socket_path: "/run/tend/5f0e-alloc_7/web-server.sock".into(),
        logs: LogConfig {
            max_files: 3,
            max_file_size: 1 << 40,
        },
        kill_signal: 2,
        kill_timeout_ms: 30_000,
        linger_ms: u64::MAX,
        cgroup: Some(CgroupSpec {
            path: "tend/5f0e-alloc_7/web-server".into(),
            daemon_path: Some("tend/daemons/5f0e-alloc_7-web-server".into()),
            memory_bytes: Some(256 * 1024 * 1024),
            cpu_mhz: Some(500),
            pids_max: Some(1024),
            options: Default::default(),
        }),
        isolation: Some(Isolation {
            ids: None,
            user: "nobody".into(),
            chroot: Some(ChrootSpec {
                binds: vec![
                    Bind {
                        source: "/usr".into(),
                        target: "/usr".into(),
                    },
                    Bind {
                        source: "/etc/ssl/certs".into(),
                        target: "/etc/ssl/certs".into(),
                    },
                ],
            }),
        }),
        stdin: TaskStdin::Null,
        start: TaskStart::Now,
        namespaces: Namespaces::default(),
        first_connection: FirstConnection::Socket,
        extras: Vec::new(),
        detach: Detach::Fork,
    }
}

fn spawn_config_cgroup_bare() -> SpawnConfig {
    SpawnConfig {
        cgroup: Some(CgroupSpec {
            path: "tend/0123abcd/t".into(),
            daemon_path: None,
            memory_bytes: None,
            cpu_mhz: None,
            pids_max: None,
            options: Default::default(),
        }),
        isolation: Some(Isolation {
            ids: None,
            user: "65534".into(),
            chroot: None,
        }),
        ..spawn_config_minimal()
    }
}

/// A config whose cgroup carries options: they ride after the frozen config
/// in the same frame ([`SpawnConfig::to_frame`]).
fn spawn_config_cgroup_options() -> SpawnConfig {
    SpawnConfig {
        cgroup: Some(CgroupSpec {
            path: "tend/0123abcd/t".into(),
            daemon_path: Some("tend/tend-spawn".into()),
            memory_bytes: Some(512 * 1024 * 1024),
            cpu_mhz: Some(500),
            pids_max: Some(4096),
            options: CgroupOptions {
                memory_soft_bytes: Some(256 * 1024 * 1024),
                cpu_quota: Some(CpuQuota {
                    quota_us: 25_000,
                    period_us: 100_000,
                }),
                io_weight: Some(500),
                oom_kill_group: true,
            },
        }),
        isolation: Some(Isolation {
            ids: None,
            user: "nobody".into(),
            chroot: None,
        }),
        ..spawn_config_minimal()
    }
}

/// A config whose task reads the rest of tend-spawn's stdin: the stdin rides
/// after the config and, with a cgroup, after its options (here the defaults).
fn spawn_config_stdin(cgroup: bool) -> SpawnConfig {
    let base = if cgroup {
        spawn_config_cgroup_bare()
    } else {
        spawn_config_minimal()
    };
    SpawnConfig {
        stdin: TaskStdin::AfterConfig,
        ..base
    }
}

/// A config whose task ids the agent resolved (with a cgroup or without):
/// they follow the options and the stdin, which come along even when off.
fn spawn_config_ids(cgroup: bool) -> SpawnConfig {
    let mut c = if cgroup {
        spawn_config_cgroup_bare()
    } else {
        SpawnConfig {
            isolation: Some(Isolation {
                ids: None,
                user: "nobody".into(),
                chroot: None,
            }),
            ..spawn_config_minimal()
        }
    };
    if let Some(iso) = c.isolation.as_mut() {
        iso.ids = Some(TaskIds {
            uid: 65534,
            gid: 65534,
        });
    }
    c
}

/// A config whose task is held until a Start (isolated or not): the start
/// follows the stdin and, where there is an isolation, the ids.
fn spawn_config_start(isolated: bool) -> SpawnConfig {
    let base = if isolated {
        spawn_config_ids(false)
    } else {
        spawn_config_minimal()
    };
    SpawnConfig {
        start: TaskStart::OnRequest,
        ..base
    }
}

/// A config whose task gets uts (with a host name), ipc and network
/// namespaces: they follow the start (Now) and the ids.
fn spawn_config_namespaces() -> SpawnConfig {
    SpawnConfig {
        namespaces: Namespaces {
            uts: true,
            hostname: Some("box1".into()),
            ipc: true,
            net: true,
        },
        ..spawn_config_ids(false)
    }
}

/// A config whose starter takes its first connection on tend-spawn's stdin:
/// it rides last, after the stdin, the start and the namespaces (and, with a
/// cgroup and isolation, after the options and the ids), which come along
/// even when off.
fn spawn_config_connection(cgroup_and_ids: bool) -> SpawnConfig {
    let base = if cgroup_and_ids {
        spawn_config_ids(true)
    } else {
        spawn_config_minimal()
    };
    SpawnConfig {
        first_connection: FirstConnection::Stdin,
        ..base
    }
}

/// A config with every extra: they ride last, after a first connection of
/// `Socket` and the default namespaces, which come along.
fn spawn_config_extras() -> SpawnConfig {
    let mut c = spawn_config_ids(false);
    c.isolation.as_mut().unwrap().chroot = Some(ChrootSpec {
        binds: vec![Bind {
            source: "/usr".into(),
            target: "/usr".into(),
        }],
    });
    c.extras = vec![
        ConfigExtra::Mounts(vec![
            Mount {
                target: "/data".into(),
                kind: MountKind::Bind {
                    source: "/srv/data".into(),
                    recursive: true,
                },
                read_only: false,
                nosuid: true,
                nodev: true,
                noexec: false,
            },
            Mount {
                target: "/run".into(),
                kind: MountKind::Tmpfs {
                    size_bytes: Some(65536 * 1024),
                    mode: Some(0o755),
                },
                read_only: false,
                nosuid: true,
                nodev: true,
                noexec: true,
            },
        ]),
        ConfigExtra::MaskedPaths(vec!["/proc/kcore".into(), "/sys/firmware".into()]),
        ConfigExtra::ReadonlyPaths(vec!["/proc/sys".into()]),
        ConfigExtra::CgroupNamespace,
    ];
    c
}

/// A config whose daemon stays in the process its starter exec'd (the
/// agent's launcher): the detach rides last, after an empty extras list and
/// everything before it, which come along; with a cgroup and ids, as an exec
/// task's config under the launcher is.
fn spawn_config_in_place(cgroup_and_ids: bool) -> SpawnConfig {
    SpawnConfig {
        detach: Detach::InPlace,
        ..spawn_config_connection(cgroup_and_ids)
    }
}

/// The configs with additions after the frozen encoding.
fn spawn_config_extended_values() -> Vec<(&'static str, SpawnConfig)> {
    vec![
        ("spawn_config_cgroup_options", spawn_config_cgroup_options()),
        ("spawn_config_stdin", spawn_config_stdin(false)),
        ("spawn_config_cgroup_stdin", spawn_config_stdin(true)),
        ("spawn_config_ids", spawn_config_ids(false)),
        ("spawn_config_cgroup_ids", spawn_config_ids(true)),
        ("spawn_config_start", spawn_config_start(false)),
        ("spawn_config_isolated_start", spawn_config_start(true)),
        ("spawn_config_namespaces", spawn_config_namespaces()),
        ("spawn_config_connection", spawn_config_connection(false)),
        (
            "spawn_config_cgroup_ids_connection",
            spawn_config_connection(true),
        ),
        ("spawn_config_extras", spawn_config_extras()),
        ("spawn_config_in_place", spawn_config_in_place(false)),
        (
            "spawn_config_cgroup_ids_in_place",
            spawn_config_in_place(true),
        ),
    ]
}

/// An extended config's fixture: written by `to_frame`, read by
/// `from_frame`, and its body starts with the config's frozen encoding,
/// byte for byte.
fn spawn_config_extended_case(name: &'static str, value: SpawnConfig) -> Case {
    Case {
        name,
        check: Box::new(move |path| {
            value.validate().map_err(|e| format!("{name}: {e}"))?;
            let encoded = value.to_frame().map_err(|e| format!("{name}: {e}"))?;
            let on_disk = read_or_bless(name, path, &encoded)?;
            if on_disk != encoded {
                return Err(format!(
                    "{name}: encoding changed\n  fixture: {}\n  encoded: {}",
                    hex(&on_disk),
                    hex(&encoded)
                ));
            }
            let frozen = frame::encode(&value).map_err(|e| format!("{name}: {e}"))?;
            if !on_disk[HEADER_LEN..].starts_with(&frozen[HEADER_LEN..]) {
                return Err(format!(
                    "{name}: the frozen config is not a prefix of the body"
                ));
            }
            let f = frame::read_frame(&mut &on_disk[..], MAX_FRAME_LEN)
                .map_err(|e| format!("{name}: {e}"))?;
            let decoded = SpawnConfig::from_frame(&f).map_err(|e| format!("{name}: {e}"))?;
            if decoded != value {
                return Err(format!("{name}: decodes to {decoded:?}"));
            }
            Ok(())
        }),
    }
}

fn spawn_config_extended_cases() -> Vec<Case> {
    spawn_config_extended_values()
        .into_iter()
        .map(|(n, v)| spawn_config_extended_case(n, v))
        .collect()
}

// ---------------------------------------------------------------- coverage
//
// Each `*_variant` function names the variant of a value. Its match has no
// wildcard: a new variant stops this file from compiling right here. Add an arm,
// add the name to the list beside it, and add a fixture below; the coverage tests
// fail until every listed variant has one.

const REQUEST_VARIANTS: &[&str] = &[
    "Status", "Wait", "Signal", "Stop", "Stats", "Release", "StatsV2", "Exec", "Start",
];
fn request_variant(r: &Request) -> &'static str {
    match r {
        Request::Status => "Status",
        Request::Wait => "Wait",
        Request::Signal(_) => "Signal",
        Request::Stop { .. } => "Stop",
        Request::Stats => "Stats",
        Request::Release => "Release",
        Request::StatsV2 => "StatsV2",
        Request::Exec(_) => "Exec",
        Request::Start => "Start",
    }
}

const RESPONSE_VARIANTS: &[&str] = &[
    "Welcome",
    "Status",
    "Ok",
    "Stats",
    "Exited",
    "Error",
    "ExitedWithOomKills",
    "StatsV2",
    "ExecExited",
];
fn response_variant(r: &Response) -> &'static str {
    match r {
        Response::Welcome(_) => "Welcome",
        Response::Status(_) => "Status",
        Response::Ok => "Ok",
        Response::Stats(_) => "Stats",
        Response::Exited(_) => "Exited",
        Response::Error(_) => "Error",
        Response::ExitedWithOomKills { .. } => "ExitedWithOomKills",
        Response::StatsV2(_) => "StatsV2",
        Response::ExecExited(_) => "ExecExited",
    }
}

const START_REPORT_VARIANTS: &[&str] = &["Started", "Failed", "StartedWithConnection"];
fn start_report_variant(r: &StartReport) -> &'static str {
    match r {
        StartReport::Started { .. } => "Started",
        StartReport::Failed { .. } => "Failed",
        StartReport::StartedWithConnection(_) => "StartedWithConnection",
    }
}

const TASK_STATE_VARIANTS: &[&str] = &["Running", "Stopping", "Exited", "Created"];
fn task_state_variant(s: &TaskState) -> &'static str {
    match s {
        TaskState::Running => "Running",
        TaskState::Stopping => "Stopping",
        TaskState::Exited => "Exited",
        TaskState::Created => "Created",
    }
}

// ---------------------------------------------------------------- cases

fn hello_values() -> Vec<(&'static str, Hello)> {
    vec![(
        "hello",
        Hello {
            version: 1,
            token: token(),
        },
    )]
}

fn request_values() -> Vec<(&'static str, Request)> {
    vec![
        ("request_status", Request::Status),
        ("request_wait", Request::Wait),
        ("request_signal", Request::Signal(15)),
        (
            "request_stop",
            Request::Stop {
                signal: 15,
                grace_ms: 5000,
            },
        ),
        ("request_stats", Request::Stats),
        ("request_release", Request::Release),
        ("request_stats_v2", Request::StatsV2),
        (
            "request_exec",
            Request::Exec(ExecRequest {
                argv: vec!["cat".into(), "/local/x".into()],
                tty: false,
            }),
        ),
        ("request_start", Request::Start),
    ]
}

fn response_values() -> Vec<(&'static str, Response)> {
    vec![
        (
            "response_welcome",
            Response::Welcome(Welcome {
                version: 1,
                instance: instance(),
                daemon_pid: 1234,
                task_pid: 1240,
            }),
        ),
        (
            "response_status_running",
            Response::Status(Status {
                state: TaskState::Running,
                task_pid: 1240,
                daemon_pid: 1234,
                run: 1,
                started_at: "2024-05-01T12:00:00Z".into(),
                exit: None,
            }),
        ),
        (
            "response_status_stopping",
            Response::Status(Status {
                state: TaskState::Stopping,
                task_pid: 1240,
                daemon_pid: 1234,
                run: 2,
                started_at: "2024-05-01T12:00:00Z".into(),
                exit: None,
            }),
        ),
        (
            "response_status_exited",
            Response::Status(Status {
                state: TaskState::Exited,
                task_pid: 4242,
                daemon_pid: 1234,
                run: 1,
                started_at: "2024-05-01T12:00:00Z".into(),
                exit: Some(exit_code_0()),
            }),
        ),
        (
            "response_status_created",
            Response::Status(Status {
                state: TaskState::Created,
                task_pid: 1240,
                daemon_pid: 1234,
                run: 1,
                started_at: "2024-05-01T12:00:00Z".into(),
                exit: None,
            }),
        ),
        ("response_ok", Response::Ok),
        (
            "response_stats_full",
            Response::Stats(Stats {
                memory_bytes: Some(50 * 1024 * 1024),
                memory_peak_bytes: Some(64 * 1024 * 1024),
                cpu_usage_us: Some(1_234_567),
                pids: Some(3),
            }),
        ),
        (
            "response_stats_empty",
            Response::Stats(Stats {
                memory_bytes: None,
                memory_peak_bytes: None,
                cpu_usage_us: None,
                pids: None,
            }),
        ),
        ("response_exited", Response::Exited(exit_oom_killed())),
        ("response_error", Response::Error("hello: bad token".into())),
        (
            "response_exited_with_oom_kills",
            Response::ExitedWithOomKills {
                exit: exit_child_oom_killed(),
                oom_kills: 2,
            },
        ),
        (
            "response_stats_v2_full",
            Response::StatsV2(Box::new(CgroupStats {
                cgroup_version: Some(2),
                cpu: CpuStats {
                    usage_us: Some(1_234_567),
                    user_us: Some(1_000_000),
                    system_us: Some(234_567),
                    periods: Some(40),
                    throttled_periods: Some(7),
                    throttled_us: Some(350_000),
                },
                memory: MemoryStats {
                    current: Some(50 * 1024 * 1024),
                    peak: Some(64 * 1024 * 1024),
                    limit: Some(256 * 1024 * 1024),
                    anon: Some(48 * 1024 * 1024),
                    file: Some(2 * 1024 * 1024),
                    swap: Some(0),
                },
                pids: Some(3),
                io: IoStats {
                    read_bytes: Some(4096),
                    write_bytes: Some(1 << 20),
                },
                psi: PsiStats {
                    cpu: Some(Pressure {
                        some: PressureLine {
                            avg10: 125,
                            avg60: 50,
                            avg300: 10,
                            total_us: 987_654,
                        },
                        full: Some(PressureLine {
                            avg10: 0,
                            avg60: 0,
                            avg300: 0,
                            total_us: 12,
                        }),
                    }),
                    memory: Some(Pressure {
                        some: PressureLine {
                            avg10: 0,
                            avg60: 0,
                            avg300: 0,
                            total_us: 0,
                        },
                        full: None,
                    }),
                    io: None,
                },
            })),
        ),
        (
            "response_stats_v2_empty",
            Response::StatsV2(Box::new(CgroupStats {
                cgroup_version: None,
                cpu: CpuStats {
                    usage_us: None,
                    user_us: None,
                    system_us: None,
                    periods: None,
                    throttled_periods: None,
                    throttled_us: None,
                },
                memory: MemoryStats {
                    current: None,
                    peak: None,
                    limit: None,
                    anon: None,
                    file: None,
                    swap: None,
                },
                pids: None,
                io: IoStats {
                    read_bytes: None,
                    write_bytes: None,
                },
                psi: PsiStats {
                    cpu: None,
                    memory: None,
                    io: None,
                },
            })),
        ),
        ("response_exec_exited", Response::ExecExited(130)),
    ]
}

fn start_report_values() -> Vec<(&'static str, StartReport)> {
    vec![
        (
            "start_report_started",
            StartReport::Started {
                daemon_pid: 1234,
                task_pid: 1240,
                instance: instance(),
            },
        ),
        (
            "start_report_failed_config",
            StartReport::Failed {
                stage: Stage::Config,
                errno: 0,
                message: "spawn config: task: \"../x\" holds '/' or NUL".into(),
            },
        ),
        (
            "start_report_failed_cgroup",
            StartReport::Failed {
                stage: Stage::Cgroup,
                errno: 13,
                message: "cgroup tend/a/t: Permission denied".into(),
            },
        ),
        (
            "start_report_failed_setuid",
            StartReport::Failed {
                stage: Stage::Setuid,
                errno: 1,
                message: "setresuid 65534: Operation not permitted".into(),
            },
        ),
        (
            "start_report_failed_exec",
            StartReport::Failed {
                stage: Stage::Exec,
                errno: 2,
                message: "exec /bin/nope: No such file or directory".into(),
            },
        ),
        (
            "start_report_failed_policy",
            StartReport::Failed {
                stage: Stage::Policy,
                errno: 0,
                message: "policy: user root is not allowed".into(),
            },
        ),
        (
            "start_report_started_with_connection",
            StartReport::StartedWithConnection(Welcome {
                version: 1,
                instance: instance(),
                daemon_pid: 1234,
                task_pid: 1240,
            }),
        ),
    ]
}

fn task_state_values() -> Vec<(&'static str, TaskState)> {
    vec![
        ("task_state_running", TaskState::Running),
        ("task_state_stopping", TaskState::Stopping),
        ("task_state_exited", TaskState::Exited),
        ("task_state_created", TaskState::Created),
    ]
}

fn exit_status_values() -> Vec<(&'static str, ExitStatusV1)> {
    vec![
        ("exit_status_code_0", exit_code_0()),
        ("exit_status_oom_killed", exit_oom_killed()),
        ("exit_status_core_dumped", exit_core_dumped()),
        ("exit_status_never_started", exit_never_started()),
    ]
}

/// Exit status files: those written before `oom_kills` existed (which a new
/// agent must still read, with 0 kills) and those written since (pinned byte
/// for byte).
fn exit_status_file_values() -> Vec<(&'static str, ExitStatus, FileFormat)> {
    let old = |name, v1: ExitStatusV1| (name, v1.with_oom_kills(0), FileFormat::BeforeOomKills);
    vec![
        old("exit_status_code_0", exit_code_0()),
        old("exit_status_oom_killed", exit_oom_killed()),
        old("exit_status_core_dumped", exit_core_dumped()),
        old("exit_status_never_started", exit_never_started()),
        (
            "exit_status_child_oom_killed",
            exit_child_oom_killed().with_oom_kills(2),
            FileFormat::Current,
        ),
    ]
}

/// Which writer made an exit status file fixture.
#[derive(Clone, Copy, PartialEq, Eq)]
enum FileFormat {
    /// Before `oom_kills`: the file must read, it is not what `to_json` writes now.
    BeforeOomKills,
    /// What `to_json` writes now, byte for byte.
    Current,
}

fn spawn_config_values() -> Vec<(&'static str, SpawnConfig)> {
    vec![
        ("spawn_config_minimal", spawn_config_minimal()),
        ("spawn_config_full", spawn_config_full()),
        ("spawn_config_cgroup_bare", spawn_config_cgroup_bare()),
    ]
}

fn cases_of<T>(values: Vec<(&'static str, T)>) -> Vec<Case>
where
    T: Serialize + DeserializeOwned + PartialEq + Debug + 'static,
{
    values.into_iter().map(|(n, v)| case(n, v)).collect()
}

fn all_cases() -> Vec<Case> {
    let mut all = Vec::new();
    all.extend(cases_of(hello_values()));
    all.extend(cases_of(request_values()));
    all.extend(cases_of(response_values()));
    all.extend(cases_of(start_report_values()));
    all.extend(cases_of(task_state_values()));
    all.extend(cases_of(exit_status_values()));
    all.extend(cases_of(spawn_config_values()));
    all.extend(spawn_config_extended_cases());
    all
}

fn assert_covers(what: &str, listed: &[&str], covered: impl IntoIterator<Item = &'static str>) {
    let covered: BTreeSet<&str> = covered.into_iter().collect();
    let missing: Vec<&&str> = listed.iter().filter(|v| !covered.contains(**v)).collect();
    assert!(missing.is_empty(), "{what}: no fixture for {missing:?}");
}

// ---------------------------------------------------------------- tests

#[test]
fn hello() {
    run(cases_of(hello_values()));
}

#[test]
fn requests() {
    run(cases_of(request_values()));
}

#[test]
fn responses() {
    run(cases_of(response_values()));
}

#[test]
fn start_reports() {
    run(cases_of(start_report_values()));
}

#[test]
fn task_states() {
    run(cases_of(task_state_values()));
}

#[test]
fn exit_statuses() {
    run(cases_of(exit_status_values()));
}

#[test]
fn spawn_configs() {
    for (name, c) in spawn_config_values() {
        // A fixture of a config tend-spawn would refuse pins little of use.
        c.validate().unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    run(cases_of(spawn_config_values()));
    // Every config fixture from before the options reads through
    // `from_frame` too, with no options.
    for (name, c) in spawn_config_values() {
        let bytes = std::fs::read(fixture_dir().join(format!("{name}.bin"))).unwrap();
        let f = frame::read_frame(&mut &bytes[..], MAX_FRAME_LEN).unwrap();
        assert_eq!(SpawnConfig::from_frame(&f).unwrap(), c, "{name}");
        assert_eq!(c.to_frame().unwrap(), bytes, "{name}");
    }
    run(spawn_config_extended_cases());
}

#[test]
fn every_variant_has_a_fixture() {
    assert_covers(
        "Request",
        REQUEST_VARIANTS,
        request_values().iter().map(|(_, v)| request_variant(v)),
    );
    assert_covers(
        "Response",
        RESPONSE_VARIANTS,
        response_values().iter().map(|(_, v)| response_variant(v)),
    );
    assert_covers(
        "StartReport",
        START_REPORT_VARIANTS,
        start_report_values()
            .iter()
            .map(|(_, v)| start_report_variant(v)),
    );
    assert_covers(
        "TaskState",
        TASK_STATE_VARIANTS,
        task_state_values()
            .iter()
            .map(|(_, v)| task_state_variant(v)),
    );
    // Every TaskState also travels inside a Status response.
    assert_covers(
        "TaskState in Response::Status",
        TASK_STATE_VARIANTS,
        response_values().iter().filter_map(|(_, v)| match v {
            Response::Status(s) => Some(task_state_variant(&s.state)),
            _ => None,
        }),
    );
    // Status with and without an exit.
    let exits: BTreeSet<bool> = response_values()
        .iter()
        .filter_map(|(_, v)| match v {
            Response::Status(s) => Some(s.exit.is_some()),
            _ => None,
        })
        .collect();
    assert_eq!(exits.len(), 2, "Response::Status with and without exit");
}

/// Stage is a fieldless enum: its wire form is one byte, the variant index, which
/// must equal its `repr(u8)` discriminant and its place in `Stage::ALL`.
#[test]
fn every_stage_has_its_index() {
    for (i, stage) in Stage::ALL.iter().enumerate() {
        let index = u8::try_from(i).expect("fewer than 128 stages");
        assert_eq!(*stage as u8, index, "{stage}: discriminant");
        assert_eq!(Stage::from_index(index), Some(*stage));
        let bytes = postcard::to_allocvec(stage).expect("encode stage");
        assert_eq!(bytes, [index], "{stage}: wire byte");
        assert_eq!(
            postcard::from_bytes::<Stage>(&bytes).expect("decode stage"),
            *stage
        );
    }
    // The last stage pinned here; a new one goes after it.
    assert_eq!(Stage::ALL.last(), Some(&Stage::Policy));
}

/// No fixture lies around without a case that checks it, and no name is used twice.
#[test]
fn no_orphan_fixtures() {
    let cases = all_cases();
    let names: Vec<&str> = cases.iter().map(|c| c.name).collect();
    let unique: BTreeSet<&str> = names.iter().copied().collect();
    assert_eq!(unique.len(), names.len(), "a fixture name is used twice");
    if blessing() {
        return;
    }
    let Ok(entries) = std::fs::read_dir(fixture_dir()) else {
        panic!(
            "no fixture dir {}; bless with `TEND_BLESS=1 cargo test -p tend-proto --test golden`",
            fixture_dir().display()
        );
    };
    for entry in entries {
        let path = entry.expect("read fixture dir").path();
        if path.extension().is_some_and(|e| e == "bin") {
            let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("");
            assert!(
                unique.contains(stem),
                "fixture {} has no case in golden.rs: a fixture is never deleted",
                path.display()
            );
        }
    }
}

/// The exit status file is read by the next agent after an upgrade too: its JSON
/// is pinned beside the frames. Fields only grow: a file written before a field
/// existed still reads, and never gets rewritten here.
#[test]
fn exit_status_files() {
    let failures: Vec<String> = exit_status_file_values()
        .into_iter()
        .filter_map(|(name, value, format)| {
            let path = fixture_dir().join(format!("{name}.json"));
            let json = value.to_json();
            let on_disk = match format {
                FileFormat::Current => match read_or_bless(name, &path, &json) {
                    Ok(b) => b,
                    Err(e) => return Some(e),
                },
                FileFormat::BeforeOomKills => match std::fs::read(&path) {
                    Ok(b) => b,
                    Err(e) => return Some(format!("{name}: {}: {e}", path.display())),
                },
            };
            if format == FileFormat::Current && on_disk != json {
                return Some(format!(
                    "{name}: exit status file format changed:\n--- fixture\n{}\n--- now\n{}",
                    String::from_utf8_lossy(&on_disk),
                    String::from_utf8_lossy(&json)
                ));
            }
            if format == FileFormat::BeforeOomKills
                && String::from_utf8_lossy(&on_disk).contains("oom_kills")
            {
                return Some(format!("{name}: an old file must stay old"));
            }
            match ExitStatus::from_json(&on_disk) {
                Ok(v) if v == value => None,
                Ok(v) => Some(format!("{name}: decodes to {v:?}")),
                Err(e) => Some(format!("{name}: {e}")),
            }
        })
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// One frame spelled out by hand, so the layout the design describes is visible
/// without trusting the encoder: `Request::Stop { signal: 15, grace_ms: 5000 }`.
#[test]
fn a_frame_spelled_out() {
    let bytes = std::fs::read(fixture_dir().join("request_stop.bin")).expect("fixture");
    assert_eq!(
        bytes,
        [
            b'T', b'E', b'N', b'D', // magic
            0x01, 0x00, // protocol version 1, u16 LE
            0x04, 0x00, 0x00, 0x00, // body length 4, u32 LE
            0x03, // variant index 3: Stop
            0x1e, // signal 15, zigzag varint
            0x88, 0x27, // grace_ms 5000, varint
        ]
    );
}
