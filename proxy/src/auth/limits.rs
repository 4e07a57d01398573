//! Request-rate limits per principal and per client address, and client-address rules per
//! repository (`[auth.limits]`, `[[auth.addresses]]`).
//!
//! Rates are estimated with pingora-limits' [`Rate`] (a count-min sketch per one-second
//! window) over a sliding window: the last window's count weighted by how much of it still
//! overlaps the last second, plus the current window's. Only admitted requests are counted,
//! so a client that keeps asking faster than its budget is served at its budget, not starved;
//! refused ones are told when to come back (`Retry-After`, RFC 9110 §10.2.3).

use std::hash::Hash;
use std::net::IpAddr;
use std::time::Duration;

use ipnet::IpNet;
use pingora_limits::rate::{Rate, PROPORTIONAL_RATE_ESTIMATE_CALC_FN};

use super::Principal;
use crate::config::{parse_network, AddressRule, LimitsConfig};

/// One budget: at most `per_second` admitted requests per key.
struct Budget {
    per_second: f64,
    rate: Rate,
}

impl Budget {
    fn new(per_second: u32) -> Option<Budget> {
        (per_second > 0).then(|| Budget { per_second: f64::from(per_second), rate: Rate::new(Duration::from_secs(1)) })
    }

    /// Whether `key` may have one more request now; counted if so.
    fn take<K: Hash>(&self, key: &K) -> bool {
        if self.rate.rate_with(key, PROPORTIONAL_RATE_ESTIMATE_CALC_FN) >= self.per_second {
            return false;
        }
        self.rate.observe(key, 1);
        true
    }
}

/// A request over a budget: a 429.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limited {
    /// Which budget: `principal 'ci'` or `address 10.0.0.7`.
    pub whose: String,
    /// `reads` or `writes`.
    pub what: &'static str,
    /// The configured budget, per second.
    pub per_second: u32,
    /// Seconds to wait before asking again (`Retry-After`).
    pub retry_after: u64,
}

impl std::fmt::Display for Limited {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "too many requests: {} is over its budget of {} {} per second; retry after {} s", self.whose, self.per_second, self.what, self.retry_after)
    }
}

/// The budgets of `[auth.limits]`.
pub(super) struct Limits {
    principal_reads: Option<Budget>,
    principal_writes: Option<Budget>,
    address_reads: Option<Budget>,
    address_writes: Option<Budget>,
}

impl Limits {
    pub(super) fn new(config: &LimitsConfig) -> Self {
        Limits {
            principal_reads: Budget::new(config.principal_reads_per_second),
            principal_writes: Budget::new(config.principal_writes_per_second),
            address_reads: Budget::new(config.address_reads_per_second),
            address_writes: Budget::new(config.address_writes_per_second),
        }
    }

    /// Take one request (a read, or a write) from `address`'s budget. Asked before the
    /// credentials are looked at, so failed guesses are charged too.
    pub(super) fn take_address(&self, address: Option<IpAddr>, write: bool) -> Result<(), Limited> {
        let budget = if write { &self.address_writes } else { &self.address_reads };
        let (Some(budget), Some(ip)) = (budget, address) else { return Ok(()) };
        let ip = ip.to_canonical();
        if budget.take(&budget_key(ip)) {
            return Ok(());
        }
        Err(Limited { whose: format!("address {ip}"), what: if write { "writes" } else { "reads" }, per_second: budget.per_second as u32, retry_after: 1 })
    }

    /// Take one request of `principal` from its budget (anonymous requests and the bootstrap
    /// credential have none).
    pub(super) fn take_principal(&self, principal: &Principal<'_>, write: bool) -> Result<(), Limited> {
        let budget = if write { &self.principal_writes } else { &self.principal_reads };
        let name = match principal {
            Principal::Token { name, .. } => ("token", *name),
            Principal::Workload { name, .. } => ("workload", name.as_str()),
            Principal::Anonymous | Principal::Bootstrap => return Ok(()),
        };
        let Some(budget) = budget else { return Ok(()) };
        if budget.take(&name) {
            return Ok(());
        }
        Err(Limited { whose: format!("principal '{}'", name.1), what: if write { "writes" } else { "reads" }, per_second: budget.per_second as u32, retry_after: 1 })
    }
}

/// What an address is counted as: itself for IPv4, its /64 for IPv6 (what one host is
/// usually given, so it cannot spread its requests over its addresses).
fn budget_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => IpAddr::V6(std::net::Ipv6Addr::from(u128::from(v6) & !((1u128 << 64) - 1))),
    }
}

struct Rule {
    /// `None`: every repository.
    repositories: Option<Vec<String>>,
    allow: Vec<IpNet>,
    block: Vec<IpNet>,
}

/// The rules of `[[auth.addresses]]`.
pub(super) struct AddressRules {
    rules: Vec<Rule>,
}

