use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};

use tend_proto::config::{example, Bind, CgroupSpec, ChrootSpec, Isolation};

use tend_proto::SpawnConfig;

use super::*;
use crate::caller::parse_id;

const P: &str = "/etc/tend/spawn-policy.hcl";

fn parse(text: &str) -> Result<Policy, PolicyError> {
    Policy::parse(Path::new(P), text)
}

fn syntax(text: &str) -> (usize, String) {
    match parse(text).unwrap_err() {
        PolicyError::Syntax { line, message, .. } => (line, message),
        e => panic!("not a syntax error: {e}"),
    }
}

/// Accounts of a test: alice 1000/1000, bob 1001/1001, nobody 65534, shadowy
/// (nobody's uid, gid 42: a second passwd entry), root, toor (uid 0), wheelie
/// (gid 0); groups tend 990, staff 50.
struct Fake;

impl Accounts for Fake {
    fn user(&self, user: &str) -> Option<Account> {
        let all = [
            ("alice", 1000, 1000),
            ("bob", 1001, 1001),
            ("nobody", 65534, 65534),
            ("shadowy", 65534, 42),
            ("root", 0, 0),
            ("toor", 0, 0),
            ("wheelie", 1500, 0),
        ];
        all.iter()
            .find(|(n, uid, _)| *n == user || parse_id(user) == Some(*uid))
            .map(|(n, uid, gid)| Account {
                name: n.to_string(),
                uid: *uid,
                gid: *gid,
            })
    }
    fn group(&self, name: &str) -> Option<u32> {
        match name {
            "tend" => Some(990),
            "staff" => Some(50),
            _ => None,
        }
    }
}

#[test]
fn empty_file_is_the_defaults() {
    let p = parse("# nothing\n\n// at all\n").unwrap();
    assert_eq!(p, Policy::defaults(Path::new(P)));
    assert_eq!(p.task_users, ["nobody"]);
    assert_eq!(p.allow_groups, ["tend"]);
    assert_eq!(p.cgroup_parent, "tend");
    assert_eq!(p.chroot_sources.len(), 7);
}

#[test]
fn every_field_parses() {
    let p = parse(
        r#"
        allow_users    = ["alice", "1001"]   # a comment
        allow_groups   = ["tend", "50"]      // another
        task_users     = ["nobody", "bob"]
        chroot_sources = ["/usr", "/etc/ssl/"]
        cgroup_parent  = "tend/users"
        data_roots     = ["/srv/tend"]
        run_roots      = ["/run/tend-user"]
        max_memory_mb  = 4096
        max_pids       = 512
        "#,
    )
    .unwrap();
    assert_eq!(p.allow_users, ["alice", "1001"]);
    assert_eq!(p.allow_groups, ["tend", "50"]);
    assert_eq!(p.task_users, ["nobody", "bob"]);
    assert_eq!(
        p.chroot_sources,
        [PathBuf::from("/usr"), PathBuf::from("/etc/ssl")]
    );
    assert_eq!(p.cgroup_parent, "tend/users");
    assert_eq!(p.data_roots, [PathBuf::from("/srv/tend")]);
    assert_eq!(p.run_roots, [PathBuf::from("/run/tend-user")]);
    assert_eq!(p.max_memory_mb, 4096);
    assert_eq!(p.max_pids, 512);
    // The default pids limit is bounded by the max the file wrote.
    assert_eq!(p.default_pids, 512);
    assert_eq!(p.default_memory_mb, DEFAULT_MEMORY_MB);
    // Display writes a file that parses back to the same policy.
    assert_eq!(parse(&p.to_string()).unwrap(), p);
}

#[test]
fn allow_users_alone_replaces_the_default_group() {
    let p = parse("allow_users = [\"alice\"]\n").unwrap();
    assert!(p.allow_groups.is_empty());
}

