//! Nomad's restart policy: `attempts` restarts within `interval`, each after
//! `delay`; when they run out, `mode = "fail"` ends the task and
//! `mode = "delay"` waits for the interval to pass and goes on.

use std::time::{Duration, Instant};

use crate::jobspec::{RestartMode, RestartPolicy};

/// What to do after a failed run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Start again after this wait.
    Restart(Duration),
    /// Give up: the task has failed.
    Fail,
}

/// Counts restarts within the policy's interval.
#[derive(Debug, Clone)]
pub struct RestartTracker {
    policy: RestartPolicy,
    window_start: Option<Instant>,
    count: u32,
}

impl RestartTracker {
    /// A tracker for `policy`.
    pub fn new(policy: RestartPolicy) -> RestartTracker {
        RestartTracker {
            policy,
            window_start: None,
            count: 0,
        }
    }

    /// The decision after a failure at `now`.
    pub fn on_failure(&mut self, now: Instant) -> Decision {
        let start = *self.window_start.get_or_insert(now);
        if now.duration_since(start) >= self.policy.interval {
            self.window_start = Some(now);
            self.count = 0;
        }
        if self.count < self.policy.attempts {
            self.count += 1;
            return Decision::Restart(self.policy.delay);
        }
        match self.policy.mode {
            RestartMode::Fail => Decision::Fail,
            RestartMode::Delay => {
                let window_end = self.window_start.unwrap_or(now) + self.policy.interval;
                let wait = window_end
                    .saturating_duration_since(now)
                    .max(self.policy.delay);
                self.window_start = Some(now + wait);
                self.count = 0;
                Decision::Restart(wait)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(attempts: u32, mode: RestartMode) -> RestartPolicy {
        RestartPolicy {
            attempts,
            interval: Duration::from_secs(60),
            delay: Duration::from_secs(1),
            mode,
        }
    }

    #[test]
    fn fail_mode_gives_up_after_the_attempts() {
        let mut t = RestartTracker::new(policy(2, RestartMode::Fail));
        let now = Instant::now();
        assert_eq!(t.on_failure(now), Decision::Restart(Duration::from_secs(1)));
        assert_eq!(
            t.on_failure(now + Duration::from_secs(2)),
            Decision::Restart(Duration::from_secs(1))
        );
        assert_eq!(t.on_failure(now + Duration::from_secs(4)), Decision::Fail);
    }

    #[test]
    fn the_count_resets_after_the_interval() {
        let mut t = RestartTracker::new(policy(1, RestartMode::Fail));
        let now = Instant::now();
        assert!(matches!(t.on_failure(now), Decision::Restart(_)));
        assert!(matches!(
            t.on_failure(now + Duration::from_secs(61)),
            Decision::Restart(_)
        ));
        assert_eq!(t.on_failure(now + Duration::from_secs(62)), Decision::Fail);
    }

    #[test]
    fn delay_mode_waits_out_the_interval() {
        let mut t = RestartTracker::new(policy(1, RestartMode::Delay));
        let now = Instant::now();
        assert_eq!(t.on_failure(now), Decision::Restart(Duration::from_secs(1)));
        assert_eq!(
            t.on_failure(now + Duration::from_secs(10)),
            Decision::Restart(Duration::from_secs(50))
        );
    }

    #[test]
    fn zero_attempts_fail_at_once() {
        let mut t = RestartTracker::new(policy(0, RestartMode::Fail));
        assert_eq!(t.on_failure(Instant::now()), Decision::Fail);
    }
}
