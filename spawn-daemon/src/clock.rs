//! Where the daemon reads the time. Every deadline is counted from a reading
//! taken when it starts to count (a client's Hello time from its accept, not
//! from the start of the poll round that accepted it); tests drive the deadline
//! logic with a [`FakeClock`] instead of waiting.

#[cfg(test)]
use std::cell::Cell;
#[cfg(test)]
use std::time::Duration;
use std::time::Instant;

/// A source of monotonic time.
pub trait Clock {
    /// The time now.
    fn now(&self) -> Instant;
}

/// The system's monotonic clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct Monotonic;

impl Clock for Monotonic {
    fn now(&self) -> Instant {
        Instant::now()
    }
}

/// A clock that moves only when told to (for the server's unit tests).
#[cfg(test)]
#[derive(Debug)]
pub struct FakeClock {
    now: Cell<Instant>,
}

#[cfg(test)]
impl FakeClock {
    /// A clock standing at the real now.
    pub fn new() -> FakeClock {
        FakeClock {
            now: Cell::new(Instant::now()),
        }
    }

    /// Move it forward.
    pub fn advance(&self, by: Duration) {
        self.now.set(self.now.get() + by);
    }
}

#[cfg(test)]
impl Default for FakeClock {
    fn default() -> Self {
        FakeClock::new()
    }
}

#[cfg(test)]
impl Clock for FakeClock {
    fn now(&self) -> Instant {
        self.now.get()
    }
}
