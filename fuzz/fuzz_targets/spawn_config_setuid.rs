//! The spawn config as a setuid tend-spawn sees it: decoded, validated, then
//! checked against a fixed policy for a fixed caller. None of it may panic;
//! a config that passes must name a cgroup below the caller's own.
#![no_main]

use std::path::Path;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use tend_proto::frame::{decode_body, FrameDecoder};
use tend_proto::SpawnConfig;
use tend_policy::{Account, Accounts, Caller, Policy};

/// Fixed accounts: no NSS lookups while fuzzing.
struct Fixed;

impl Accounts for Fixed {
    fn user(&self, user: &str) -> Option<Account> {
        let all = [("nobody", 65534, 65534), ("root", 0, 0), ("toor", 0, 0), ("alice", 1000, 1000)];
        all.iter()
            .find(|(n, uid, _)| *n == user || user.parse::<u32>().ok() == Some(*uid))
            .map(|(n, uid, gid)| Account {
                name: n.to_string(),
                uid: *uid,
                gid: *gid,
            })
    }
    fn group(&self, name: &str) -> Option<u32> {
        (name == "tend").then_some(990)
    }
}

fn policy() -> &'static Policy {
    static P: OnceLock<Policy> = OnceLock::new();
    P.get_or_init(|| {
        Policy::parse(
            Path::new("/etc/tend/spawn-policy.hcl"),
            "allow_groups = [\"tend\"]\n\
             task_users = [\"nobody\", \"toor\"]\n\
             data_roots = [\"/nonexistent/tend-fuzz/data\"]\n\
             run_roots = [\"/nonexistent/tend-fuzz/run\"]\n\
             max_memory_mb = 1024\n\
             max_pids = 100\n",
        )
        .expect("the fuzz policy parses")
    })
}

fn check(body: &[u8]) {
    let Ok(c) = decode_body::<SpawnConfig>(body) else {
        return;
    };
    if c.validate().is_err() {
        return;
    }
    let caller = Caller {
        uid: 1000,
        gid: 1000,
        groups: vec![990],
    };
    match policy().check_with(&caller, &c, &Fixed) {
        Ok(()) => {
            // The data roots do not exist, so nothing may pass.
            panic!("a config passed a policy whose roots do not exist: {c:?}");
        }
        Err(r) => {
            let line = r.to_string();
            assert!(!line.contains('\n'), "a refusal is one line: {line:?}");
            assert!(line.starts_with("policy /etc/tend/spawn-policy.hcl: "));
        }
    }
    // The rules that need no file system, one by one.
    if let Some(iso) = &c.isolation {
        if let Ok(a) = policy().check_task_user(&iso.user, &Fixed) {
            assert!(a.uid != 0 && a.gid != 0, "root passed as task user {:?}", iso.user);
        }
    }
    if policy().check_cgroup(&caller, &c).is_ok() {
        if let Some(cg) = &c.cgroup {
            assert!(cg.path.starts_with("tend/1000/"), "{:?}", cg.path);
            assert!(cg.memory_bytes.is_some_and(|m| m <= 1024 * 1024 * 1024));
            assert!(cg.pids_max.is_some_and(|n| n <= 100));
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let mut dec = FrameDecoder::new();
    dec.push(data);
    if let Ok(Some(f)) = dec.next_frame() {
        check(&f.body);
    }
    check(data);
});
