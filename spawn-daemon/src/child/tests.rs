//! Tests of the task's start: messages, and the init of a pid namespace.

use super::*;

/// As root, in this test's own process (nextest): `start_ns_init` with
/// the task user nobody and a `place` that notes the pid.
fn init_for_nobody() -> (Prepared, std::cell::Cell<Option<Pid>>) {
    let c = tend_proto::config::example("/tmp/a", "/tmp/s");
    let prep = Prepared::new(
        &c,
        Some(Isolation {
            uid: 65534,
            gid: 65534,
        }),
        None,
        Some(0),
    )
    .unwrap();
    (prep, std::cell::Cell::new(None))
}

#[test]
fn an_init_whose_drop_fails_is_reported_with_its_stage_and_reaped() {
    if !crate::test_have_root() {
        return;
    }
    // Root without CAP_SETGID and CAP_SETUID (this thread's sets, which
    // the fork copies): the init's setgroups fails.
    let mut caps = crate::sys::capget().unwrap();
    // CAP_SETGID is 6, CAP_SETUID 7.
    caps.effective &= !((1 << 6) | (1 << 7));
    crate::sys::capset(caps).unwrap();
    let (prep, placed) = init_for_nobody();
    let mut init = start_ns_init(&prep, &|pid| {
        placed.set(Some(pid));
        Ok(())
    })
    .unwrap();
    assert_eq!(placed.get(), Some(init.pid), "placed before its answer");
    let f = init.await_ready(&prep).unwrap_err();
    assert_eq!(f.stage, Stage::Setgroups, "{f:?}");
    assert_eq!(f.errno, libc::EPERM, "{f:?}");
    assert_eq!(
        f.message,
        "setgroups [] (pid namespace init): Operation not permitted"
    );
    drop(init);
    let ns = own_pid_ns().unwrap();
    crate::sys::set_children_pid_ns(ns.as_fd()).unwrap();
    // Reaped: no child is left.
    assert_eq!(
        nix::sys::wait::waitpid(None, Some(nix::sys::wait::WaitPidFlag::WNOHANG)),
        Err(Errno::ECHILD)
    );
}

#[test]
fn a_ready_init_is_placed_as_the_task_user_and_dies_with_its_daemon() {
    if !crate::test_have_root() {
        return;
    }
    // The daemon: a fork of this process that starts the init, says its
    // pid and then waits to be killed.
    let (pid_r, pid_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).unwrap();
    let daemon = match fork_single_threaded().unwrap() {
        Forked::Child => {
            let (prep, placed) = init_for_nobody();
            let code = match start_ns_init(&prep, &|pid| {
                placed.set(Some(pid));
                Ok(())
            })
            .and_then(|mut init| init.await_ready(&prep).map(|()| init))
            {
                Ok(init) if placed.get() == Some(init.pid) => {
                    let _ = nix::unistd::write(&pid_w, &init.pid.as_raw().to_le_bytes());
                    std::mem::forget(init);
                    loop {
                        nix::unistd::pause();
                    }
                }
                _ => 1,
            };
            crate::sys::exit_now(code)
        }
        Forked::Parent(pid) => pid,
    };
    drop(pid_w);
    let mut b = [0u8; 4];
    assert_eq!(nix::unistd::read(&pid_r, &mut b), Ok(4), "no init started");
    let init = Pid::from_raw(i32::from_le_bytes(b));
    let status = std::fs::read_to_string(format!("/proc/{init}/status")).unwrap();
    assert!(
        status.contains("Uid:\t65534\t65534\t65534\t65534"),
        "{status}"
    );
    assert!(status.contains("Name:\ttend-init"), "{status}");
    let init_fd = crate::sys::pidfd_open(init).unwrap();
    nix::sys::signal::kill(daemon, nix::sys::signal::Signal::SIGKILL).unwrap();
    let _ = crate::sys::wait_blocking(daemon);
    let mut fds = [nix::poll::PollFd::new(
        init_fd.as_fd(),
        nix::poll::PollFlags::POLLIN,
    )];
    let gone = nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(5000u16)).unwrap();
    assert_eq!(gone, 1, "the init outlived its daemon");
}

#[test]
fn an_init_whose_daemon_is_gone_before_it_is_ready_leaves() {
    // The daemon's end is closed before the init runs (the daemon died
    // before the parent-death signal was armed): the ready byte finds
    // no reader and the init leaves at once rather than wait forever.
    let (daemon_end, init_end) = socketpair(
        AddressFamily::Unix,
        SockType::Stream,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .unwrap();
    drop(daemon_end);
    let pid = match raw::fork().unwrap() {
        0 => task::init_main(None, init_end.as_raw_fd()),
        pid => Pid::from_raw(pid),
    };
    drop(init_end);
    let fd = crate::sys::pidfd_open(pid).unwrap();
    let mut fds = [nix::poll::PollFd::new(
        fd.as_fd(),
        nix::poll::PollFlags::POLLIN,
    )];
    let ended = nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(5000u16)).unwrap();
    if ended == 0 {
        let _ = crate::sys::pidfd_send_signal(fd.as_fd(), libc::SIGKILL);
    }
    let status = crate::sys::wait_blocking(pid).unwrap();
    assert_eq!(ended, 1, "the init waited for a daemon that is gone");
    assert!(libc::WIFEXITED(status), "{status:#x}");
    assert_eq!(libc::WEXITSTATUS(status), 127);
}

