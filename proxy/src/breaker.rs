//! A circuit breaker per upstream: once it is known down, stop asking.
//!
//! Without one, every request during an outage waits for a connect or read timeout before
//! the stale copy is served, and a struggling upstream keeps receiving the full load. With one
//! that counts the wrong thing, one broken object (a deleted file behind a redirect, a CDN
//! object that resets every connection, retried five times by pip) takes a whole registry down.
//! So the breaker measures the upstream, not an object:
//!
//! - each client request that reached the upstream counts once (a [`Ticket`], settled once,
//!   however often pingora retried the request);
//! - the last `min_requests` outcomes are kept, each for at most `window`; the breaker opens
//!   when that many are held, at least `failure_rate` of them failed, and the failures were
//!   for at least `min_paths` different paths. Counting the last N (rather than everything in
//!   the window) makes it react as fast after a busy healthy minute as after a quiet one, and
//!   the window keeps a failure from an hour ago from counting;
//! - open, it refuses at once (cached copies are served stale) for `cooldown`; then one real
//!   client request goes through as a probe (half-open): its success closes the breaker, its
//!   failure opens it for another cool-down.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use prometheus::{IntCounter, IntGauge};

use crate::config::BreakerConfig;

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

/// The last outcomes, newest at the back: when it happened (ms), whether it went well, and
/// which path it was for.
#[derive(Default)]
struct Window {
    outcomes: std::collections::VecDeque<(u64, bool, u64)>,
}

impl Window {
    /// Keep `outcome`, and at most `keep` outcomes in all.
    fn record(&mut self, outcome: (u64, bool, u64), keep: usize) {
        if self.outcomes.len() >= keep {
            self.outcomes.pop_front();
        }
        self.outcomes.push_back(outcome);
    }

    /// Outcomes, failures and distinct failing paths among those since `since` (ms).
    fn totals(&self, since: u64) -> (usize, usize, usize) {
        let mut paths: Vec<u64> = Vec::new();
        let (mut n, mut failures) = (0, 0);
        for &(_, ok, path) in self.outcomes.iter().filter(|(at, _, _)| *at >= since) {
            n += 1;
            if !ok {
                failures += 1;
                if !paths.contains(&path) {
                    paths.push(path);
                }
            }
        }
        (n, failures, paths.len())
    }
}

/// One repository's breaker, with its state gauge and trip counter.
pub struct Breaker {
    /// The repository, for logs.
    name: String,
    state_gauge: IntGauge,
    trips: IntCounter,
    failure_rate: f64,
    min_requests: usize,
    min_paths: usize,
    window_ms: u64,
    cooldown: Duration,
    window: Mutex<Window>,
    /// Milliseconds since the epoch until which the breaker is open; 0 when closed.
    open_until: AtomicU64,
    /// When the current probe was let through (ms since the epoch); 0 when none is out. A
    /// probe whose outcome never arrives is superseded after another cool-down.
    probe_since: AtomicU64,
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// A path's identity in the window.
fn path_hash(path: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    path.hash(&mut h);
    h.finish()
}

impl Breaker {
    /// A closed breaker with `config`'s thresholds (validated: a rate in (0, 1], non-zero
    /// minimums and window).
    pub fn new(name: &str, config: &BreakerConfig, state_gauge: IntGauge, trips: IntCounter) -> Self {
        Breaker {
            name: name.to_string(),
            state_gauge,
            trips,
            failure_rate: config.failure_rate,
            min_requests: config.min_requests.max(1) as usize,
            min_paths: config.min_paths.max(1) as usize,
            window_ms: config.window.0.as_millis() as u64,
            cooldown: config.cooldown.0,
            window: Mutex::new(Window::default()),
            open_until: AtomicU64::new(0),
            probe_since: AtomicU64::new(0),
        }
    }

