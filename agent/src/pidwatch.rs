//! Hearing of a process's end through its pidfd, without polling: one thread
//! blocks in `epoll_wait` on the pidfd of every process watched and wakes the
//! waiter of each one that ends (a pidfd turns readable when its process
//! exits, child or not).
//!
//! A thread rather than the tokio reactor: registering a raw fd with tokio
//! (`AsyncFd::register`) takes an unchecked promise about the fd's lifetime
//! in this tokio, which this crate's `forbid` lint refuses. One thread serves
//! every task of the agent.

use std::collections::HashMap;
use std::future::Future;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Mutex, OnceLock, PoisonError};

use nix::errno::Errno;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use tokio::sync::oneshot;

use crate::ident::ProcId;

struct Watcher {
    epoll: Epoll,
    /// Next key, and what each key's process is awaited by.
    waiting: Mutex<(u64, HashMap<u64, Watched>)>,
}

struct Watched {
    pidfd: OwnedFd,
    ended: oneshot::Sender<()>,
}

/// The watcher thread, started on first use; None when it cannot run (no
/// epoll, no thread), and then [`ended`] never resolves: the connection's end
/// still tells the agent of a dead tend-spawn.
fn watcher() -> Option<&'static Watcher> {
    static W: OnceLock<Option<&'static Watcher>> = OnceLock::new();
    *W.get_or_init(|| {
        let epoll = match Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC) {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(error = %e, "epoll_create failed: no pidfd watch");
                return None;
            }
        };
        let w: &'static Watcher = Box::leak(Box::new(Watcher {
            epoll,
            waiting: Mutex::new((0, HashMap::new())),
        }));
        match std::thread::Builder::new()
            .name("pidfd-watch".into())
            .spawn(move || run(w))
        {
            Ok(_) => Some(w),
            Err(e) => {
                tracing::warn!(error = %e, "cannot start the pidfd watch thread");
                None
            }
        }
    })
}

fn run(w: &'static Watcher) {
    let mut events = [EpollEvent::empty(); 64];
    loop {
        let n = match w.epoll.wait(&mut events, EpollTimeout::NONE) {
            Ok(n) => n,
            Err(Errno::EINTR) => continue,
            Err(e) => {
                tracing::error!(error = %e, "epoll_wait failed: the pidfd watch stops");
                return;
            }
        };
        for ev in &events[..n] {
            let done = w
                .waiting
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .1
                .remove(&ev.data());
            if let Some(d) = done {
                let _ = w.epoll.delete(d.pidfd.as_fd());
                let _ = d.ended.send(());
            }
        }
    }
}

/// Resolves once the very process `p` has ended: at once when it is already
/// gone (or its pid now names another process), never when no watch can run.
pub fn ended(p: ProcId) -> impl Future<Output = ()> + Send + 'static {
    let rx = watch(p);
    async move {
        match rx {
            Watch::Gone => {}
            Watch::Waiting(rx) => {
                // A dropped sender means the watch thread is gone: fall back
                // to never, like no watch at all.
                if rx.await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
            Watch::Unavailable => std::future::pending::<()>().await,
        }
    }
}

enum Watch {
    Gone,
    Waiting(oneshot::Receiver<()>),
    Unavailable,
}

fn watch(p: ProcId) -> Watch {
    let Some(w) = watcher() else {
        return Watch::Unavailable;
    };
    // Opened and checked against the start time: the pidfd pins this very
    // process, whatever happens to its pid later.
    let Some(pidfd) = p.open() else {
        return Watch::Gone;
    };
    let (tx, rx) = oneshot::channel();
    let mut g = w.waiting.lock().unwrap_or_else(PoisonError::into_inner);
    let key = g.0;
    g.0 += 1;
    // Added under the lock: the thread, woken at once for a process that
    // already ended, finds the entry.
    let added = w
        .epoll
        .add(pidfd.as_fd(), EpollEvent::new(EpollFlags::EPOLLIN, key));
    match added {
        Ok(()) => {
            g.1.insert(key, Watched { pidfd, ended: tx });
            Watch::Waiting(rx)
        }
        Err(e) => {
            tracing::warn!(pid = p.pid, error = %e, "cannot watch a pidfd");
            Watch::Unavailable
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Command, Stdio};
    use std::time::Duration;

    fn sleeper() -> std::process::Child {
        Command::new("/bin/sleep")
            .arg("30")
            .stdin(Stdio::null())
            .spawn()
            .unwrap()
    }

    #[tokio::test]
    async fn resolves_when_the_process_ends_and_not_before() {
        let mut child = sleeper();
        let p = ProcId::of(i32::try_from(child.id()).unwrap()).unwrap();
        let end = ended(p);
        tokio::pin!(end);
        assert!(
            tokio::time::timeout(Duration::from_millis(200), &mut end)
                .await
                .is_err(),
            "resolved while the process runs"
        );
        child.kill().unwrap();
        tokio::time::timeout(Duration::from_secs(2), &mut end)
            .await
            .expect("not resolved within 2 s of the kill");
        child.wait().unwrap();
    }

    #[tokio::test]
    async fn resolves_at_once_for_a_gone_or_reused_pid() {
        let mut child = sleeper();
        let pid = i32::try_from(child.id()).unwrap();
        let p = ProcId::of(pid).unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
        tokio::time::timeout(Duration::from_secs(1), ended(p))
            .await
            .expect("a reaped process");
        // A live pid with another start time is not the process watched.
        let other = sleeper();
        let me = ProcId {
            pid: i32::try_from(other.id()).unwrap(),
            start_time: 1,
        };
        tokio::time::timeout(Duration::from_secs(1), ended(me))
            .await
            .expect("a pid that names another process");
        let mut other = other;
        other.kill().unwrap();
        other.wait().unwrap();
    }

    #[tokio::test]
    async fn many_watches_each_hear_their_own_process() {
        let mut kids: Vec<_> = (0..20).map(|_| sleeper()).collect();
        let ends: Vec<_> = kids
            .iter()
            .map(|c| ended(ProcId::of(i32::try_from(c.id()).unwrap()).unwrap()))
            .collect();
        let mut ends: Vec<_> = ends.into_iter().map(Box::pin).collect();
        // Kill the even ones: only their watches resolve.
        for k in kids.iter_mut().step_by(2) {
            k.kill().unwrap();
            k.wait().unwrap();
        }
        for (i, e) in ends.iter_mut().enumerate() {
            let r =
                tokio::time::timeout(Duration::from_millis(if i % 2 == 0 { 2000 } else { 50 }), e)
                    .await;
            assert_eq!(r.is_ok(), i % 2 == 0, "watch {i}");
        }
        for k in kids.iter_mut().skip(1).step_by(2) {
            k.kill().unwrap();
            k.wait().unwrap();
        }
    }
}