#[test]
fn each_syntax_error_names_its_line() {
    let cases: &[(&str, usize, &str)] = &[
        ("\n\nfoo = 1\n", 3, "unknown attribute \"foo\""),
        ("max_pids = 1\nmax_pids = 2\n", 2, "max_pids: set twice"),
        ("max_pids 1\n", 1, "expected `=`"),
        ("= 1\n", 1, "expected `name = value`"),
        (
            "max_pids = \"1\"\n",
            1,
            "max_pids: expected a number, got a string",
        ),
        ("max_pids = 0\n", 1, "must be more than 0"),
        ("max_pids = -1\n", 1, "expected a string, a number"),
        ("max_pids = 99999999999999999999999\n", 1, "too large"),
        (
            "max_memory_mb = 18446744073709551615\n",
            1,
            "max_memory_mb: 18446744073709551615 is too large",
        ),
        (
            "cgroup_parent = \"../x\"\n",
            1,
            "relative path without '..'",
        ),
        ("cgroup_parent = \"/abs\"\n", 1, "relative path"),
        (
            "cgroup_parent = [\"a\"]\n",
            1,
            "expected a string, got a list",
        ),
        ("task_users = \"nobody\"\n", 1, "expected a list of strings"),
        (
            "task_users = [\"root\"]\n",
            1,
            "task_users: user \"root\" is never allowed",
        ),
        (
            "task_users = [\"nobody\", \"0\"]\n",
            1,
            "task_users: user \"0\" is never allowed",
        ),
        ("task_users = [\"00\"]\n", 1, "never allowed"),
        ("allow_users = [\"\"]\n", 1, "is not a name or an id"),
        ("allow_users = [\"a b\"]\n", 1, "is not a name or an id"),
        ("allow_users = [\"a\",\n", 1, "a list holds strings only"),
        ("allow_users = [\"a\" \"b\"]\n", 1, "expected `,` or `]`"),
        ("allow_users = [1000]\n", 1, "a list holds strings only"),
        (
            "chroot_sources = [\"usr\"]\n",
            1,
            "chroot_sources: \"usr\" is not an absolute path",
        ),
        ("chroot_sources = [\"/usr/../root\"]\n", 1, "'..'"),
        ("data_roots = [\"/\"]\n", 1, "too wide"),
        ("run_roots = [\"/\"]\n", 1, "too wide"),
        (
            "cgroup_parent = \"a\" max_pids = 1\n",
            1,
            "one attribute per line",
        ),
        ("cgroup_parent = \"a\n", 1, "unterminated string"),
        ("cgroup_parent = \"a\\n\"\n", 1, "only the escapes"),
        ("cgroup_parent = \"${HOME}\"\n", 1, "templates"),
        ("cgroup_parent = \"a\tb\"\n", 1, "control character"),
        ("cgroup_parent = true\n", 1, "expected a string, got a bool"),
        ("cgroup_parent = truex\n", 1, "expected a string, a number"),
        ("task \"x\" {\n", 1, "expected `=`"),
    ];
    for (text, line, want) in cases {
        let (got_line, msg) = syntax(text);
        assert_eq!(got_line, *line, "{text:?}: {msg}");
        assert!(msg.contains(want), "{text:?}: {msg:?} lacks {want:?}");
    }
    let e = parse("\nbad\n").unwrap_err().to_string();
    assert!(e.starts_with("/etc/tend/spawn-policy.hcl:2: "), "{e}");
    assert!(!e.contains('\n'));
}

#[test]
fn escapes_and_trailing_comments() {
    let p = parse("cgroup_parent = \"a\\\"b\\\\c\" # x\n").unwrap();
    assert_eq!(p.cgroup_parent, "a\"b\\c");
    assert_eq!(parse(&p.to_string()).unwrap(), p);
}

fn caller(uid: u32, gid: u32, groups: &[u32]) -> Caller {
    Caller {
        uid,
        gid,
        groups: groups.to_vec(),
    }
}

/// A tree owned by the test's user: `<tmp>/data/<me>/allocs/a` and `<tmp>/run/<me>`.
struct Tree {
    tmp: tempfile::TempDir,
    me: u32,
}

