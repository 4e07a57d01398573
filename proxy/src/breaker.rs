//! A circuit breaker per upstream: once it is known down, stop asking.
//!
//! Without one, every request during an outage waits for a connect or read timeout before
//! the stale copy is served, and a struggling upstream keeps receiving the full load. After
//! `failures` consecutive failures the breaker opens: requests fail at once (and are served
//! stale where a copy exists) for `cooldown`. Then one request is let through as a probe
//! (half-open); its success closes the breaker, its failure opens it for another cool-down.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// What the breaker says about sending a request now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Closed: send it.
    Allow,
    /// Half-open: send it as the one probe.
    Probe,
    /// Open: do not send it.
    Reject,
}

/// Gauge values for `hangar_upstream_breaker_state`.
pub const CLOSED: i64 = 0;
pub const OPEN: i64 = 1;
pub const HALF_OPEN: i64 = 2;

pub struct Breaker {
    threshold: u32,
    cooldown: Duration,
    failures: AtomicU32,
    /// Milliseconds since the epoch until which the breaker is open; 0 when closed.
    open_until: AtomicU64,
    /// When the current probe was let through (ms since the epoch); 0 when none is out. A
    /// probe whose outcome never arrives is superseded after another cool-down.
    probe_since: AtomicU64,
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

impl Breaker {
    pub fn new(threshold: u32, cooldown: Duration) -> Self {
        Breaker {
            threshold: threshold.max(1),
            cooldown,
            failures: AtomicU32::new(0),
            open_until: AtomicU64::new(0),
            probe_since: AtomicU64::new(0),
        }
    }

    pub fn admit(&self) -> Admission {
        let until = self.open_until.load(Ordering::Acquire);
        if until == 0 {
            return Admission::Allow;
        }
        let now = now_ms();
        if now < until {
            return Admission::Reject;
        }
        // Cool-down over: exactly one request probes.
        let since = self.probe_since.load(Ordering::Acquire);
        let lost = since != 0 && now.saturating_sub(since) > self.cooldown.as_millis() as u64;
        if (since == 0 || lost) && self.probe_since.compare_exchange(since, now.max(1), Ordering::AcqRel, Ordering::Acquire).is_ok() {
            Admission::Probe
        } else {
            Admission::Reject
        }
    }

    /// Returns true if this success closed an open breaker.
    pub fn success(&self) -> bool {
        self.failures.store(0, Ordering::Relaxed);
        self.probe_since.store(0, Ordering::Release);
        self.open_until.swap(0, Ordering::AcqRel) != 0
    }

    /// Returns true if this failure opened the breaker.
    pub fn failure(&self) -> bool {
        let was_probe = self.probe_since.swap(0, Ordering::AcqRel) != 0;
        let n = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if was_probe || n >= self.threshold {
            let prev = self.open_until.swap(now_ms() + self.cooldown.as_millis() as u64, Ordering::AcqRel);
            return prev == 0 || was_probe;
        }
        false
    }

    pub fn state(&self) -> i64 {
        let until = self.open_until.load(Ordering::Acquire);
        if until == 0 {
            CLOSED
        } else if now_ms() < until {
            OPEN
        } else {
            HALF_OPEN
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_threshold_and_probes_once_after_cooldown() {
        let b = Breaker::new(3, Duration::ZERO);
        assert_eq!(b.admit(), Admission::Allow);
        assert!(!b.failure() && !b.failure());
        assert!(b.failure(), "third consecutive failure opens it");
        // Zero cool-down: half-open at once; one probe, everyone else rejected.
        assert_eq!(b.state(), HALF_OPEN);
        assert_eq!(b.admit(), Admission::Probe);
        assert_eq!(b.admit(), Admission::Reject);
        assert!(b.failure(), "a failed probe re-opens it");
        assert_eq!(b.admit(), Admission::Probe);
        assert!(b.success(), "a good probe closes it");
        assert_eq!((b.state(), b.admit()), (CLOSED, Admission::Allow));
    }

    #[test]
    fn stays_open_during_cooldown_and_success_resets_the_count() {
        let b = Breaker::new(2, Duration::from_secs(3600));
        b.failure();
        b.success();
        assert!(!b.failure(), "the count restarted after a success");
        assert!(b.failure());
        assert_eq!((b.state(), b.admit()), (OPEN, Admission::Reject));
    }
}
