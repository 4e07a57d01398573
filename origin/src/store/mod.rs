//! Where origin keeps bytes: one small trait with a local-directory and an S3 implementation.
//!
//! Every write is a *create*: an existing key is never overwritten (S3 `If-None-Match: *`, a
//! hard link locally), which is what makes a published artefact immutable. The one exception
//! is a repair ([`BlobStore::overwrite_from_file`], [`BlobStore::overwrite_small`]): a copy a
//! proxy proved corrupt, replaced by a verified one (see `api`'s replacement rules).

mod local;
mod s3;

pub use local::LocalStore;
pub use s3::{S3Options, S3Store};

use std::path::Path;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::stream::BoxStream;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    #[error("storage I/O: {0}")]
    Io(#[from] std::io::Error),
}

/// The result of a create.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Created {
    New,
    /// The key already held an object; nothing was written.
    AlreadyExists,
}

/// An object's bytes, streamed.
pub struct Object {
    pub len: u64,
    pub body: BoxStream<'static, Result<Bytes, StoreError>>,
}

#[async_trait]
pub trait BlobStore: Send + Sync {
    /// Create `key` from the file at `path` (`len` bytes); never overwrites.
    async fn create_from_file(&self, key: &str, path: &Path, len: u64) -> Result<Created, StoreError>;
    /// Create `key` with a small in-memory body; never overwrites.
    async fn create_small(&self, key: &str, body: Bytes) -> Result<Created, StoreError>;
    async fn get(&self, key: &str) -> Result<Option<Object>, StoreError>;
    /// Read a small object whole.
    async fn get_small(&self, key: &str) -> Result<Option<Bytes>, StoreError>;
    async fn exists(&self, key: &str) -> Result<bool, StoreError>;
    /// Replace `key` (or create it) with the file at `path` (`len` bytes), atomically: a
    /// reader sees the old bytes or the new, never a mix. Only for repairs.
    async fn overwrite_from_file(&self, key: &str, path: &Path, len: u64) -> Result<(), StoreError>;
    /// Replace `key` (or create it) with a small body, atomically. Only for repairs.
    async fn overwrite_small(&self, key: &str, body: Bytes) -> Result<(), StoreError>;
    /// A URL a client can fetch `key` from directly for `ttl`, if the store can issue one.
    async fn presign(&self, _key: &str, _ttl: Duration) -> Result<Option<String>, StoreError> {
        Ok(None)
    }
}
