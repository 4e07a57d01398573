//! Files the proxy derives from artefacts it stores: a wheel's core metadata (PEP 658) for an
//! index that publishes none. What is derived and how is the format's
//! ([`Format::derive`](crate::format::Format::derive)); this is where the results are kept.
//!
//! ```text
//! <dir>/<group>/<artefact hex>.<derived hex>   one derived file, named by both sha256 digests
//! <dir>/<group>/.<random>.part                  being written; removed at startup
//! ```
//! A file is written under a temporary name and renamed into place, so a crash leaves a
//! `.part` file or nothing, never a partial file under a final name. Its name carries its
//! sha256 and every read checks it: a file damaged on disk is removed, never served.
//!
//! Derived files are a few KiB each and are kept when their artefact is evicted (what they
//! say about an artefact stays true); they do not count against the cache's size. Each group
//! (a project) counts its files, so a stored document listing the group can tell it was
//! written before more were derived.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use hangar_core::Digest;
use parking_lot::{Mutex, RwLock};
use sha2::Digest as _;
use tokio::sync::Semaphore;

use crate::format::DerivedLookup;
use crate::storage::StorageError;

/// Artefacts remembered as not to be derived (they yielded nothing, or their upstream
/// publishes the file itself) before the memory is cleared and they may be tried again. By a
/// 64-bit prefix of their digest: about 16 MiB at the limit; a collision only means one
/// artefact is not derived.
const SKIP_LIMIT: usize = 500_000;

/// One derived file, by its artefact's digest.
#[derive(Debug, Clone)]
struct Entry {
    derived: Digest,
    group: Arc<str>,
}

/// The derived files of one proxy (all repositories: they are named by content).
pub struct DerivedFiles {
    dir: PathBuf,
    fsync: bool,
    entries: RwLock<HashMap<Digest, Entry>>,
    /// Files per group.
    groups: RwLock<HashMap<Arc<str>, u64>>,
    /// Artefacts being derived now, each with a gate closed when its job ends.
    running: Mutex<HashMap<Digest, Arc<Semaphore>>>,
    /// Artefacts not to derive (see [`SKIP_LIMIT`]).
    skip: Mutex<HashSet<u64>>,
}

/// What [`DerivedFiles::begin`] found.
pub enum Begun {
    /// The caller derives it now; dropping the claim ends the job.
    Claimed(Claim),
    /// Another job derives it: the gate closes when that ends (`acquire` then fails).
    Running(Arc<Semaphore>),
    /// Derived already, or not to be derived.
    Settled,
}

/// The right to derive one artefact's file, from [`DerivedFiles::begin`] until dropped (also
/// when the job panics). Unless [`Claim::retry_later`] was called, an artefact whose job
/// derived nothing is not tried again.
pub struct Claim {
    store: Arc<DerivedFiles>,
    artefact: Digest,
    gate: Arc<Semaphore>,
    retry: bool,
}

impl Claim {
    /// The artefact could not be read now (not stored yet, an I/O error): a later request may
    /// try again.
    pub fn retry_later(&mut self) {
        self.retry = true;
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        if !self.retry && !self.store.entries.read().contains_key(&self.artefact) {
            self.store.skip_one(&self.artefact);
        }
        self.store.running.lock().remove(&self.artefact);
        self.gate.close();
    }
}

/// The 64-bit prefix an artefact is remembered by in the skip set.
fn short(artefact: &Digest) -> u64 {
    let bytes: &[u8] = match artefact {
        Digest::Sha1(d) => d,
        Digest::Sha256(d) => d,
        Digest::Sha512(d) => d,
    };
    let mut prefix = [0u8; 8];
    let n = bytes.len().min(8);
    prefix[..n].copy_from_slice(&bytes[..n]);
    u64::from_le_bytes(prefix)
}

impl DerivedFiles {
    /// Open (or create) the store under `dir`: every complete file is known again, partial
    /// writes of a previous process are removed. `fsync` as the cache's.
    pub fn open(dir: &Path, fsync: bool) -> Result<Self, StorageError> {
        fs::create_dir_all(dir).map_err(|e| StorageError::io(dir, e))?;
        let (mut entries, mut groups) = (HashMap::new(), HashMap::new());
        for group_dir in fs::read_dir(dir).map_err(|e| StorageError::io(dir, e))?.flatten() {
            let group: Arc<str> = Arc::from(group_dir.file_name().to_string_lossy().as_ref());
            let Ok(files) = fs::read_dir(group_dir.path()) else { continue };
            for file in files.flatten() {
                let name = file.file_name().to_string_lossy().into_owned();
                if name.ends_with(".part") {
                    let _ = fs::remove_file(file.path());
                    continue;
                }
                let Some((artefact, derived)) = name.split_once('.').and_then(|(a, d)| Some((Digest::sha256_hex(a)?, Digest::sha256_hex(d)?))) else { continue };
                entries.insert(artefact, Entry { derived, group: group.clone() });
                *groups.entry(group.clone()).or_insert(0) += 1;
            }
        }
        Ok(DerivedFiles { dir: dir.to_path_buf(), fsync, entries: RwLock::new(entries), groups: RwLock::new(groups), running: Mutex::default(), skip: Mutex::default() })
    }

