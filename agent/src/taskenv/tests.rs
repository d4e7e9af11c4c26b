use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;

use proptest::prelude::*;

use super::*;

fn vars(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn interpolation_table() {
    let v = vars(&[
        ("A", "a"),
        ("SP", "two words"),
        ("Q", "it's \"quoted\""),
        ("U", "héllo ✓"),
        ("REF", "${A}"),
        ("EMPTY", ""),
        ("ü", "unicode name"),
    ]);
    let table = [
        ("plain", "plain"),
        ("${A}", "a"),
        ("x${A}y", "xay"),
        ("${A}${A}", "aa"),
        ("${SP}", "two words"),
        ("--name=${SP}", "--name=two words"),
        ("${Q}", "it's \"quoted\""),
        ("${U}", "héllo ✓"),
        ("${ü}", "unicode name"),
        ("${REF}", "${A}"),
        ("${EMPTY}", ""),
        ("${NOPE}", "${NOPE}"),
        ("a ${NOPE} ${A}", "a ${NOPE} a"),
        ("$${A}", "${A}"),
        ("$$${A}", "$${A}"),
        ("$A", "$A"),
        ("$", "$"),
        ("${", "${"),
        ("${A", "${A"),
        ("${}", "${}"),
        ("}${A}{", "}a{"),
        ("é${A}é", "éaé"),
        ("${meta.x}", "${meta.x}"),
    ];
    for (input, want) in table {
        assert_eq!(interpolate(input, &v), want, "input {input:?}");
    }
}

#[allow(clippy::too_many_arguments)]
fn inputs_fixture<'a>(
    driver: Driver,
    resources: &'a Resources,
    ports: &'a [AssignedPort],
    metas: &'a [BTreeMap<String, String>; 3],
    task_env: &'a BTreeMap<String, String>,
    allow: &'a [String],
    agent_env: &'a BTreeMap<String, String>,
    dirs: &'a (PathBuf, PathBuf),
) -> TaskEnvInputs<'a> {
    TaskEnvInputs {
        alloc_id: "0f3c",
        job: "web",
        group: "g",
        index: 2,
        task: "server",
        driver,
        host_alloc_dir: &dirs.0,
        host_task_dir: &dirs.1,
        resources,
        ports,
        job_meta: &metas[0],
        group_meta: &metas[1],
        task_meta: &metas[2],
        task_env,
        env_allow_list: allow,
        agent_env,
    }
}