impl Tree {
    fn new() -> Tree {
        let tmp = tempfile::tempdir().unwrap();
        fs::create_dir_all(tmp.path().join("data/me/allocs/a")).unwrap();
        fs::create_dir_all(tmp.path().join("run/me")).unwrap();
        Tree {
            tmp,
            me: nix::unistd::geteuid().as_raw(),
        }
    }
    fn path(&self, rel: &str) -> String {
        self.tmp.path().join(rel).display().to_string()
    }
    fn policy(&self) -> Policy {
        let mut p = Policy::defaults(Path::new(P));
        p.allow_users = vec![self.me.to_string()];
        p.data_roots = vec![self.tmp.path().join("data")];
        p.run_roots = vec![self.tmp.path().join("run")];
        p.max_memory_mb = 512;
        p.max_pids = 100;
        p
    }
    fn caller(&self) -> Caller {
        caller(self.me, self.me, &[])
    }
    fn config(&self) -> SpawnConfig {
        let mut c = example(&self.path("data/me/allocs/a"), &self.path("run/me/t.sock"));
        c.cgroup = Some(CgroupSpec {
            path: format!("tend/{}/a/t", self.me),
            daemon_path: Some(format!("tend/{}/a/t.daemon", self.me)),
            memory_bytes: Some(256 * 1024 * 1024),
            cpu_mhz: None,
            pids_max: Some(50),
            options: Default::default(),
        });
        c.isolation = Some(Isolation {
            ids: None,
            user: "nobody".into(),
            chroot: Some(ChrootSpec {
                binds: vec![Bind {
                    source: "/usr".into(),
                    target: "/usr".into(),
                }],
            }),
        });
        c.validate().unwrap();
        c
    }
}

#[test]
fn namespaces_beyond_mount_and_pid_are_refused_to_a_caller() {
    let t = Tree::new();
    let mut c = t.config();
    c.namespaces.ipc = true;
    let r = t.policy().check_with(&t.caller(), &c, &Fake).unwrap_err();
    assert_eq!(r.rule, "namespaces");
    assert!(r.reason.contains("not setuid"), "{}", r.reason);
}

#[test]
fn every_extra_is_refused_to_a_caller_by_name() {
    use tend_proto::config::{ConfigExtra, Mount, MountKind};
    let t = Tree::new();
    let rw_bind = ConfigExtra::Mounts(vec![Mount {
        target: "/etc".into(),
        kind: MountKind::Bind {
            source: "/etc".into(),
            recursive: false,
        },
        read_only: false,
        nosuid: true,
        nodev: true,
        noexec: false,
    }]);
    for (extra, name) in [
        (rw_bind, "Mounts"),
        (ConfigExtra::MaskedPaths(vec!["/x".into()]), "MaskedPaths"),
        (
            ConfigExtra::ReadonlyPaths(vec!["/x".into()]),
            "ReadonlyPaths",
        ),
        (ConfigExtra::CgroupNamespace, "CgroupNamespace"),
    ] {
        let mut c = t.config();
        c.extras = vec![extra];
        let r = t.policy().check_with(&t.caller(), &c, &Fake).unwrap_err();
        assert_eq!(r.rule, "extras");
        assert!(r.reason.starts_with(name), "{}", r.reason);
        assert!(r.reason.contains("not setuid"), "{}", r.reason);
    }
}

#[test]
fn a_good_config_passes() {
    let t = Tree::new();
    t.policy()
        .check_with(&t.caller(), &t.config(), &Fake)
        .unwrap();
    // raw_exec: no isolation, the task runs as the caller.
    let mut c = t.config();
    c.isolation = None;
    t.policy().check_with(&t.caller(), &c, &Fake).unwrap();
}

#[test]
fn callers_by_user_and_group() {
    let mut p = Policy::defaults(Path::new(P));
    // Default: group tend.
    p.check_caller(&caller(1000, 1000, &[990]), &Fake).unwrap();
    p.check_caller(&caller(1000, 990, &[]), &Fake).unwrap();
    let r = p
        .check_caller(&caller(1000, 1000, &[50]), &Fake)
        .unwrap_err();
    assert_eq!(r.rule, "allow_groups");
    assert!(
        r.to_string().starts_with(
            "policy /etc/tend/spawn-policy.hcl: allow_groups: uid 1000 is not allowed"
        ),
        "{r}"
    );
    p.allow_users = vec!["bob".into()];
    p.allow_groups.clear();
    p.check_caller(&caller(1001, 1001, &[]), &Fake).unwrap();
    assert_eq!(
        p.check_caller(&caller(1000, 1000, &[990]), &Fake)
            .unwrap_err()
            .rule,
        "allow_users"
    );
    p.allow_users = vec!["1000".into()];
    p.check_caller(&caller(1000, 1000, &[]), &Fake).unwrap();
    p.allow_users.clear();
    p.allow_groups = vec!["50".into(), "nosuchgroup".into()];
    p.check_caller(&caller(7, 7, &[50]), &Fake).unwrap();
    assert!(p.check_caller(&caller(7, 7, &[]), &Fake).is_err());
}

