use std::cell::RefCell;

use super::*;

/// One recorded call.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Call {
    CloseFds,
    ClearEnv,
    Umask(u32),
    Dumpable(bool),
    NoNewPrivs,
    KeepCaps(bool),
    SetGroups(Vec<u32>),
    SetResGid(u32, u32, u32),
    SetResUid(u32, u32, u32),
    GetResUid,
    GetResGid,
    SetFsUid(u32),
    SetFsGid(u32),
    CapSet(CapSets),
    CapGet,
    ClearAmbient,
}

/// A kernel that records every call and keeps just enough state to answer
/// the read-backs; `deaf_fsuid` makes setfsuid ignore its argument (as the
/// kernel does when the caller lacks CAP_SETUID), `fail` fails one call.
#[derive(Default)]
struct Recorder {
    calls: RefCell<Vec<Call>>,
    fsuid: RefCell<u32>,
    fsgid: RefCell<u32>,
    uids: RefCell<(u32, u32, u32)>,
    gids: RefCell<(u32, u32, u32)>,
    caps: RefCell<CapSets>,
    deaf_fsuid: bool,
    fail: Option<&'static str>,
    caps_stick: bool,
}

impl Recorder {
    fn rec(&self, c: Call) {
        self.calls.borrow_mut().push(c);
    }
    fn result(&self, name: &str) -> io::Result<()> {
        if self.fail == Some(name) {
            Err(io::Error::from_raw_os_error(libc::EPERM))
        } else {
            Ok(())
        }
    }
    fn calls(&self) -> Vec<Call> {
        self.calls.borrow().clone()
    }
}

impl Syscall for Recorder {
    fn close_fds_above_stdio(&self) {
        self.rec(Call::CloseFds);
    }
    fn clear_env(&self) {
        self.rec(Call::ClearEnv);
    }
    fn umask(&self, mask: u32) {
        self.rec(Call::Umask(mask));
    }
    fn set_dumpable(&self, on: bool) -> io::Result<()> {
        self.rec(Call::Dumpable(on));
        self.result("dumpable")
    }
    fn set_no_new_privs(&self) -> io::Result<()> {
        self.rec(Call::NoNewPrivs);
        self.result("nnp")
    }
    fn set_keepcaps(&self, on: bool) -> io::Result<()> {
        self.rec(Call::KeepCaps(on));
        self.result("keepcaps")
    }
    fn setgroups(&self, groups: &[u32]) -> io::Result<()> {
        self.rec(Call::SetGroups(groups.to_vec()));
        self.result("setgroups")
    }
    fn setresgid(&self, r: u32, e: u32, s: u32) -> io::Result<()> {
        self.rec(Call::SetResGid(r, e, s));
        self.result("setresgid")?;
        *self.gids.borrow_mut() = (r, e, s);
        Ok(())
    }
    fn setresuid(&self, r: u32, e: u32, s: u32) -> io::Result<()> {
        self.rec(Call::SetResUid(r, e, s));
        self.result("setresuid")?;
        *self.uids.borrow_mut() = (r, e, s);
        Ok(())
    }
    fn getresuid(&self) -> io::Result<(u32, u32, u32)> {
        self.rec(Call::GetResUid);
        Ok(*self.uids.borrow())
    }
    fn getresgid(&self) -> io::Result<(u32, u32, u32)> {
        self.rec(Call::GetResGid);
        Ok(*self.gids.borrow())
    }
    fn setfsuid(&self, uid: u32) -> u32 {
        self.rec(Call::SetFsUid(uid));
        let prev = *self.fsuid.borrow();
        if uid != u32::MAX && !self.deaf_fsuid {
            *self.fsuid.borrow_mut() = uid;
        }
        prev
    }
    fn setfsgid(&self, gid: u32) -> u32 {
        self.rec(Call::SetFsGid(gid));
        let prev = *self.fsgid.borrow();
        if gid != u32::MAX {
            *self.fsgid.borrow_mut() = gid;
        }
        prev
    }
    fn capset(&self, sets: CapSets) -> io::Result<()> {
        self.rec(Call::CapSet(sets));
        self.result("capset")?;
        if !self.caps_stick {
            *self.caps.borrow_mut() = sets;
        }
        Ok(())
    }
    fn capget(&self) -> io::Result<CapSets> {
        self.rec(Call::CapGet);
        Ok(*self.caps.borrow())
    }
    fn clear_ambient(&self) -> io::Result<()> {
        self.rec(Call::ClearAmbient);
        self.result("ambient")
    }
}

