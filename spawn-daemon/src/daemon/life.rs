//! The daemon's life as one value: the phase it is in, and, in setuid mode,
//! what that phase allows of root's file access.
//!
//! Root steps in setuid mode go through [`Life::privileged`]: while the
//! daemon is [`Phase::Starting`] it borrows root's fsuid/fsgid for the step
//! and goes back to the caller's; once it has dropped to the caller for good
//! (the start report is only written after that), every later one is
//! refused and left to the root cleanup helper.

use std::cell::Cell;
use std::rc::Rc;

use tend_proto::Stage;
use tracing::{info, warn};

use crate::child::StartFailure;
use crate::setuid::{self, Context};

/// Where the daemon is in its life. Each phase follows the one before; none
/// comes back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    /// From the daemon's first instruction until the task runs and, in
    /// setuid mode, the daemon has dropped to the caller: the privileged
    /// part of its life.
    Starting,
    /// The task runs; the daemon serves clients and moves its logs.
    Running,
    /// The task's main process has ended: its pipes drain and what is left
    /// of it is killed, until the exit is recorded.
    Draining,
    /// The exit is recorded (and sent); the daemon lingers for a release.
    Exited,
    /// Released, or SIGTERMed once the exit was recorded: the loop returns.
    Leaving,
}

/// The daemon's phase and privilege mode, shared by what must ask (the
/// cgroup guards, which clean up on drop) through an `Rc`.
#[derive(Debug)]
pub struct Life {
    /// Setuid mode: root's file access is borrowed, never held.
    setuid: bool,
    phase: Cell<Phase>,
}

impl Life {
    /// A daemon starting; in setuid mode when `ctx` is set (the policy
    /// allowed the config and file access is the caller's already).
    pub fn new(ctx: Option<&Context>) -> Rc<Life> {
        Rc::new(Life {
            setuid: ctx.is_some(),
            phase: Cell::new(Phase::Starting),
        })
    }

    /// The phase now.
    pub fn phase(&self) -> Phase {
        self.phase.get()
    }

    /// Move on to `next` (never back).
    pub fn enter(&self, next: Phase) {
        self.phase.set(next.max(self.phase.get()));
    }

    /// Run `f` with root's file access: in setuid mode through fsuid/fsgid 0
    /// and back to the caller's (None once the daemon is past
    /// [`Phase::Starting`]: the cleanup helper does what is left); as is
    /// otherwise.
    pub fn privileged<T>(&self, f: impl FnOnce() -> T) -> Option<T> {
        if !self.setuid {
            return Some(f());
        }
        if self.phase() > Phase::Starting {
            return None;
        }
        match setuid::with_fs_ids(&setuid::Linux, 0, 0, f) {
            Ok(v) => Some(v),
            Err(e) => {
                warn!(error = %e, "cannot regain root's file access");
                None
            }
        }
    }

    /// [`Life::privileged`] for a step that must happen: a lost privilege is
    /// an error.
    pub fn privileged_or<T>(
        &self,
        stage: Stage,
        f: impl FnOnce() -> Result<T, StartFailure>,
    ) -> Result<T, StartFailure> {
        self.privileged(f).unwrap_or_else(|| {
            Err(StartFailure::plain(
                stage,
                "setuid: root's file access is gone".to_string(),
            ))
        })
    }

    /// Setuid mode, once the task runs: become the caller for good, keeping
    /// only [`setuid::KEPT_CAPS`] (the cleanup helper, forked before the
    /// first cgroup, stays root), and leave [`Phase::Starting`].
    pub fn drop_to_caller(&self, ctx: &Context) -> Result<(), StartFailure> {
        setuid::drop_to_caller(&setuid::Linux, &ctx.ids, &setuid::KEPT_CAPS)
            .map_err(|e| StartFailure::plain(Stage::Privileges, e.to_string()))?;
        self.enter(Phase::Running);
        let took = setuid::since_exec().unwrap_or_default();
        info!(
            privileged_us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX),
            uid = ctx.caller.uid,
            kept = "CAP_KILL",
            "dropped to the caller"
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outside_setuid_mode_every_phase_keeps_its_access() {
        let life = Life::new(None);
        assert_eq!(life.phase(), Phase::Starting);
        assert_eq!(life.privileged(|| 1), Some(1));
        life.enter(Phase::Exited);
        assert_eq!(life.privileged(|| 2), Some(2));
    }

    #[test]
    fn phases_only_go_forward() {
        let life = Life::new(None);
        life.enter(Phase::Draining);
        life.enter(Phase::Running);
        assert_eq!(life.phase(), Phase::Draining);
    }
}
