//! systemd's notify protocol (`Type=notify`): `READY=1` once the agent has
//! taken up its state, `STATUS=` lines a person reads in `systemctl status`,
//! `WATCHDOG=1` while the agent's state answers, `STOPPING=1` on the way out.
//! A datagram per message to `$NOTIFY_SOCKET` (a path, or `@name` for the
//! abstract namespace); without that variable every call does nothing.

use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

/// Where the service manager listens, read once at start.
#[derive(Debug)]
pub struct Notifier {
    socket: UnixDatagram,
    addr: SocketAddr,
    /// Half of `$WATCHDOG_USEC`, when the watchdog is on for this process.
    watchdog_every: Option<Duration>,
}

impl Notifier {
    /// From `$NOTIFY_SOCKET`, `$WATCHDOG_USEC` and `$WATCHDOG_PID`, which are
    /// then removed from the environment so that no child inherits them.
    /// None without `$NOTIFY_SOCKET` (not under systemd, or `Type=simple`).
    /// Call it while the process has one thread.
    pub fn from_env() -> Option<Notifier> {
        let path = std::env::var_os("NOTIFY_SOCKET");
        let usec = std::env::var("WATCHDOG_USEC").ok();
        let pid = std::env::var("WATCHDOG_PID").ok();
        for name in ["NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"] {
            // While the process has one thread (see above): nothing reads
            // the environment meanwhile.
            std::env::remove_var(name);
        }
        let path = path?;
        let notifier = Self::new(&path.to_string_lossy(), usec.as_deref(), pid.as_deref());
        if let Err(e) = &notifier {
            tracing::warn!(socket = %path.to_string_lossy(), error = %e, "NOTIFY_SOCKET unusable: no readiness or watchdog messages");
        }
        notifier.ok()
    }

    /// A notifier of the socket `path`; the watchdog from `usec` (microseconds)
    /// when `pid` is absent or ours.
    pub fn new(path: &str, usec: Option<&str>, pid: Option<&str>) -> std::io::Result<Notifier> {
        let addr = match path.strip_prefix('@') {
            Some(name) => SocketAddr::from_abstract_name(name.as_bytes())?,
            None => SocketAddr::from_pathname(path)?,
        };
        let ours = pid.is_none_or(|p| p.parse::<u32>().ok() == Some(std::process::id()));
        let watchdog_every = usec
            .and_then(|u| u.parse::<u64>().ok())
            .filter(|u| *u > 0 && ours)
            .map(|u| Duration::from_micros(u / 2));
        let socket = UnixDatagram::unbound()?;
        socket.set_nonblocking(true)?;
        Ok(Notifier {
            socket,
            addr,
            watchdog_every,
        })
    }

    /// How often to send `WATCHDOG=1`, when the service manager asked for it.
    pub fn watchdog_every(&self) -> Option<Duration> {
        self.watchdog_every
    }

    /// Send `msg` (newline-separated `KEY=VALUE` lines); a failure is logged
    /// once per call, never fatal: the agent works without its manager.
    pub fn send(&self, msg: &str) {
        if let Err(e) = self.socket.send_to_addr(msg.as_bytes(), &self.addr) {
            tracing::warn!(error = %e, "sd_notify");
        }
    }
}

/// `STATUS=` of the agent at work: its tasks by phase.
pub fn status_line(running: usize, pending: usize, allocs: usize) -> String {
    format!("STATUS=running: {running} tasks running, {pending} pending, in {allocs} allocations")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_reach_a_path_and_an_abstract_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let listener = UnixDatagram::bind(&path).unwrap();
        let n = Notifier::new(path.to_str().unwrap(), None, None).unwrap();
        n.send("READY=1\nSTATUS=up");
        let mut buf = [0u8; 64];
        let len = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"READY=1\nSTATUS=up");

        let name = format!("tend-notify-test-{}", std::process::id());
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let listener = UnixDatagram::bind_addr(&addr).unwrap();
        let n = Notifier::new(&format!("@{name}"), None, None).unwrap();
        n.send("WATCHDOG=1");
        let len = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"WATCHDOG=1");
    }

    #[test]
    fn the_watchdog_is_half_its_usec_and_only_for_its_pid() {
        let n = |usec, pid| {
            Notifier::new("/nonexistent", usec, pid)
                .unwrap()
                .watchdog_every()
        };
        assert_eq!(n(Some("3000000"), None), Some(Duration::from_millis(1500)));
        let me = std::process::id().to_string();
        assert_eq!(
            n(Some("3000000"), Some(&me)),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(n(Some("3000000"), Some("1")), None);
        assert_eq!(n(Some("0"), None), None);
        assert_eq!(n(Some("x"), None), None);
        assert_eq!(n(None, None), None);
    }
}