    /// Admit a request for `path` (below the repository): a ticket to settle with its
    /// outcome, or `None` while the breaker is open.
    pub fn ticket(self: &Arc<Self>, path: &str) -> Option<Ticket> {
        match self.admit() {
            Admission::Reject => None,
            admission => Some(Ticket { breaker: self.clone(), probe: admission == Admission::Probe, path: path_hash(path), settled: false }),
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

    /// Record one request's outcome, opening or closing the breaker as it says.
    fn settle(&self, ok: bool, probe: bool, path: u64) {
        let now = now_ms();
        if probe {
            self.probe_since.store(0, Ordering::Release);
            if ok {
                self.window.lock().outcomes.clear();
                if self.open_until.swap(0, Ordering::AcqRel) != 0 {
                    tracing::info!(repository = %self.name, "upstream recovered; circuit breaker closed");
                }
            } else {
                self.open(now, "the probe failed");
            }
        } else {
            let mut window = self.window.lock();
            window.record((now, ok, path), self.min_requests);
            if !ok && self.open_until.load(Ordering::Acquire) == 0 {
                let (requests, failures, paths) = window.totals(now.saturating_sub(self.window_ms));
                if requests >= self.min_requests && failures as f64 >= self.failure_rate * requests as f64 && paths >= self.min_paths {
                    window.outcomes.clear();
                    drop(window);
                    self.open(now, &format!("{failures} of the last {requests} requests failed, for {paths} paths"));
                }
            }
        }
        self.state_gauge.set(self.state());
    }

    fn open(&self, now: u64, why: &str) {
        self.open_until.store(now + self.cooldown.as_millis() as u64, Ordering::Release);
        self.trips.inc();
        tracing::warn!(repository = %self.name, reason = why, cooldown = ?self.cooldown, "upstream failing; circuit breaker open");
    }

    /// When the cool-down of an open breaker ends (`None`: closed).
    pub fn open_until(&self) -> Option<SystemTime> {
        match self.open_until.load(Ordering::Acquire) {
            0 => None,
            ms => Some(UNIX_EPOCH + Duration::from_millis(ms)),
        }
    }

    /// [`CLOSED`], [`OPEN`] or [`HALF_OPEN`], as of now (no request needed to move on).
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

    /// Refresh the state gauge (the admin listener does before every scrape).
    pub fn publish(&self) {
        self.state_gauge.set(self.state());
    }
}

/// An admitted request. Settle it with [`Ticket::succeeded`] or [`Ticket::failed`] once the
/// request's upstream outcome is known. Dropped unsettled (the client went away first), it
/// tells the breaker nothing, except that a probe is no longer out: the next request may probe.
pub struct Ticket {
    breaker: Arc<Breaker>,
    probe: bool,
    path: u64,
    settled: bool,
}

impl Ticket {
    /// The upstream answered (anything but a 5xx or 429).
    pub fn succeeded(mut self) {
        self.settled = true;
        self.breaker.settle(true, self.probe, self.path);
    }

    /// The upstream failed: a connect error, a timeout, a reset, a 5xx or a 429.
    pub fn failed(mut self) {
        self.settled = true;
        self.breaker.settle(false, self.probe, self.path);
    }

    /// Settle by whether the request went well.
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
    use hangar_core::HumanDuration;

    fn breaker(min_requests: u32, min_paths: u32, cooldown: Duration) -> Arc<Breaker> {
        let config = BreakerConfig { min_requests, min_paths, cooldown: HumanDuration(cooldown), ..BreakerConfig::default() };
        Arc::new(Breaker::new("r", &config, IntGauge::new("g", "g").unwrap(), IntCounter::new("c", "c").unwrap()))
    }

    #[test]
    fn one_bad_path_never_opens_it() {
        let b = breaker(20, 5, Duration::from_secs(3600));
        for i in 0..200 {
            b.ticket("bad").unwrap().failed();
            b.ticket(&format!("good/{i}")).unwrap().succeeded();
        }
        assert_eq!((b.state(), b.trips.get()), (CLOSED, 0), "100% of one path failing is that path's problem");
    }

    #[test]
    fn a_failure_rate_across_paths_opens_it() {
        let b = breaker(20, 5, Duration::from_secs(3600));
        for i in 0..9 {
            b.ticket(&format!("ok/{i}")).unwrap().succeeded();
            b.ticket(&format!("down/{i}")).unwrap().failed();
        }
        assert_eq!(b.state(), CLOSED, "18 requests: below the minimum");
        b.ticket("ok/9").unwrap().succeeded();
        b.ticket("down/9").unwrap().failed();
        assert_eq!((b.state(), b.trips.get()), (OPEN, 1), "10 of 20 failed, across 10 paths");
        assert!(b.ticket("x").is_none());
        let below = breaker(20, 5, Duration::from_secs(3600));
        for i in 0..30 {
            below.ticket(&format!("p{}", i % 10)).unwrap().settle(i % 3 != 0);
        }
        assert_eq!(below.state(), CLOSED, "a third failing is under the rate");
    }

    #[test]
    fn the_probe_closes_or_reopens_it_and_an_abandoned_probe_frees_its_place() {
        let b = breaker(1, 1, Duration::ZERO);
        b.ticket("a").unwrap().failed();
        assert_eq!((b.state(), b.trips.get()), (HALF_OPEN, 1), "the cool-down is over at once");
        let probe = b.ticket("a").expect("one probe");
        assert!(b.ticket("a").is_none(), "only one probe at a time");
        drop(probe);
        b.ticket("a").expect("an abandoned probe lets the next request probe").failed();
        assert_eq!(b.trips.get(), 2, "a failed probe re-opens it");
        b.ticket("a").unwrap().succeeded();
        assert_eq!((b.state(), b.state_gauge.get()), (CLOSED, CLOSED));
    }

    #[test]
    fn only_recent_outcomes_count() {
        let mut w = Window::default();
        for at in 0..5 {
            w.record((at * 1000, false, at), 3);
        }
        assert_eq!(w.totals(0), (3, 3, 3), "the last three are kept");
        assert_eq!(w.totals(3500), (1, 1, 1), "only what happened in the window counts");
    }

    #[test]
    fn a_busy_healthy_past_does_not_delay_opening() {
        let b = breaker(4, 2, Duration::from_secs(3600));
        for i in 0..1000 {
            b.ticket(&format!("ok/{i}")).unwrap().succeeded();
        }
        b.ticket("down/0").unwrap().failed();
        assert_eq!(b.state(), CLOSED, "1 of the last 4");
        b.ticket("down/1").unwrap().failed();
        assert_eq!(b.state(), OPEN, "2 of the last 4, for 2 paths: the thousand before do not dilute it");
    }
}
