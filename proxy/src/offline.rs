//! Offline mode: never contact an upstream, serve whatever is cached.
//!
//! For air-gapped sites and incidents (an upstream serving bad content, a network cut). Set per
//! repository or globally in config, and flipped at run time through the admin listener, so an
//! operator can take a region off an upstream without a restart.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};

/// Offline flags: one global, one per repository. Either being on means offline.
#[derive(Default)]
pub struct OfflineSwitch {
    global: AtomicBool,
    repos: HashMap<String, AtomicBool>,
}

impl OfflineSwitch {
    pub fn new(global: bool, repos: impl IntoIterator<Item = (String, bool)>) -> Self {
        OfflineSwitch {
            global: AtomicBool::new(global),
            repos: repos.into_iter().map(|(name, on)| (name, AtomicBool::new(on))).collect(),
        }
    }

    pub fn is_offline(&self, repo: &str) -> bool {
        self.global.load(Ordering::Relaxed) || self.repos.get(repo).is_some_and(|f| f.load(Ordering::Relaxed))
    }

    pub fn set_global(&self, on: bool) {
        self.global.store(on, Ordering::Relaxed);
    }

    /// `false` if there is no such repository.
    pub fn set_repo(&self, repo: &str, on: bool) -> bool {
        match self.repos.get(repo) {
            Some(f) => {
                f.store(on, Ordering::Relaxed);
                true
            }
            None => false,
        }
    }

    /// `{"global":false,"repositories":{"a":true}}`
    pub fn to_json(&self) -> String {
        let mut names: Vec<&String> = self.repos.keys().collect();
        names.sort();
        let repos: Vec<String> = names
            .iter()
            .map(|n| format!("\"{n}\":{}", self.repos[*n].load(Ordering::Relaxed)))
            .collect();
        format!("{{\"global\":{},\"repositories\":{{{}}}}}\n", self.global.load(Ordering::Relaxed), repos.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn global_or_repository_flag_means_offline() {
        let s = OfflineSwitch::new(false, [("a".to_string(), false), ("b".to_string(), true)]);
        assert!(!s.is_offline("a") && s.is_offline("b"));
        s.set_global(true);
        assert!(s.is_offline("a"));
        s.set_global(false);
        assert!(s.set_repo("a", true) && s.is_offline("a"));
        assert!(!s.set_repo("nope", true));
        assert_eq!(s.to_json(), "{\"global\":false,\"repositories\":{\"a\":true,\"b\":true}}\n");
    }
}
