//! The real privilege drop, as root. Ids and capabilities cannot come back once
//! dropped, so this is the only test of its binary: the binary is the process
//! that drops (under nextest and under `cargo test` alike).

use tend_spawn::setuid::{drop_to_caller, CallerIds, Linux, Syscall, KEPT_CAPS};

#[test]
fn drop_to_caller_keeps_only_cap_kill_and_root_cannot_come_back() {
    if !nix::unistd::geteuid().is_root() {
        // tend-tests' skip_or_fail, which this crate cannot depend on: a skip
        // under CI=true proves nothing.
        assert!(
            std::env::var_os("CI").is_none_or(|v| v != "true"),
            "cannot run under CI=true: needs root"
        );
        println!("skipped: needs root");
        return;
    }
    let ids = CallerIds {
        uid: 65534,
        gid: 65534,
        groups: vec![],
    };
    drop_to_caller(&Linux, &ids, &KEPT_CAPS).unwrap();
    // capset is per thread: read this thread's status.
    let status = std::fs::read_to_string("/proc/thread-self/status").unwrap();
    for want in [
        "CapEff:\t0000000000000020",
        "CapPrm:\t0000000000000020",
        "CapInh:\t0000000000000000",
        "CapAmb:\t0000000000000000",
        "Uid:\t65534\t65534\t65534\t65534",
        "Gid:\t65534\t65534\t65534\t65534",
    ] {
        assert!(status.contains(want), "{want:?} not in\n{status}");
    }
    assert!(Linux.setresuid(0, 0, 0).is_err(), "root came back");
}