#[test]
fn messages_name_stage_value_and_error() {
    assert_eq!(
        failure_message(Stage::Exec, "/nonexistent", libc::ENOENT),
        "exec /nonexistent: No such file or directory"
    );
    assert_eq!(
        failure_message(Stage::Chdir, "/nope", libc::ENOTDIR),
        "chdir /nope: Not a directory"
    );
    assert_eq!(
        failure_message(Stage::Setuid, "uid 5", 0),
        "setuid uid 5: failed"
    );
}

#[test]
fn what_names_the_value_of_the_stage() {
    let mut c = tend_proto::config::example("/tmp/a", "/tmp/s");
    c.command = "/bin/x".into();
    c.cwd = "/w".into();
    let p = Prepared::new(
        &c,
        Some(Isolation {
            uid: 65534,
            gid: 65533,
        }),
        None,
        Some(0),
    )
    .unwrap();
    assert_eq!(p.what(Stage::Exec, 0), "/bin/x");
    assert_eq!(p.what(Stage::Chdir, 0), "/w");
    assert_eq!(p.what(Stage::Setuid, 0), "uid 65534");
    assert_eq!(p.what(Stage::Setgid, 0), "gid 65533");
    assert_eq!(p.what(Stage::Mount, 0), "/tmp/a/t");
    assert_eq!(p.what(Stage::Mount, 3), "/tmp/a/t");
    assert!(!format!("{p:?}").contains("PATH"));
}

#[test]
fn the_namespaces_step_names_its_item() {
    let mut c = tend_proto::config::example("/tmp/a", "/tmp/s");
    c.namespaces.uts = true;
    c.namespaces.hostname = Some("box1".into());
    c.namespaces.net = true;
    let p = Prepared::new(&c, None, None, Some(0)).unwrap();
    assert_eq!(p.ns_flags, libc::CLONE_NEWUTS | libc::CLONE_NEWNET);
    assert_eq!(p.what(Stage::Fork, 0), "setpgid");
    assert_eq!(p.what(Stage::Fork, NS_UNSHARE), "uts network namespaces");
    assert_eq!(p.what(Stage::Fork, NS_HOSTNAME), "sethostname box1");
    assert_eq!(
        failure_message(Stage::Fork, &p.what(Stage::Fork, NS_LOOPBACK), libc::EPERM),
        "fork lo up in the network namespace: Operation not permitted"
    );
    c.extras = vec![tend_proto::config::ConfigExtra::CgroupNamespace];
    let p = Prepared::new(&c, None, None, Some(0)).unwrap();
    assert_eq!(
        p.ns_flags,
        libc::CLONE_NEWUTS | libc::CLONE_NEWNET | libc::CLONE_NEWCGROUP
    );
    assert_eq!(
        failure_message(Stage::Fork, &p.what(Stage::Fork, NS_UNSHARE), libc::EPERM),
        "fork uts network cgroup namespaces: Operation not permitted"
    );
    let files: Vec<&str> = own_namespaces(&c).map(|n| n.proc_file).collect();
    assert_eq!(files, ["uts", "net", "cgroup"]);
}

#[test]
fn an_init_whose_ready_is_read_but_never_answered_leaves() {
    // The other end outlived the daemon in a copy (the task's child before
    // its exec) that read nothing and then closed: the init's ready went
    // through, no answer came, and the init leaves on the EOF.
    let (daemon_end, init_end) = socketpair(
        AddressFamily::Unix,
        SockType::Stream,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .unwrap();
    let pid = match raw::fork().unwrap() {
        0 => task::init_main(None, init_end.as_raw_fd()),
        pid => Pid::from_raw(pid),
    };
    drop(init_end);
    let mut b = [0u8; 1];
    assert_eq!(nix::unistd::read(&daemon_end, &mut b), Ok(1), "no ready");
    assert_eq!(b[0], INIT_READY);
    drop(daemon_end);
    let fd = crate::sys::pidfd_open(pid).unwrap();
    let mut fds = [nix::poll::PollFd::new(
        fd.as_fd(),
        nix::poll::PollFlags::POLLIN,
    )];
    let ended = nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(5000u16)).unwrap();
    if ended == 0 {
        let _ = crate::sys::pidfd_send_signal(fd.as_fd(), libc::SIGKILL);
    }
    let status = crate::sys::wait_blocking(pid).unwrap();
    assert_eq!(ended, 1, "the init waited for an answer from no one");
    assert!(libc::WIFEXITED(status), "{status:#x}");
    assert_eq!(libc::WEXITSTATUS(status), 127);
}