#[test]
fn task_users_refusals() {
    let t = Tree::new();
    let mut p = t.policy();
    p.task_users = vec![
        "nobody".into(),
        "bob".into(),
        "toor".into(),
        "wheelie".into(),
    ];
    let user = |u: &str| {
        let mut c = t.config();
        c.isolation.as_mut().unwrap().user = u.into();
        p.check_with(&t.caller(), &c, &Fake)
    };
    user("nobody").unwrap();
    user("1001").unwrap();
    for (u, want) in [
        ("root", "task_users: user \"root\" is never allowed"),
        ("0", "task_users: user \"0\" is never allowed"),
        ("000", "is never allowed"),
        (
            "toor",
            "task_users: user \"toor\" (uid 0, gid 0) is never allowed",
        ),
        ("wheelie", "(uid 1500, gid 0) is never allowed"),
        (
            "alice",
            "task_users: user \"alice\" is not in [\"nobody\", \"bob\", \"toor\", \"wheelie\"]",
        ),
        ("ghost", "task_users: user \"ghost\": no such user"),
    ] {
        let r = user(u).unwrap_err();
        assert_eq!(r.rule, "task_users");
        assert!(r.to_string().contains(want), "{u}: {r}");
        assert!(r
            .to_string()
            .starts_with("policy /etc/tend/spawn-policy.hcl: task_users: "));
    }
}

#[test]
fn chroot_source_refusals() {
    let t = Tree::new();
    let mut p = t.policy();
    let with = |p: &Policy, src: &str| {
        let mut c = t.config();
        c.isolation.as_mut().unwrap().chroot.as_mut().unwrap().binds[0].source = src.into();
        p.check_with(&t.caller(), &c, &Fake)
    };
    with(&p, "/usr/bin").unwrap();
    for (src, want) in [
        ("/root", "bind source \"/root\" is not allowed"),
        ("/usrx", "is not allowed"),
        ("/usr//bin", "is not canonical"),
        ("/usr/bin/", "is not canonical"),
    ] {
        let r = with(&p, src).unwrap_err();
        assert_eq!(r.rule, "chroot_sources", "{src}");
        assert!(r.reason.contains(want), "{src}: {r}");
    }
    // A symlink inside an allowed source is refused.
    let link = t.tmp.path().join("data/link");
    symlink("/root", &link).unwrap();
    p.chroot_sources.push(t.tmp.path().join("data"));
    let r = with(&p, &link.display().to_string()).unwrap_err();
    assert!(r.reason.contains("goes through a symlink"), "{r}");
    let r = with(&p, &t.path("data/missing")).unwrap_err();
    assert!(r.reason.contains("cannot be resolved"), "{r}");
}

#[test]
fn cgroup_refusals() {
    let t = Tree::new();
    let p = t.policy();
    let with = |f: &dyn Fn(&mut CgroupSpec)| {
        let mut c = t.config();
        f(c.cgroup.as_mut().unwrap());
        p.check_with(&t.caller(), &c, &Fake)
    };
    let me = t.me;
    let other = me + 1;
    for (f, rule, want) in [
        (
            Box::new(move |c: &mut CgroupSpec| c.path = format!("tend/{other}/a/t"))
                as Box<dyn Fn(&mut CgroupSpec)>,
            "cgroup_parent",
            "is not below",
        ),
        (
            Box::new(move |c: &mut CgroupSpec| c.path = format!("tend/{me}")),
            "cgroup_parent",
            "is not below",
        ),
        (
            Box::new(|c: &mut CgroupSpec| c.path = "other/a/t".into()),
            "cgroup_parent",
            "is not below",
        ),
        (
            Box::new(move |c: &mut CgroupSpec| c.path = format!("tend/{me}0/a")),
            "cgroup_parent",
            "is not below",
        ),
        (
            Box::new(|c: &mut CgroupSpec| c.daemon_path = Some("tend/d".into())),
            "cgroup_parent",
            "daemon cgroup",
        ),
        (
            Box::new(|c: &mut CgroupSpec| c.memory_bytes = None),
            "max_memory_mb",
            "no memory limit",
        ),
        (
            Box::new(|c: &mut CgroupSpec| c.memory_bytes = Some(513 * 1024 * 1024)),
            "max_memory_mb",
            "memory limit 513 MB is over 512 MB",
        ),
        (
            Box::new(|c: &mut CgroupSpec| c.pids_max = None),
            "max_pids",
            "no pids limit",
        ),
        (
            Box::new(|c: &mut CgroupSpec| c.pids_max = Some(101)),
            "max_pids",
            "pids limit 101 is over 100",
        ),
    ] {
        let r = with(&*f).unwrap_err();
        assert_eq!(r.rule, rule, "{r}");
        assert!(r.reason.contains(want), "{r}");
    }
    with(&|c: &mut CgroupSpec| c.memory_bytes = Some(512 * 1024 * 1024)).unwrap();
    // A task of another user without a cgroup has no limits: refused.
    let mut c = t.config();
    c.cgroup = None;
    let r = p.check_with(&t.caller(), &c, &Fake).unwrap_err();
    assert_eq!(r.rule, "max_memory_mb", "{r}");
    assert!(r.reason.contains("must have a cgroup"), "{r}");
    // raw_exec runs as the caller: no cgroup needed.
    c.isolation = None;
    p.check_with(&t.caller(), &c, &Fake).unwrap();
}

