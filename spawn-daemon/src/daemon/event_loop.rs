//! The daemon's poll loop: signals, the task's pidfd, its log pipes, the
//! control socket and its clients, and the deadlines of the stop, the
//! sweeps, the drain and the linger.

use std::os::fd::AsFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::Signal;
use nix::sys::signalfd::SignalFd;
use tracing::{info, warn};

use super::life::Phase;
use super::supervise::Daemon;
use crate::clock::{Clock, Monotonic};
use crate::reaper;
use crate::server::{accept_all, Client};

/// Size of the one read buffer shared by pipes and clients.
const READ_BUF: usize = 16 * 1024;

/// What the poll loop takes over from the start: the control socket and the
/// signalfd of SIGCHLD and SIGTERM.
pub struct Started {
    /// The bound control socket.
    pub listener: UnixListener,
    /// SIGCHLD and SIGTERM, blocked and read here.
    pub signals: SignalFd,
    /// The socket's file, removed as the loop returns.
    pub _socket_file: super::SocketFile,
    /// The starter's first connection, handed over at spawn.
    pub handed: Option<UnixStream>,
}

const SLOT_SIGNALS: usize = 0;
const SLOT_PIDFD: usize = 1;
const SLOT_STDOUT: usize = 2;
const SLOT_STDERR: usize = 3;
const SLOT_LISTENER: usize = 4;
const FIRST_CLIENT: usize = 5;

pub fn event_loop(d: &mut Daemon, s: Started) -> i32 {
    event_loop_on(d, s, &Monotonic)
}