impl AddressRules {
    /// From validated rules (entries that do not parse, which validation refuses, are left out).
    pub(super) fn new(config: &[AddressRule]) -> Self {
        let nets = |list: &[String]| list.iter().filter_map(|n| parse_network(n).ok()).collect();
        let rules = config
            .iter()
            .map(|r| Rule { repositories: (!r.repositories.iter().any(|n| n == "*")).then(|| r.repositories.clone()), allow: nets(&r.allow), block: nets(&r.block) })
            .collect();
        AddressRules { rules }
    }

    /// Whether a client at `address` (`None`: not known, as over a Unix socket) may reach
    /// `repository`: every rule naming it must let it through (not blocked, and allowed when
    /// the rule has an allow list).
    pub(super) fn permit(&self, repository: &str, address: Option<IpAddr>) -> bool {
        let address = address.map(|a| a.to_canonical());
        self.rules.iter().filter(|r| r.repositories.as_ref().is_none_or(|names| names.iter().any(|n| n == repository))).all(|r| match address {
            Some(ip) => !r.block.iter().any(|n| n.contains(&ip)) && (r.allow.is_empty() || r.allow.iter().any(|n| n.contains(&ip))),
            None => r.allow.is_empty(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_budget_admits_up_to_its_rate_and_others_keep_theirs() {
        let limits = Limits::new(&LimitsConfig { principal_reads_per_second: 5, address_writes_per_second: 2, ..LimitsConfig::default() });
        let (roles, key) = (Vec::new(), [0u8; 32]);
        let token = |name| Principal::Token { name, roles: &roles, key: &key, expires: None };
        let (ci, other) = (token("ci"), token("other"));
        let ip: IpAddr = "10.0.0.7".parse().unwrap();
        let take = |p: &Principal<'_>, ip: IpAddr, write: bool| limits.take_address(Some(ip), write).and_then(|()| limits.take_principal(p, write));
        let admitted = (0..50).filter(|_| take(&ci, ip, false).is_ok()).count();
        // Within one window (or straddling two, on a slow machine) the estimate stops it at 5 to 10.
        assert!((5..=10).contains(&admitted), "{admitted}");
        let refused = take(&ci, ip, false).unwrap_err();
        assert_eq!((refused.whose.as_str(), refused.what, refused.retry_after), ("principal 'ci'", "reads", 1));
        assert!(take(&other, ip, false).is_ok(), "another principal has its own budget");
        assert!(take(&Principal::Anonymous, ip, false).is_ok(), "anonymous reads: only the address budget, unset here");
        assert!(take(&ci, ip, true).is_ok(), "writes are a budget of their own");
        let writes = (0..20).filter(|_| take(&Principal::Bootstrap, ip, true).is_ok()).count();
        assert!((1..=4).contains(&writes), "the address budget holds for every principal: {writes}");
        let mapped: IpAddr = "::ffff:10.0.0.7".parse().unwrap();
        assert_eq!(take(&Principal::Bootstrap, mapped, true).unwrap_err().whose, "address 10.0.0.7", "an IPv4-mapped address is the IPv4 one");
        assert!(take(&Principal::Bootstrap, "10.0.0.8".parse().unwrap(), true).is_ok(), "another address");
        let v6 = |s: &str| take(&Principal::Bootstrap, s.parse().unwrap(), true).is_ok();
        let spread = (1..20).filter(|i| v6(&format!("2001:db8:0:1::{i:x}"))).count();
        assert!((1..=4).contains(&spread), "one /64 is one budget: {spread}");
    }

    #[test]
    fn address_rules_allow_and_block_per_repository() {
        let rule = |repos: &[&str], allow: &[&str], block: &[&str]| AddressRule {
            repositories: repos.iter().map(|r| r.to_string()).collect(),
            allow: allow.iter().map(|r| r.to_string()).collect(),
            block: block.iter().map(|r| r.to_string()).collect(),
        };
        let rules = AddressRules::new(&[rule(&["internal"], &["10.0.0.0/8", "2001:db8::/32"], &["10.9.0.0/16"]), rule(&["*"], &[], &["192.0.2.66"])]);
        let ip = |s: &str| Some(s.parse::<IpAddr>().unwrap());
        assert!(rules.permit("internal", ip("10.1.2.3")));
        assert!(rules.permit("internal", ip("::ffff:10.1.2.3")), "an IPv4-mapped address is the IPv4 one");
        assert!(rules.permit("internal", ip("2001:db8::1")));
        assert!(!rules.permit("internal", ip("10.9.0.1")), "blocked inside the allowed block");
        assert!(!rules.permit("internal", ip("172.16.0.1")), "not allowed");
        assert!(!rules.permit("internal", None), "an unknown address is not in an allow list");
        assert!(rules.permit("mirror", None), "nor is it in a block list");
        assert!(rules.permit("mirror", ip("172.16.0.1")), "no allow list for other repositories");
        assert!(!rules.permit("mirror", ip("192.0.2.66")), "a single blocked address, everywhere");
    }
}