#[test]
fn the_default_policy_bounds_memory_and_pids_and_fills_in_what_a_request_leaves_out() {
    let p = parse("").unwrap();
    assert_eq!((p.max_memory_mb, p.max_pids), (4096, 1024));
    assert_eq!((p.default_memory_mb, p.default_pids), (300, 1024));
    let t = Tree::new();
    let mut p = t.policy();
    p.default_memory_mb = 128;
    p.default_pids = 64;
    let mut c = t.config();
    let cg = c.cgroup.as_mut().unwrap();
    cg.memory_bytes = None;
    cg.pids_max = None;
    // Unfilled, the check refuses; filled in, it passes with the defaults.
    assert_eq!(
        p.check_with(&t.caller(), &c, &Fake).unwrap_err().rule,
        "max_memory_mb"
    );
    p.apply_defaults(&mut c);
    p.check_with(&t.caller(), &c, &Fake).unwrap();
    let cg = c.cgroup.as_ref().unwrap();
    assert_eq!(cg.memory_bytes, Some(128 << 20));
    assert_eq!(cg.pids_max, Some(64));
    // What a request names stays (the bounds still refuse too much).
    let mut c = t.config();
    c.cgroup.as_mut().unwrap().pids_max = Some(101);
    p.apply_defaults(&mut c);
    assert_eq!(c.cgroup.as_ref().unwrap().pids_max, Some(101));
    assert_eq!(
        p.check_with(&t.caller(), &c, &Fake).unwrap_err().rule,
        "max_pids"
    );
}

#[test]
fn a_default_over_its_bound_is_refused_when_written_and_lowered_when_not() {
    let (line, msg) = syntax("max_pids = 100\ndefault_pids = 101\n");
    assert_eq!(line, 2);
    assert_eq!(msg, "default_pids: 101 is over max_pids (100)");
    let (line, msg) = syntax("default_memory_mb = 5000\n");
    assert_eq!(line, 1);
    assert_eq!(msg, "default_memory_mb: 5000 is over max_memory_mb (4096)");
    let p = parse("max_memory_mb = 64\n").unwrap();
    assert_eq!(p.default_memory_mb, 64);
    let p = parse("default_pids = 10\nmax_pids = 20\n").unwrap();
    assert_eq!((p.default_pids, p.max_pids), (10, 20));
}

#[test]
fn an_isolated_task_without_a_chroot_is_refused_naming_the_field() {
    let t = Tree::new();
    let mut c = t.config();
    c.isolation.as_mut().unwrap().chroot = None;
    let r = t.policy().check_with(&t.caller(), &c, &Fake).unwrap_err();
    assert_eq!(r.rule, "isolation.chroot");
    assert_eq!(
        r.to_string(),
        "policy /etc/tend/spawn-policy.hcl: isolation.chroot: a task that runs as \"nobody\" \
         must have a chroot (its own mount namespace and root)"
    );
    // A chroot with no binds at all is still a chroot: allowed.
    c.isolation.as_mut().unwrap().chroot = Some(ChrootSpec { binds: vec![] });
    t.policy().check_with(&t.caller(), &c, &Fake).unwrap();
}