#[test]
fn builds_the_environment_in_order() {
    let resources = Resources {
        cpu: 500,
        memory: 256,
        ..Resources::default()
    };
    let ports = [AssignedPort {
        label: "http".into(),
        host_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
        host_port: 20001,
        to: Some(80),
    }];
    let metas = [
        vars(&[("owner", "job"), ("tier", "job")]),
        vars(&[("tier", "group")]),
        vars(&[("tier", "task"), ("a.b", "dotted")]),
    ];
    let task_env = vars(&[
        ("PATH", "${PATH}"),
        ("HOME_SEEN", "${HOME}"),
        ("LISTEN", "${TEND_ADDR_http}"),
        ("TEND_JOB_NAME", "override"),
    ]);
    let allow = vec!["PATH".to_string()];
    let agent_env = vars(&[
        ("PATH", "/usr/bin:/bin"),
        ("HOME", "/root"),
        ("SECRET", "x"),
    ]);
    let dirs = (
        PathBuf::from("/data/allocs/0f3c/alloc"),
        PathBuf::from("/data/allocs/0f3c/server/local"),
    );
    let raw = inputs_fixture(
        Driver::RawExec,
        &resources,
        &ports,
        &metas,
        &task_env,
        &allow,
        &agent_env,
        &dirs,
    );
    let env = raw.build();
    let want: Vec<(String, String)> = [
        ("TEND_ALLOC_DIR", "/data/allocs/0f3c/alloc"),
        ("TEND_TASK_DIR", "/data/allocs/0f3c/server/local"),
        ("TEND_ALLOC_ID", "0f3c"),
        ("TEND_ALLOC_NAME", "web.g[2]"),
        ("TEND_ALLOC_INDEX", "2"),
        ("TEND_JOB_NAME", "override"),
        ("TEND_GROUP_NAME", "g"),
        ("TEND_TASK_NAME", "server"),
        ("TEND_MEMORY_LIMIT", "256"),
        ("TEND_CPU_LIMIT", "500"),
        ("TEND_IP_http", "127.0.0.1"),
        ("TEND_PORT_http", "20001"),
        ("TEND_HOST_PORT_http", "20001"),
        ("TEND_ADDR_http", "127.0.0.1:20001"),
        ("TEND_META_a_b", "dotted"),
        ("TEND_META_owner", "job"),
        ("TEND_META_tier", "task"),
        ("HOME_SEEN", "${HOME}"),
        ("LISTEN", "127.0.0.1:20001"),
        ("PATH", "/usr/bin:/bin"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    assert_eq!(env, want);
    assert!(!env.iter().any(|(k, _)| k == "SECRET" || k == "HOME"));

    let docker = inputs_fixture(
        Driver::Docker,
        &resources,
        &ports,
        &metas,
        &task_env,
        &allow,
        &agent_env,
        &dirs,
    );
    let env: BTreeMap<_, _> = docker.build().into_iter().collect();
    assert_eq!(env["TEND_ALLOC_DIR"], "/alloc");
    assert_eq!(env["TEND_TASK_DIR"], "/local");
    assert_eq!(env["TEND_PORT_http"], "80");
    assert_eq!(env["TEND_HOST_PORT_http"], "20001");
    assert_eq!(env["TEND_ADDR_http"], "127.0.0.1:80");
    let exec = inputs_fixture(
        Driver::Exec,
        &resources,
        &ports,
        &metas,
        &task_env,
        &allow,
        &agent_env,
        &dirs,
    );
    let env: BTreeMap<_, _> = exec.build().into_iter().collect();
    assert_eq!(env["TEND_TASK_DIR"], "/local");
    assert_eq!(env["TEND_PORT_http"], "20001");

    // Command and args see the built env and allow-listed agent variables only.
    let v = raw.interpolation_vars(&raw.build());
    let cfg = TaskConfig {
        command: Some("${TEND_TASK_DIR}/run".into()),
        args: vec![
            "${TEND_ADDR_http}".into(),
            "${HOME}".into(),
            "${PATH}".into(),
        ],
        ..TaskConfig::default()
    };
    let cmd = prepare_command(Driver::RawExec, &cfg, &v).unwrap();
    assert_eq!(
        cmd.command.as_deref(),
        Some("/data/allocs/0f3c/server/local/run")
    );
    assert_eq!(cmd.args, ["127.0.0.1:20001", "${HOME}", "/usr/bin:/bin"]);
}

#[test]
fn command_must_stay_one_path() {
    let v = vars(&[
        ("SP", "/bin/sh -c x"),
        ("BIN", "/bin"),
        ("REL", "bin/x"),
        ("E", ""),
    ]);
    let cfg = |c: &str| TaskConfig {
        command: Some(c.into()),
        ..TaskConfig::default()
    };
    let ok = |c: &str| prepare_command(Driver::Exec, &cfg(c), &v).map(|t| t.command.unwrap());
    assert_eq!(ok("${BIN}/sh"), Ok("/bin/sh".to_string()));
    assert_eq!(ok("python3"), Ok("python3".to_string()));
    assert!(matches!(ok("${SP}"), Err(CommandError::NotOnePath { .. })));
    assert!(matches!(ok("${REL}"), Err(CommandError::Relative { .. })));
    assert!(matches!(ok("${E}"), Err(CommandError::Empty { .. })));
    assert!(matches!(
        ok("${BNI}/sh"),
        Err(CommandError::Unresolved { .. })
    ));
    assert_eq!(ok("/opt/$${x}"), Ok("/opt/${x}".to_string()));
    assert_eq!(
        prepare_command(Driver::Exec, &TaskConfig::default(), &v),
        Err(CommandError::Missing)
    );
    assert_eq!(
        prepare_command(Driver::Docker, &TaskConfig::default(), &v),
        Ok(TaskCommand {
            command: None,
            args: vec![]
        })
    );
}

proptest! {
    #[test]
    fn interpolate_never_panics(s in any::<String>(), k in any::<String>(), val in any::<String>()) {
        let v: BTreeMap<String, String> = [(k, val)].into_iter().collect();
        let _ = interpolate(&s, &v);
        let _ = unresolved(&s, &v);
    }

    #[test]
    fn text_without_dollar_is_unchanged(s in "[^$]*") {
        prop_assert_eq!(interpolate(&s, &vars(&[("A", "x")])), s);
    }

    #[test]
    fn values_are_inserted_whole_and_never_rescanned(
        value in any::<String>(),
        pre in "[^$]*",
        post in "[^$]*",
        other in any::<String>(),
    ) {
        // The value may hold spaces, quotes and ${...} of a known name: it stays as it is.
        let v: BTreeMap<String, String> =
            [("V".to_string(), value.clone()), ("W".to_string(), other)].into_iter().collect();
        let args = vec![format!("{pre}${{V}}{post}"), "${V}".to_string(), "${W}".to_string()];
        let cfg = TaskConfig { command: Some("/bin/true".into()), args, ..TaskConfig::default() };
        let cmd = prepare_command(Driver::RawExec, &cfg, &v).unwrap();
        prop_assert_eq!(cmd.args.len(), 3);
        prop_assert_eq!(&cmd.args[0], &format!("{pre}{value}{post}"));
        prop_assert_eq!(&cmd.args[1], &value);
    }

    #[test]
    fn quoted_and_spaced_values_stay_one_argument(value in "[ a-z'\"${}\\\\]{0,30}") {
        let v: BTreeMap<String, String> =
            [("V".to_string(), value.clone()), ("A".to_string(), "z".to_string())].into_iter().collect();
        let cfg = TaskConfig { command: Some("/bin/echo".into()), args: vec!["${V}".into()], ..TaskConfig::default() };
        let cmd = prepare_command(Driver::RawExec, &cfg, &v).unwrap();
        prop_assert_eq!(cmd.args, vec![value]);
    }

    #[test]
    fn escape_always_yields_literal(name in "[A-Za-z_][A-Za-z0-9_]{0,10}", val in any::<String>()) {
        let v: BTreeMap<String, String> = [(name.clone(), val)].into_iter().collect();
        let input = format!("$${{{name}}}");
        let want = format!("${{{name}}}");
        prop_assert_eq!(interpolate(&input, &v), want);
    }
}