fn alice() -> CallerIds {
    CallerIds {
        uid: 1000,
        gid: 1000,
        groups: vec![990, 1000],
    }
}

#[test]
fn early_sanitize_sequence() {
    let r = Recorder::default();
    early_sanitize(&r, 1).unwrap();
    assert_eq!(
        r.calls(),
        [
            Call::Dumpable(false),
            Call::ClearEnv,
            Call::CloseFds,
            Call::Umask(0o077),
            Call::NoNewPrivs,
        ]
    );
}

#[test]
fn early_sanitize_refuses_argc_zero_before_anything() {
    let r = Recorder::default();
    assert!(matches!(early_sanitize(&r, 0), Err(SetuidError::ArgcZero)));
    assert!(r.calls().is_empty());
}

#[test]
fn early_sanitize_fails_on_no_new_privs() {
    let r = Recorder {
        fail: Some("nnp"),
        ..Recorder::default()
    };
    let e = early_sanitize(&r, 1).unwrap_err().to_string();
    assert_eq!(
        e,
        "setuid: PR_SET_NO_NEW_PRIVS 1: Operation not permitted (os error 1)"
    );
}

#[test]
fn drop_to_caller_sequence() {
    let r = Recorder::default();
    drop_to_caller(&r, &alice(), &KEPT_CAPS).unwrap();
    let kill = CapSets {
        effective: 1 << 5,
        permitted: 1 << 5,
        inheritable: 0,
    };
    assert_eq!(
        r.calls(),
        [
            Call::KeepCaps(true),
            Call::SetGroups(vec![990, 1000]),
            Call::SetResGid(1000, 1000, 1000),
            Call::SetResUid(1000, 1000, 1000),
            Call::CapSet(kill),
            Call::ClearAmbient,
            Call::KeepCaps(false),
            Call::Dumpable(false),
            Call::GetResUid,
            Call::GetResGid,
            Call::CapGet,
        ]
    );
}

#[test]
fn drop_to_caller_with_nothing_kept() {
    let r = Recorder::default();
    drop_to_caller(&r, &alice(), &[]).unwrap();
    assert!(r.calls().contains(&Call::CapSet(CapSets::default())));
}

#[test]
fn drop_to_caller_stops_at_the_first_failure() {
    for (fail, last) in [
        ("keepcaps", Call::KeepCaps(true)),
        ("setgroups", Call::SetGroups(vec![990, 1000])),
        ("setresgid", Call::SetResGid(1000, 1000, 1000)),
        ("setresuid", Call::SetResUid(1000, 1000, 1000)),
        ("ambient", Call::ClearAmbient),
    ] {
        let r = Recorder {
            fail: Some(fail),
            ..Recorder::default()
        };
        let e = drop_to_caller(&r, &alice(), &KEPT_CAPS).unwrap_err();
        assert!(matches!(e, SetuidError::Step { .. }), "{fail}: {e}");
        assert_eq!(r.calls().last(), Some(&last), "{fail}");
    }
}

#[test]
fn drop_to_caller_verifies_the_caps() {
    let r = Recorder {
        caps_stick: true,
        ..Recorder::default()
    };
    *r.caps.borrow_mut() = CapSets {
        effective: u64::MAX,
        permitted: u64::MAX,
        inheritable: 0,
    };
    let e = drop_to_caller(&r, &alice(), &KEPT_CAPS).unwrap_err();
    assert!(e.to_string().starts_with("setuid: capabilities is"), "{e}");
}