#[test]
fn a_task_user_is_matched_by_name_and_uid_not_by_uid_alone() {
    let t = Tree::new();
    let p = t.policy();
    // shadowy has nobody's uid but gid 42: not nobody.
    let r = p.check_task_user("shadowy", &Fake).unwrap_err();
    assert_eq!(r.rule, "task_users");
    assert!(
        r.reason.contains("\"shadowy\" (uid 65534, gid 42)")
            && r.reason.contains("\"nobody\" (uid 65534, gid 65534)"),
        "{r}"
    );
    // nobody itself, by name or by uid (its first passwd entry).
    assert_eq!(p.check_task_user("nobody", &Fake).unwrap().gid, 65534);
    assert_eq!(p.check_task_user("65534", &Fake).unwrap().name, "nobody");
    // Listed by uid, the entry that uid resolves to is the one allowed.
    let mut p = p;
    p.task_users = vec!["65534".into()];
    p.check_task_user("nobody", &Fake).unwrap();
    assert!(p.check_task_user("shadowy", &Fake).is_err());
}

#[test]
fn caller_dir_refusals() {
    let t = Tree::new();
    let p = t.policy();
    let alloc = |dir: &str| {
        let mut c = t.config();
        c.alloc_dir = dir.into();
        p.check_with(&t.caller(), &c, &Fake)
    };
    // Outside the roots.
    let r = alloc("/etc").unwrap_err();
    assert_eq!(r.rule, "data_roots");
    assert!(r.reason.contains("is not below any of"), "{r}");
    // The root itself is no caller's dir.
    assert!(alloc(&t.path("data")).is_err());
    // A symlink to /etc/shadow, into /root, anywhere in the chain.
    symlink("/etc/shadow", t.tmp.path().join("data/me/allocs/shadow")).unwrap();
    symlink("/root", t.tmp.path().join("data/me/allocs/rootlink")).unwrap();
    symlink(t.tmp.path().join("data/me"), t.tmp.path().join("data/me2")).unwrap();
    for d in [
        "data/me/allocs/shadow",
        "data/me/allocs/rootlink",
        "data/me2/allocs/a",
    ] {
        let r = alloc(&t.path(d)).unwrap_err();
        assert_eq!(r.rule, "data_roots");
        assert!(r.reason.contains("is a symlink"), "{d}: {r}");
    }
    let r = alloc(&t.path("data/me/allocs/missing")).unwrap_err();
    assert!(r.reason.contains("No such file"), "{r}");
    // A file, not a dir.
    fs::write(t.tmp.path().join("data/me/allocs/file"), b"").unwrap();
    let r = alloc(&t.path("data/me/allocs/file")).unwrap_err();
    assert!(
        r.reason.contains("Not a directory") || r.reason.contains("not a dir"),
        "{r}"
    );
    // Owned by someone else: the caller is another uid than the owner.
    let stranger = caller(t.me + 4242, t.me + 4242, &[]);
    let mut p2 = p.clone();
    p2.allow_users = vec![stranger.uid.to_string()];
    let mut c = t.config();
    c.cgroup.as_mut().unwrap().path = format!("tend/{}/a/t", stranger.uid);
    c.cgroup.as_mut().unwrap().daemon_path = None;
    let r = p2.check_with(&stranger, &c, &Fake).unwrap_err();
    assert_eq!(r.rule, "data_roots");
    assert!(r.reason.contains("not by the caller"), "{r}");
    // The socket's dir.
    let mut c = t.config();
    c.socket_path = "/tmp/x.sock".into();
    let r = p.check_with(&t.caller(), &c, &Fake).unwrap_err();
    assert_eq!(r.rule, "run_roots");
    let mut c = t.config();
    symlink("/root", t.tmp.path().join("run/evil")).unwrap();
    c.socket_path = t.path("run/evil/t.sock");
    assert!(p
        .check_with(&t.caller(), &c, &Fake)
        .unwrap_err()
        .reason
        .contains("is a symlink"));
}

#[test]
fn group_writable_mid_dir_of_another_owner_is_refused() {
    let t = Tree::new();
    if t.me != 0 {
        return; // needs a dir owned by root inside our tree
    }
    // As root: a root-owned, group-writable middle dir is neither the caller's
    // nor safely root's, for a caller that is not root.
    let mid = t.tmp.path().join("data/shared");
    fs::create_dir_all(mid.join("mine")).unwrap();
    fs::set_permissions(&mid, fs::Permissions::from_mode(0o777)).unwrap();
    nix::unistd::chown(
        &mid.join("mine"),
        Some(nix::unistd::Uid::from_raw(4321)),
        None,
    )
    .unwrap();
    let r = open_caller_dir(&[t.tmp.path().join("data")], &mid.join("mine"), 4321).unwrap_err();
    assert!(r.contains("neither the caller's nor root's alone"), "{r}");
    fs::set_permissions(&mid, fs::Permissions::from_mode(0o755)).unwrap();
    open_caller_dir(&[t.tmp.path().join("data")], &mid.join("mine"), 4321).unwrap();
}

