//! Files derived from stored artefacts ([`crate::derived`]) on the request path: a request for
//! one is answered before the cache and the upstream are asked (which may publish none),
//! deriving it from the stored artefact if that has not happened yet; a stored artefact that
//! yields one has it derived after its fill (or its first hit, for one stored before). An
//! artefact whose upstream publishes the file (an index announcing a wheel's metadata) is not
//! derived: requests for that file go to the cache and the upstream as any other.

use std::sync::Arc;

use bytes::Bytes;
use hangar_core::wire::DIGEST_HEADER;
use hangar_core::{CacheResult, Digest};
use pingora::cache::key::CacheHashKey;
use pingora::cache::CacheMeta;

use super::{HangarProxy, RequestCtx};
use crate::derived::{Begun, Claim, DerivedFiles};
use crate::format::{DerivedLookup, DerivedOf};
use crate::repository::Repository;
use crate::storage::TieredStorage;

/// Response header kept with a stored document that announces derived files
/// ([`crate::format::Resolved::lists_derived`]): how many of its group's files were held when
/// it was fetched. A hit on a copy that says fewer than are held now is fetched again, so the
/// new ones are announced. Never sent to clients.
pub(super) const DERIVED_COUNT_HEADER: &str = "x-hangar-derived-count";

/// How one attempt to derive ended.
enum Derivation {
    Derived(Digest),
    /// The artefact is not stored (yet, or any more), or not the verified copy: try later.
    NotStored,
    /// It holds nothing to derive, or cannot be read as what it should be.
    Nothing(String),
}

/// Derive the file of the stored artefact at `key_path` of `repo`, verified as `artefact`.
/// Blocking: reads the stored body.
fn derive_stored(storage: &TieredStorage, derived: &DerivedFiles, repo: &Repository, key_path: &str, artefact: &Digest, group: &str) -> Derivation {
    let key = crate::router::cache_key(&repo.name, key_path);
    let combined = hex::encode(key.combined_bin());
    let (header, mut body) = match storage.disk().lookup(&combined) {
        Ok(Some(found)) => found,
        Ok(None) => return Derivation::NotStored,
        // (The disk may recover: a later request tries again.)
        Err(e) => {
            tracing::warn!(repository = %repo.name, artefact = key_path, error = %e, "cannot read a stored artefact to derive from");
            return Derivation::NotStored;
        }
    };
    let Ok(meta) = CacheMeta::deserialize(&header.meta.0, &header.meta.1) else { return Derivation::NotStored };
    let verified = meta.headers().get(DIGEST_HEADER).and_then(|v| v.to_str().ok());
    if verified != Some(artefact.to_string().as_str()) {
        return Derivation::NotStored;
    }
    match repo.format.derive(key_path, &mut body) {
        Ok(Some(file)) => match derived.insert(group, artefact, &file) {
            Ok(d) => Derivation::Derived(d),
            // (Full disk, say: the artefact is fine, a later request tries again.)
            Err(e) => {
                tracing::warn!(repository = %repo.name, artefact = key_path, error = %e, "cannot keep a derived file");
                Derivation::NotStored
            }
        },
        Ok(None) => Derivation::Nothing("holds none".into()),
        Err(e) => Derivation::Nothing(e.to_string()),
    }
}

impl HangarProxy {
    /// The derived file `of` names: held, or derived now from the stored artefact (waiting for
    /// a job already deriving it). `None` sends the request on to the cache and the upstream.
    pub(super) async fn derived_file(&self, repo: &Arc<Repository>, of: &DerivedOf) -> Option<Bytes> {
        if self.derived.derived(&of.artefact).is_none() {
            match self.derived.begin(&of.artefact) {
                Begun::Claimed(claim) => {
                    if self.derive(claim, repo.clone(), of.artefact_key.clone(), of.artefact.clone(), of.group.clone()).await.is_err() {
                        tracing::warn!(repository = %repo.name, artefact = %of.artefact_key, "deriving a file failed");
                    }
                }
                // (Closed when that job ends: the error is the wake-up.)
                Begun::Running(gate) => drop(gate.acquire().await),
                Begun::Settled => {}
            }
            self.derived.derived(&of.artefact)?;
        }
        if !self.derived.held_in(&of.artefact, &of.group) {
            return None;
        }
        let (derived, artefact) = (self.derived.clone(), of.artefact.clone());
        tokio::task::spawn_blocking(move || derived.read(&artefact)).await.ok().flatten()
    }

    /// Derive the file of the stored artefact at `key_path`, as `claim` allows, on the blocking
    /// pool.
    fn derive(&self, mut claim: Claim, repo: Arc<Repository>, key_path: String, artefact: Digest, group: String) -> tokio::task::JoinHandle<()> {
        let (storage, derived, metrics) = (self.storage, self.derived.clone(), self.metrics.clone());
        tokio::task::spawn_blocking(move || {
            let result = derive_stored(storage, &derived, &repo, &key_path, &artefact, &group);
            match result {
                Derivation::Derived(d) => {
                    metrics.derived.with_label_values(&[&repo.name, "derived"]).inc();
                    tracing::info!(repository = %repo.name, artefact = %key_path, derived = %d, "derived a file from a stored artefact");
                }
                Derivation::Nothing(why) => {
                    metrics.derived.with_label_values(&[&repo.name, "none"]).inc();
                    tracing::info!(repository = %repo.name, artefact = %key_path, why, "nothing derived from a stored artefact");
                }
                Derivation::NotStored => claim.retry_later(),
            }
            drop(claim);
        })
    }

    /// How many files of `group` a document of `repo` listing it announces.
    pub(super) fn derived_count(&self, repo: &Repository, group: &str) -> u64 {
        if repo.derive_files { self.derived.count(group) } else { 0 }
    }

    /// After a response: an artefact that yields a derived file and is now stored (fetched
    /// and stored, or a hit on one stored before) has it derived, in the background.
    pub(super) fn derive_after(&self, result: CacheResult, status: u16, ctx: &RequestCtx) {
        let (Some(repo), Some(route)) = (ctx.repo.as_ref(), ctx.route.as_ref()) else { return };
        let (Some(group), Some(artefact)) = (route.resolved.derives.as_ref(), ctx.body.expected.as_ref()) else { return };
        if status != 200 || !matches!(result, CacheResult::Miss | CacheResult::Expired | CacheResult::Hit | CacheResult::Stale | CacheResult::Revalidated) || self.derived.derived(artefact).is_some() {
            return;
        }
        if let Begun::Claimed(claim) = self.derived.begin(artefact) {
            // (Detached: the response is complete; the job ends on its own.)
            drop(self.derive(claim, repo.clone(), route.resolved.key_path.clone(), artefact.clone(), group.clone()));
        }
    }
}