#[test]
fn drop_to_root_is_refused() {
    let r = Recorder::default();
    let root = CallerIds {
        uid: 0,
        gid: 0,
        groups: vec![],
    };
    assert!(drop_to_caller(&r, &root, &KEPT_CAPS).is_err());
    assert!(r.calls().is_empty());
}

#[test]
fn as_caller_sequence() {
    let r = Recorder::default();
    let out = as_caller(&r, &alice(), || {
        assert_eq!(*r.fsuid.borrow(), 1000);
        assert_eq!(*r.fsgid.borrow(), 1000);
        42
    })
    .unwrap();
    assert_eq!(out, 42);
    assert_eq!(
        r.calls(),
        [
            Call::SetFsGid(1000),
            Call::SetFsGid(u32::MAX),
            Call::SetFsUid(1000),
            Call::SetFsUid(u32::MAX),
            Call::SetFsUid(0),
            Call::SetFsUid(u32::MAX),
            Call::SetFsGid(0),
            Call::SetFsGid(u32::MAX),
        ]
    );
    assert_eq!((*r.fsuid.borrow(), *r.fsgid.borrow()), (0, 0));
}

#[test]
fn as_caller_does_not_run_when_fsuid_does_not_change() {
    let r = Recorder {
        deaf_fsuid: true,
        ..Recorder::default()
    };
    let mut ran = false;
    let e = as_caller(&r, &alice(), || ran = true).unwrap_err();
    assert!(!ran);
    assert_eq!(e.to_string(), "setuid: fsuid is 0 after setting it to 1000");
    // The fsgid went back.
    assert_eq!(r.calls().last(), Some(&Call::SetFsGid(0)));
}

#[test]
fn kept_caps_are_kill_only() {
    assert_eq!(KEPT_CAPS.map(Cap::name), ["CAP_KILL"]);
    assert_eq!(kept_sets(&KEPT_CAPS).inheritable, 0);
}

/// The real calls, where they can run unprivileged: fs ids read back, capget.
#[test]
fn linux_read_backs() {
    let me = nix::unistd::geteuid().as_raw();
    assert_eq!(crate::sys::fsuid(), me);
    let caps = Linux.capget().unwrap();
    if me != 0 {
        assert_eq!(caps.effective, 0);
    }
    // as_caller to ourselves is a no-op that verifies.
    let ids = CallerIds {
        uid: me,
        gid: nix::unistd::getegid().as_raw(),
        groups: vec![],
    };
    assert_eq!(as_caller(&Linux, &ids, || 7).unwrap(), 7);
}

/// As root: a file made inside as_caller is the caller's, and a root-only dir
/// is closed to it; afterwards this thread is root again.
#[test]
fn linux_as_caller_creates_as_the_caller() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    if !crate::test_have_root() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let open = tmp.path().join("open");
    let closed = tmp.path().join("closed");
    std::fs::create_dir(&open).unwrap();
    std::fs::create_dir(&closed).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    std::fs::set_permissions(&closed, std::fs::Permissions::from_mode(0o700)).unwrap();
    let nobody = CallerIds {
        uid: 65534,
        gid: 65534,
        groups: vec![],
    };
    let (made, refused) = as_caller(&Linux, &nobody, || {
        (
            std::fs::write(open.join("f"), b"x"),
            std::fs::write(closed.join("f"), b"x"),
        )
    })
    .unwrap();
    made.unwrap();
    assert_eq!(refused.unwrap_err().kind(), io::ErrorKind::PermissionDenied);
    let meta = std::fs::metadata(open.join("f")).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (65534, 65534));
    assert_eq!(crate::sys::fsuid(), 0);
    std::fs::write(closed.join("g"), b"root again").unwrap();
}