/// The loop, reading the time from `clock`. Each step reads it afresh: a
/// time taken before the blocking poll is hours old after it for a daemon
/// nobody talked to, and a deadline counted from it has passed at birth.
fn event_loop_on(d: &mut Daemon, mut s: Started, clock: &dyn Clock) -> i32 {
    let mut clients: Vec<Client> = Vec::new();
    let mut buf = vec![0u8; READ_BUF];
    let my_uid = nix::unistd::getuid().as_raw();
    match s.handed.take().map(Client::handed) {
        Some(Ok(mut c)) => {
            let admitted = c.check_peer(my_uid);
            if admitted {
                clients.push(c);
            }
        }
        Some(Err(e)) => warn!(error = %e, "the handed connection cannot be served"),
        None => {}
    }
    let mut revents: Vec<PollFlags> = Vec::new();
    loop {
        let now = clock.now();
        // Deadlines.
        if let Some(at) = d.kill_at {
            if now >= at {
                info!("grace is over: SIGKILL to everything of the task");
                d.kill_at = None;
                d.start_sweep();
            }
        }
        if d.sweep_at.is_some_and(|at| now >= at) {
            d.sweep();
        }
        if let Some(at) = d.drain_until {
            let pipes_done = d.stdout.is_none() && d.stderr.is_none();
            // The exit is recorded once nothing of the task is left (or the
            // killing gave up), so the cgroup can go right after.
            if (pipes_done || now >= at) && d.sweep_at.is_none() {
                if !pipes_done {
                    warn!("log pipes still open after the task's end; closing them");
                    d.stdout = None;
                    d.stderr = None;
                }
                d.finish(&mut clients);
            }
        }
        if let Some(at) = d.linger_until {
            if now >= at {
                info!("linger is over");
                d.life.enter(Phase::Leaving);
            }
        }
        d.deliver_exec_exits(&mut clients);
        for c in clients.iter_mut() {
            if c.wants_write() || c.session.closing {
                c.flush(now);
            }
            if c.expired(now) {
                c.dead = true;
            }
        }
        d.abandon_execs(&clients);
        clients.retain(|c| !c.dead);
        if d.life.phase() == Phase::Leaving {
            for c in clients.iter_mut() {
                c.flush(now);
            }
            return 0;
        }

        let mut deadline: Option<Instant> = None;
        // While the killing goes on, the drain deadline waits for it.
        let drain_until = d.drain_until.filter(|_| d.sweep_at.is_none());
        for t in [d.kill_at, d.sweep_at, drain_until, d.linger_until]
            .into_iter()
            .flatten()
            .chain(clients.iter().filter_map(|c| c.deadline))
        {
            deadline = Some(deadline.map_or(t, |x: Instant| x.min(t)));
        }
        let timeout = match deadline {
            None => PollTimeout::NONE,
            Some(t) => {
                let ms = t.saturating_duration_since(now).as_millis() + 1;
                PollTimeout::try_from(ms.min(60_000) as i32).unwrap_or(PollTimeout::MAX)
            }
        };

        {
            let none = PollFlags::empty();
            let inp = PollFlags::POLLIN;
            let mut fds: Vec<PollFd<'_>> = Vec::with_capacity(FIRST_CLIENT + clients.len());
            fds.push(PollFd::new(s.signals.as_fd(), inp));
            let dummy = s.signals.as_fd();
            fds.push(match &d.pidfd {
                Some(p) => PollFd::new(p.as_fd(), inp),
                None => PollFd::new(dummy, none),
            });
            fds.push(match &d.stdout {
                Some(p) => PollFd::new(p.fd.as_fd(), inp),
                None => PollFd::new(dummy, none),
            });
            fds.push(match &d.stderr {
                Some(p) => PollFd::new(p.fd.as_fd(), inp),
                None => PollFd::new(dummy, none),
            });
            fds.push(PollFd::new(s.listener.as_fd(), inp));
            for c in &clients {
                let mut ev = none;
                if c.wants_read() {
                    ev |= inp;
                }
                if c.wants_write() {
                    ev |= PollFlags::POLLOUT;
                }
                fds.push(PollFd::new(c.fd(), ev));
            }
            match poll(&mut fds, timeout) {
                Ok(_) => {}
                Err(Errno::EINTR) => continue,
                Err(e) => {
                    tracing::error!(error = %e, "poll failed");
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                }
            }
            revents.clear();
            revents.extend(fds.iter().map(|f| f.revents().unwrap_or(none)));
        }
        let ready = |i: usize| !revents[i].is_empty();

        if ready(SLOT_SIGNALS) {
            let mut chld = false;
            while let Ok(Some(si)) = s.signals.read_signal() {
                if si.ssi_signo == Signal::SIGTERM as u32 {
                    info!("SIGTERM: stopping the task and leaving");
                    d.leave_after_exit = true;
                    if d.exit.is_some() {
                        d.life.enter(Phase::Leaving);
                    } else {
                        let (sig, grace) = (d.config.kill_signal, d.config.kill_timeout_ms);
                        d.begin_stop(sig, grace);
                    }
                } else {
                    chld = true;
                }
            }
            if chld {
                d.on_reaped(&reaper::reap_all());
            }
            d.deliver_exec_exits(&mut clients);
        }
        if ready(SLOT_PIDFD) {
            d.on_reaped(&reaper::reap_all());
            // A pidfd stays readable once the process is gone; stop watching.
            if d.ended.is_some() {
                d.pidfd = None;
            }
        }
        for slot in [SLOT_STDOUT, SLOT_STDERR] {
            if ready(slot) {
                let pipe = if slot == SLOT_STDOUT {
                    &mut d.stdout
                } else {
                    &mut d.stderr
                };
                if let Some(p) = pipe {
                    if !p.drain(&mut buf, 64) {
                        *pipe = None;
                    }
                }
            }
        }
        if ready(SLOT_LISTENER) {
            accept_all(&s.listener, &mut clients, my_uid, clock);
        }
        let now = clock.now();
        for (i, c) in clients.iter_mut().enumerate() {
            let Some(ev) = revents.get(FIRST_CLIENT + i) else {
                break;
            };
            if ev.is_empty() {
                continue;
            }
            if ev.intersects(PollFlags::POLLIN | PollFlags::POLLHUP | PollFlags::POLLERR) {
                c.on_readable(&mut buf, d);
                if ev.intersects(PollFlags::POLLERR) {
                    c.dead = true;
                }
            }
            c.flush(now);
        }
    }
}