#[test]
fn load_checks_the_chain() {
    let tmp = tempfile::tempdir().unwrap();
    let me = nix::unistd::geteuid().as_raw();
    let etc = tmp.path().join("etc/tend");
    fs::create_dir_all(&etc).unwrap();
    fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let file = etc.join("spawn-policy.hcl");
    fs::write(&file, "max_pids = 10\n").unwrap();
    fs::set_permissions(&file, fs::Permissions::from_mode(0o644)).unwrap();
    let p = Policy::load_under(tmp.path(), &file, me).unwrap();
    assert_eq!(p.max_pids, 10);
    // Relative to the anchor works too.
    Policy::load_under(tmp.path(), Path::new("etc/tend/spawn-policy.hcl"), me).unwrap();
    // Another trusted owner: refused on the first component.
    let e = Policy::load_under(tmp.path(), &file, me + 1)
        .unwrap_err()
        .to_string();
    assert!(e.contains("is owned by uid"), "{e}");
    // Group-writable file, then dir.
    fs::set_permissions(&file, fs::Permissions::from_mode(0o664)).unwrap();
    let e = Policy::load_under(tmp.path(), &file, me)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("spawn-policy.hcl is writable by group or other (mode 664)"),
        "{e}"
    );
    fs::set_permissions(&file, fs::Permissions::from_mode(0o644)).unwrap();
    fs::set_permissions(&etc, fs::Permissions::from_mode(0o757)).unwrap();
    let e = Policy::load_under(tmp.path(), &file, me)
        .unwrap_err()
        .to_string();
    assert!(e.contains("etc/tend is writable by group or other"), "{e}");
    fs::set_permissions(&etc, fs::Permissions::from_mode(0o755)).unwrap();
    // Symlinked dir and symlinked file.
    symlink(&etc, tmp.path().join("etc/link")).unwrap();
    let e = Policy::load_under(
        tmp.path(),
        &tmp.path().join("etc/link/spawn-policy.hcl"),
        me,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("is a symlink"), "{e}");
    symlink(&file, etc.join("l.hcl")).unwrap();
    let e = Policy::load_under(tmp.path(), &etc.join("l.hcl"), me)
        .unwrap_err()
        .to_string();
    assert!(e.contains("is a symlink"), "{e}");
    // Not a regular file.
    fs::create_dir(etc.join("d.hcl")).unwrap();
    let e = Policy::load_under(tmp.path(), &etc.join("d.hcl"), me)
        .unwrap_err()
        .to_string();
    assert!(e.contains("not a regular file"), "{e}");
    // Too large.
    let big = etc.join("big.hcl");
    fs::write(&big, "#".repeat(70 * 1024)).unwrap();
    fs::set_permissions(&big, fs::Permissions::from_mode(0o644)).unwrap();
    let e = Policy::load_under(tmp.path(), &big, me)
        .unwrap_err()
        .to_string();
    assert!(e.contains("is over 65536 bytes"), "{e}");
    // A syntax error names the file and line.
    fs::write(&file, "\nnope = 1\n").unwrap();
    let e = Policy::load_under(tmp.path(), &file, me)
        .unwrap_err()
        .to_string();
    assert_eq!(
        e,
        format!("{}:2: unknown attribute \"nope\"", file.display())
    );
    // The real load walks from /: a file under /tmp (1777) is refused.
    let e = Policy::load(&file).unwrap_err().to_string();
    assert!(
        e.contains("/tmp is writable by group or other") || e.contains("is owned by uid"),
        "{e}"
    );
}

#[test]
fn a_writable_root_is_refused_in_setuid_mode() {
    let t = Tree::new();
    let mut c = t.config();
    let binds = &mut c.isolation.as_mut().unwrap().chroot.as_mut().unwrap().binds;
    binds[0].target = "/".into();
    let r = t.policy().check_with(&t.caller(), &c, &Fake).unwrap_err();
    assert_eq!(r.rule, "isolation.chroot.binds[0]");
    assert!(r.reason.contains("writable root"), "{r}");
}
