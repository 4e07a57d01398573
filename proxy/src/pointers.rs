//! What mutable names (registry tags) last pointed to.
//!
//! A tag is resolved to a digest by asking the upstream (see `request/pointer.rs`); the answer
//! is kept here so that, for `metadata_ttl`, the upstream is not asked again, and so that when
//! the upstream fails the tag still leads to the manifest it last named.
//!
//! The index is bounded: at capacity, an arbitrary entry makes room (a forgotten tag costs
//! one HEAD, or, during an outage, that tag). With a journal, every change of a pointer is
//! appended to a file in the cache directory and read back at start, so a proxy restarted
//! while its upstream is down still knows its tags. Entries read back are never fresh: they
//! stand in only when the upstream cannot answer. A torn last line (a crash mid-append) is
//! skipped; the file is rewritten compactly when it has grown well past its entries.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use hangar_core::Digest;

struct Entry {
    digest: Digest,
    /// When the upstream said so; `None` for entries read back from the journal.
    checked: Option<Instant>,
}

pub struct PointerIndex {
    capacity: usize,
    entries: Mutex<HashMap<String, Entry>>,
    journal: Option<Mutex<Journal>>,
}

struct Journal {
    path: PathBuf,
    file: std::fs::File,
    /// Lines in the file, to know when rewriting it compactly is worth it.
    lines: usize,
}

/// Rewrite `path` with one line per entry (through a temporary file and a rename, so a crash
/// leaves the old journal or the new one).
fn write_compact<'a>(path: &Path, entries: impl Iterator<Item = (&'a String, &'a Digest)>) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut out = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
    for (key, digest) in entries {
        writeln!(out, "{digest} {key}")?;
    }
    out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// Compact when the file holds this many lines more than twice its entries.
const COMPACT_SLACK: usize = 10_000;

impl PointerIndex {
    pub fn new(capacity: usize) -> Self {
        PointerIndex { capacity: capacity.max(1), entries: Mutex::new(HashMap::new()), journal: None }
    }

    /// An index kept in `path` too: read back now, appended to on every change.
    pub fn with_journal(capacity: usize, path: &Path) -> std::io::Result<Self> {
        let mut entries = HashMap::new();
        let mut lines = 0usize;
        let mut complete_len = None;
        if let Ok(text) = std::fs::read_to_string(path) {
            // Only complete lines: a crash may have left the last one torn.
            let complete = text.rfind('\n').map_or("", |end| &text[..end]);
            if !text.is_empty() && !text.ends_with('\n') {
                complete_len = Some(if complete.is_empty() { 0 } else { complete.len() as u64 + 1 });
            }
            // Later lines override earlier ones; `- <key>` records a removal.
            for line in complete.lines() {
                lines += 1;
                if let Some(key) = line.strip_prefix("- ") {
                    entries.remove(key);
                } else if let Some((digest, key)) = line.split_once(' ').and_then(|(d, k)| Some((Digest::parse(d)?, k))) {
                    entries.insert(key.to_string(), Entry { digest, checked: None });
                }
            }
        }
        while entries.len() > capacity {
            let Some(victim) = entries.keys().next().cloned() else { break };
            entries.remove(&victim);
        }
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        if lines > 2 * entries.len() + COMPACT_SLACK {
            write_compact(path, entries.iter().map(|(k, e)| (k, &e.digest)))?;
            lines = entries.len();
            complete_len = None;
        }
        let file = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
        if let Some(len) = complete_len.filter(|_| path.exists()) {
            // Cut the torn line off, so the next append starts a line of its own.
            file.set_len(len)?;
        }
        let journal = Journal { path: path.to_path_buf(), file, lines };
        Ok(PointerIndex { capacity: capacity.max(1), entries: Mutex::new(entries), journal: Some(Mutex::new(journal)) })
    }

    /// Where `repository`'s journal lives below the cache directory.
    pub fn journal_path(cache_dir: &Path, repository: &str) -> PathBuf {
        cache_dir.join("pointers").join(format!("{repository}.log"))
    }

    /// The digest `key` last pointed to, and how long ago the upstream said so (`None`: not
    /// since this process started).
    pub fn get(&self, key: &str) -> Option<(Digest, Option<Duration>)> {
        self.entries.lock().get(key).map(|e| (e.digest.clone(), e.checked.map(|at| at.elapsed())))
    }

    /// Keys must not contain line breaks (request paths and header values cannot).
    pub fn insert(&self, key: String, digest: Digest) {
        let changed = {
            let mut entries = self.entries.lock();
            if entries.len() >= self.capacity && !entries.contains_key(&key) {
                if let Some(victim) = entries.keys().next().cloned() {
                    entries.remove(&victim);
                }
            }
            let changed = entries.get(&key).is_none_or(|e| e.digest != digest);
            entries.insert(key.clone(), Entry { digest: digest.clone(), checked: Some(Instant::now()) });
            changed
        };
        if changed {
            self.record(format!("{digest} {key}\n"));
        }
    }

