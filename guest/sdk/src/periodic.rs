//! A task done at most once per interval by all the processes that share a
//! cache, remembered in a state file.

use crate::{Error, Timestamp, view};

/// A task (a cleanup, usually) that is due once `interval_ms` has passed since
/// any process last recorded it done. The time lives in the state file
/// `state` as decimal milliseconds. A time recorded more than an interval in
/// the future (a clock that jumped back) makes the task due.
#[derive(Debug, Clone, Copy)]
pub struct Periodic {
    state: &'static str,
    interval_ms: u64,
}

impl Periodic {
    /// A task remembered in the state file `state`, due every `interval_ms`.
    pub const fn new(state: &'static str, interval_ms: u64) -> Periodic {
        Periodic { state, interval_ms }
    }

    /// The same task with another interval (for example, from a setting).
    pub const fn every(self, interval_ms: u64) -> Periodic {
        Periodic { interval_ms, ..self }
    }

    /// When it was last recorded done, if ever (and readable).
    pub fn last_done(&self) -> Option<Timestamp> {
        let bytes = view::read_state(self.state).ok()?;
        std::str::from_utf8(&bytes).ok()?.trim().parse().ok()
    }

    /// Whether the task is due at `now`.
    pub fn due(&self, now: Timestamp) -> bool {
        match self.last_done() {
            None => true,
            Some(last) => now.saturating_sub(last) >= self.interval_ms || last > now.saturating_add(self.interval_ms),
        }
    }

    /// Records the task done at `now`.
    pub fn done(&self, now: Timestamp) -> Result<(), Error> {
        view::write_state(self.state, now.to_string().as_bytes())
    }
}