    /// Whether the file derived from `artefact` is held in `group` (a derived file is served
    /// only under the name of the project it was derived for: the path's name is what
    /// package grants were checked against).
    pub fn held_in(&self, artefact: &Digest, group: &str) -> bool {
        self.entries.read().get(artefact).is_some_and(|e| &*e.group == group)
    }

    /// How many files of `group` are held.
    pub fn count(&self, group: &str) -> u64 {
        self.groups.read().get(group).copied().unwrap_or(0)
    }

    fn path(&self, group: &str, artefact: &Digest, derived: &Digest) -> PathBuf {
        self.dir.join(group).join(format!("{}.{}", artefact.hex(), derived.hex()))
    }

    /// The file derived from `artefact`, checked against its digest. Blocking file I/O (a few
    /// KiB): call off the event loop. A damaged file is removed and reported as absent.
    pub fn read(&self, artefact: &Digest) -> Option<Bytes> {
        let entry = self.entries.read().get(artefact).cloned()?;
        let path = self.path(&entry.group, artefact, &entry.derived);
        let body = match fs::read(&path) {
            Ok(b) => b,
            Err(e) => {
                if e.kind() != ErrorKind::NotFound {
                    tracing::warn!(path = %path.display(), error = %e, "cannot read a derived file");
                }
                self.forget(artefact);
                return None;
            }
        };
        if Digest::Sha256(sha2::Sha256::digest(&body).into()) != entry.derived {
            tracing::warn!(path = %path.display(), "derived file does not match its digest; removed");
            let _ = fs::remove_file(&path);
            self.forget(artefact);
            return None;
        }
        Some(Bytes::from(body))
    }

    fn forget(&self, artefact: &Digest) {
        if let Some(entry) = self.entries.write().remove(artefact) {
            if let Some(n) = self.groups.write().get_mut(&entry.group) {
                *n = n.saturating_sub(1);
            }
        }
    }

    /// Keep `body` as the file derived from `artefact`, counted in `group` (a name safe as a
    /// directory: the format's normalised project name). Returns its sha256. Blocking I/O.
    pub fn insert(&self, group: &str, artefact: &Digest, body: &[u8]) -> Result<Digest, StorageError> {
        if group.is_empty() || group.starts_with('.') || !group.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)) {
            return Err(StorageError::Corrupt { path: group.to_string(), reason: "not a usable group name".into() });
        }
        let derived = Digest::Sha256(sha2::Sha256::digest(body).into());
        if self.entries.read().get(artefact).is_some_and(|e| e.derived == derived) {
            return Ok(derived);
        }
        let dir = self.dir.join(group);
        fs::create_dir_all(&dir).map_err(|e| StorageError::io(&dir, e))?;
        let mut suffix = [0u8; 8];
        getrandom::getrandom(&mut suffix).map_err(|e| StorageError::io(&dir, std::io::Error::other(e)))?;
        let temp = dir.join(format!(".{}.part", hex::encode(suffix)));
        let written = (|| {
            let mut f = fs::File::create(&temp)?;
            f.write_all(body)?;
            if self.fsync {
                f.sync_all()?;
            }
            fs::rename(&temp, self.path(group, artefact, &derived))?;
            // (The rename itself survives a crash once the directory is synced.)
            if self.fsync {
                fs::File::open(&dir)?.sync_all()?;
            }
            Ok(())
        })();
        if let Err(e) = written {
            let _ = fs::remove_file(&temp);
            return Err(StorageError::io(&temp, e));
        }
        let group: Arc<str> = Arc::from(group);
        let previous = self.entries.write().insert(artefact.clone(), Entry { derived: derived.clone(), group: group.clone() });
        if previous.is_none() {
            *self.groups.write().entry(group).or_insert(0) += 1;
        }
        Ok(derived)
    }

    /// Claim `artefact` for deriving, unless it is derived already, being derived, or not to
    /// be derived.
    pub fn begin(self: &Arc<Self>, artefact: &Digest) -> Begun {
        if self.entries.read().contains_key(artefact) || self.skip.lock().contains(&short(artefact)) {
            return Begun::Settled;
        }
        let mut running = self.running.lock();
        if let Some(gate) = running.get(artefact) {
            return Begun::Running(gate.clone());
        }
        let gate = Arc::new(Semaphore::new(0));
        running.insert(artefact.clone(), gate.clone());
        Begun::Claimed(Claim { store: self.clone(), artefact: artefact.clone(), gate, retry: false })
    }

    /// Do not derive files from these artefacts: their upstream publishes the files itself,
    /// which are served as they are.
    pub fn published_upstream(&self, artefacts: &[Digest]) {
        artefacts.iter().for_each(|a| self.skip_one(a));
    }

    fn skip_one(&self, artefact: &Digest) {
        let mut skip = self.skip.lock();
        if skip.len() >= SKIP_LIMIT {
            skip.clear();
        }
        skip.insert(short(artefact));
    }
}

