//! A circuit breaker per upstream: once it is known down, stop asking.
//!
//! Without one, every request during an outage waits for a connect or read timeout before
//! the stale copy is served, and a struggling upstream keeps receiving the full load. After
//! `failures` consecutive failures the breaker opens: requests fail at once (and are served
//! stale where a copy exists) for `cooldown`. Then one request is let through as a probe
//! (half-open); its success closes the breaker, its failure opens it for another cool-down.
//!
//! An attempt is admitted as a [`Ticket`], which carries its outcome back: one ticket, settled
//! once, wherever the attempt ends.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus::{IntCounter, IntGauge};

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

/// `hangar_upstream_breaker_state` when requests flow.
pub const CLOSED: i64 = 0;
/// `hangar_upstream_breaker_state` while requests are refused.
pub const OPEN: i64 = 1;
/// `hangar_upstream_breaker_state` once the cool-down is over and one probe may go.
pub const HALF_OPEN: i64 = 2;

/// One repository's breaker, with its state gauge and trip counter.
pub struct Breaker {
    /// The repository, for logs.
    name: String,
    state_gauge: IntGauge,
    trips: IntCounter,
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
    /// A closed breaker that opens after `threshold` consecutive failures, for `cooldown`.
    pub fn new(name: &str, threshold: u32, cooldown: Duration, state_gauge: IntGauge, trips: IntCounter) -> Self {
        Breaker {
            name: name.to_string(),
            state_gauge,
            trips,
            threshold: threshold.max(1),
            cooldown,
            failures: AtomicU32::new(0),
            open_until: AtomicU64::new(0),
            probe_since: AtomicU64::new(0),
        }
    }

    /// Admit an attempt: a ticket to settle with its outcome, or `None` while the breaker is open.
    pub fn ticket(self: &Arc<Self>) -> Option<Ticket> {
        match self.admit() {
            Admission::Reject => None,
            admission => Some(Ticket { breaker: self.clone(), probe: admission == Admission::Probe, settled: false }),
        }
    }

    /// What the breaker says about sending a request now.
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

    /// Record an outcome, logging and counting a change of state.
    fn settle(&self, ok: bool) {
        if ok {
            if self.success() {
                tracing::info!(repository = %self.name, "upstream recovered; circuit breaker closed");
            }
        } else if self.failure() {
            tracing::warn!(repository = %self.name, "upstream failing; circuit breaker open");
            self.trips.inc();
        }
        self.state_gauge.set(self.state());
    }

    /// Returns true if this success closed an open breaker.
    fn success(&self) -> bool {
        self.failures.store(0, Ordering::Relaxed);
        self.probe_since.store(0, Ordering::Release);
        self.open_until.swap(0, Ordering::AcqRel) != 0
    }

    /// Returns true if this failure opened the breaker.
    fn failure(&self) -> bool {
        let was_probe = self.probe_since.swap(0, Ordering::AcqRel) != 0;
        let n = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if was_probe || n >= self.threshold {
            let prev = self.open_until.swap(now_ms() + self.cooldown.as_millis() as u64, Ordering::AcqRel);
            return prev == 0 || was_probe;
        }
        false
    }

    /// [`CLOSED`], [`OPEN`] or [`HALF_OPEN`].
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

/// An admitted attempt. Settle it with [`Ticket::succeeded`] or [`Ticket::failed`] when the
/// upstream has answered or failed. Dropped unsettled (the client went away first), it tells
/// the breaker nothing, except that a probe is no longer out: the next request may probe.
pub struct Ticket {
    breaker: Arc<Breaker>,
    probe: bool,
    settled: bool,
}

impl Ticket {
    /// The upstream answered (anything but a 5xx or 429).
    pub fn succeeded(mut self) {
        self.settled = true;
        self.breaker.settle(true);
    }

    /// The upstream failed: a connect error, a timeout, a 5xx or a 429.
    pub fn failed(mut self) {
        self.settled = true;
        self.breaker.settle(false);
    }

    /// Settle by whether the attempt went well.
    pub fn settle(self, ok: bool) {
        if ok {
            self.succeeded()
        } else {
            self.failed()
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if self.probe && !self.settled {
            self.breaker.probe_since.store(0, Ordering::Release);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker(threshold: u32, cooldown: Duration) -> Arc<Breaker> {
        Arc::new(Breaker::new("r", threshold, cooldown, IntGauge::new("g", "g").unwrap(), IntCounter::new("c", "c").unwrap()))
    }

    #[test]
    fn tickets_settle_once_and_an_abandoned_probe_frees_its_place() {
        let b = breaker(1, Duration::ZERO);
        b.ticket().unwrap().failed();
        assert_eq!((b.state(), b.trips.get()), (HALF_OPEN, 1));
        let probe = b.ticket().expect("the cool-down is over: one probe");
        assert!(b.ticket().is_none(), "only one probe at a time");
        drop(probe);
        let probe = b.ticket().expect("an abandoned probe lets the next request probe");
        probe.succeeded();
        assert_eq!((b.state(), b.state_gauge.get()), (CLOSED, CLOSED));
    }

    #[test]
    fn opens_after_threshold_and_probes_once_after_cooldown() {
        let b = breaker(3, Duration::ZERO);
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
        let b = breaker(2, Duration::from_secs(3600));
        b.failure();
        b.success();
        assert!(!b.failure(), "the count restarted after a success");
        assert!(b.failure());
        assert_eq!((b.state(), b.admit()), (OPEN, Admission::Reject));
    }
}