    /// Forget `key` (the upstream says it no longer exists), in the journal too.
    pub fn remove(&self, key: &str) {
        if self.entries.lock().remove(key).is_some() {
            self.record(format!("- {key}\n"));
        }
    }

    /// Append one line to the journal, compacting it when it has grown well past the entries.
    fn record(&self, line: String) {
        let Some(journal) = self.journal.as_ref() else { return };
        if line.matches('\n').count() != 1 {
            return;
        }
        let mut journal = journal.lock();
        // One write per line, so appends from several threads never interleave.
        if let Err(e) = journal.file.write_all(line.as_bytes()) {
            tracing::warn!(error = %e, "cannot record a tag in the pointer journal");
            return;
        }
        journal.lines += 1;
        // A snapshot, so lookups do not wait for the rewrite. (The entries lock is never held
        // while waiting for the journal's, so taking it here cannot deadlock.)
        let snapshot: Vec<(String, Digest)> = {
            let entries = self.entries.lock();
            if journal.lines <= 2 * entries.len() + COMPACT_SLACK {
                return;
            }
            entries.iter().map(|(k, e)| (k.clone(), e.digest.clone())).collect()
        };
        let reopened = write_compact(&journal.path, snapshot.iter().map(|(k, d)| (k, d)))
            .and_then(|_| std::fs::OpenOptions::new().append(true).open(&journal.path));
        match reopened {
            Ok(file) => {
                journal.file = file;
                journal.lines = snapshot.len();
            }
            Err(e) => tracing::warn!(error = %e, "cannot compact the pointer journal"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(b: u8) -> Digest {
        Digest::Sha256([b; 32])
    }

    #[test]
    fn remembers_within_capacity() {
        let index = PointerIndex::new(2);
        index.insert("a".into(), d(1));
        index.insert("b".into(), d(2));
        index.insert("a".into(), d(3));
        assert_eq!(index.get("a").map(|(x, _)| x), Some(d(3)));
        index.insert("c".into(), d(4));
        assert_eq!(["a", "b", "c"].iter().filter(|k| index.get(k).is_some()).count(), 2);
        assert!(index.get("c").is_some());
        index.remove("c");
        assert!(index.get("c").is_none());
    }

    #[test]
    fn the_journal_is_compacted_as_it_grows() {
        let dir = tempfile::tempdir().unwrap();
        let path = PointerIndex::journal_path(dir.path(), "hub");
        let index = PointerIndex::with_journal(10, &path).unwrap();
        for i in 0..(COMPACT_SLACK + 10) {
            index.insert("a/manifests/latest\t".into(), d((i % 2) as u8));
        }
        let lines = std::fs::read_to_string(&path).unwrap().lines().count();
        assert!(lines < 20, "{lines} lines for one tag");
        drop(index);
        let index = PointerIndex::with_journal(10, &path).unwrap();
        assert_eq!(index.get("a/manifests/latest\t").map(|(x, _)| x), Some(d(((COMPACT_SLACK + 9) % 2) as u8)));
    }

    #[test]
    fn the_journal_survives_a_restart_and_a_torn_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = PointerIndex::journal_path(dir.path(), "hub");
        {
            let index = PointerIndex::with_journal(10, &path).unwrap();
            index.insert("a/manifests/v1\taccept".into(), d(1));
            index.insert("a/manifests/v1\taccept".into(), d(2));
            index.insert("b/manifests/v1\t".into(), d(3));
            assert!(index.get("b/manifests/v1\t").unwrap().1.is_some(), "fresh while this process asked");
        }
        std::fs::OpenOptions::new().append(true).open(&path).unwrap().write_all(b"sha256:00 torn").unwrap();
        {
            let index = PointerIndex::with_journal(10, &path).unwrap();
            assert_eq!(index.get("a/manifests/v1\taccept"), Some((d(2), None)), "the last answer, never fresh");
            assert_eq!(index.get("b/manifests/v1\t").map(|(x, _)| x), Some(d(3)));
            index.insert("c/manifests/v1\t".into(), d(4));
            index.insert("gone/manifests/v1\t".into(), d(5));
            index.remove("gone/manifests/v1\t");
        }
        let index = PointerIndex::with_journal(10, &path).unwrap();
        assert_eq!(index.get("c/manifests/v1\t").map(|(x, _)| x), Some(d(4)), "written after the torn line was cut");
        assert!(index.get("gone/manifests/v1\t").is_none(), "a removal is remembered too");
    }
}