impl DerivedLookup for DerivedFiles {
    fn derived(&self, artefact: &Digest) -> Option<Digest> {
        self.entries.read().get(artefact).map(|e| e.derived.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(n: u8) -> Digest {
        Digest::Sha256([n; 32])
    }

    #[test]
    fn files_are_kept_counted_per_group_and_known_again_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let store = DerivedFiles::open(dir.path(), false).unwrap();
        assert_eq!((store.count("six"), store.derived(&digest(1))), (0, None));
        let d = store.insert("six", &digest(1), b"Name: six\n").unwrap();
        assert_eq!(d, Digest::Sha256(sha2::Sha256::digest(b"Name: six\n").into()));
        store.insert("six", &digest(2), b"Name: six\nVersion: 2\n").unwrap();
        store.insert("six", &digest(1), b"Name: six\n").unwrap();
        assert_eq!((store.count("six"), store.count("idna")), (2, 0), "the same file twice counts once");
        assert_eq!(store.read(&digest(1)).as_deref(), Some(&b"Name: six\n"[..]));
        // A write the previous process did not finish.
        fs::write(dir.path().join("six").join(".abc.part"), b"Name").unwrap();
        drop(store);
        let store = DerivedFiles::open(dir.path(), false).unwrap();
        assert_eq!((store.count("six"), store.derived(&digest(1))), (2, Some(d)));
        assert!(!dir.path().join("six").join(".abc.part").exists(), "partial writes are removed");
    }

    #[test]
    fn a_damaged_file_is_removed_not_served() {
        let dir = tempfile::tempdir().unwrap();
        let store = DerivedFiles::open(dir.path(), false).unwrap();
        let d = store.insert("six", &digest(1), b"Name: six\n").unwrap();
        fs::write(store.path("six", &digest(1), &d), b"Name: evil\n").unwrap();
        assert_eq!(store.read(&digest(1)), None);
        assert_eq!((store.count("six"), store.derived(&digest(1))), (0, None), "no longer announced");
        assert!(!store.path("six", &digest(1), &d).exists());
    }

    #[tokio::test]
    async fn an_artefact_is_derived_by_one_job_at_a_time_others_wait_and_it_is_not_retried_after_yielding_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(DerivedFiles::open(dir.path(), false).unwrap());
        let Begun::Claimed(mut claim) = store.begin(&digest(1)) else { panic!("first claim") };
        let Begun::Running(gate) = store.begin(&digest(1)) else { panic!("in progress elsewhere") };
        let waiter = tokio::spawn(async move { gate.acquire().await.is_err() });
        claim.retry_later();
        drop(claim);
        assert!(waiter.await.unwrap(), "the waiter is woken when the job ends");
        let Begun::Claimed(claim) = store.begin(&digest(1)) else { panic!("not stored yet: tried again later") };
        drop(claim);
        assert!(matches!(store.begin(&digest(1)), Begun::Settled), "yielded nothing: not tried again");
        let Begun::Claimed(claim) = store.begin(&digest(2)) else { panic!("claim") };
        store.insert("six", &digest(2), b"x").unwrap();
        drop(claim);
        assert!(matches!(store.begin(&digest(2)), Begun::Settled), "derived already");
        assert_eq!(store.read(&digest(2)).as_deref(), Some(&b"x"[..]));
        store.published_upstream(&[digest(3)]);
        assert!(matches!(store.begin(&digest(3)), Begun::Settled), "the upstream publishes it");
        assert!(store.insert("../etc", &digest(4), b"x").is_err() && store.insert(".hidden", &digest(4), b"x").is_err());
    }
}
