//! Nomad's restart policy: `attempts` restarts within `interval`, each after
//! `delay`; when they run out, `mode = "fail"` ends the task and
//! `mode = "delay"` waits for the interval to pass and goes on.

use std::time::{Duration, Instant, SystemTime};

use crate::jobspec::{RestartMode, RestartPolicy};
use crate::state::RestartWindow;

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

    /// A tracker for `policy` that goes on from `window`, as an earlier
    /// agent left it; `now_wall` and `now` are the same moment on the two
    /// clocks. A window that cannot be read starts afresh.
    pub fn resume(
        policy: RestartPolicy,
        window: Option<&RestartWindow>,
        now_wall: SystemTime,
        now: Instant,
    ) -> RestartTracker {
        let mut t = RestartTracker::new(policy);
        let Some(w) = window else { return t };
        let Some(start) = tend_proto::time::parse_rfc3339(&w.start) else {
            return t;
        };
        let window_start = match now_wall.duration_since(start) {
            Ok(age) => now.checked_sub(age),
            Err(ahead) => now.checked_add(ahead.duration()),
        };
        if let Some(ws) = window_start {
            t.window_start = Some(ws);
            t.count = w.count;
        }
        t
    }

    /// The window to persist (see [`RestartTracker::resume`]); None before
    /// the first failure.
    pub fn window(&self, now_wall: SystemTime, now: Instant) -> Option<RestartWindow> {
        let ws = self.window_start?;
        let start = if ws <= now {
            now_wall.checked_sub(now.duration_since(ws))?
        } else {
            now_wall.checked_add(ws.duration_since(now))?
        };
        Some(RestartWindow {
            start: tend_proto::time::rfc3339(start),
            count: self.count,
        })
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

    #[test]
    fn a_resumed_window_keeps_its_count_and_its_age() {
        let p = policy(2, RestartMode::Fail);
        let (wall, now) = (SystemTime::now(), Instant::now());
        // Two restarts made 10 s ago by an earlier agent: the third failure fails.
        let w = RestartWindow {
            start: tend_proto::time::rfc3339(wall - Duration::from_secs(10)),
            count: 2,
        };
        let mut t = RestartTracker::resume(p, Some(&w), wall, now);
        assert_eq!(t.window(wall, now), Some(w.clone()));
        assert_eq!(t.on_failure(now), Decision::Fail);
        // The same window, once the interval is over: attempts again.
        let later = now + Duration::from_secs(60);
        let mut t = RestartTracker::resume(p, Some(&w), wall, now);
        assert_eq!(
            t.on_failure(later),
            Decision::Restart(Duration::from_secs(1))
        );
        // No window, or one that cannot be read: afresh.
        let mut t = RestartTracker::resume(p, None, wall, now);
        assert_eq!(t.window(wall, now), None);
        assert_eq!(t.on_failure(now), Decision::Restart(Duration::from_secs(1)));
        let bad = RestartWindow {
            start: "yesterday".into(),
            count: 2,
        };
        let mut t = RestartTracker::resume(p, Some(&bad), wall, now);
        assert_eq!(t.on_failure(now), Decision::Restart(Duration::from_secs(1)));
    }

    #[test]
    fn a_window_in_the_future_survives_the_round_trip() {
        // delay mode waits out its interval: the window starts later than now.
        let p = policy(1, RestartMode::Delay);
        let (wall, now) = (SystemTime::now(), Instant::now());
        let mut t = RestartTracker::new(p);
        assert_eq!(t.on_failure(now), Decision::Restart(Duration::from_secs(1)));
        assert_eq!(
            t.on_failure(now),
            Decision::Restart(Duration::from_secs(60))
        );
        let w = t.window(wall, now).expect("a window");
        let ahead = tend_proto::time::parse_rfc3339(&w.start)
            .unwrap()
            .duration_since(wall)
            .unwrap();
        assert!(ahead.as_secs() >= 59, "{ahead:?}");
        let back = RestartTracker::resume(p, Some(&w), wall, now);
        let again = back.window(wall, now).unwrap();
        assert_eq!(again.count, w.count);
        let drift = tend_proto::time::parse_rfc3339(&again.start)
            .unwrap()
            .duration_since(tend_proto::time::parse_rfc3339(&w.start).unwrap())
            .unwrap_or_default();
        assert!(drift < Duration::from_millis(2), "{drift:?}");
    }
}
