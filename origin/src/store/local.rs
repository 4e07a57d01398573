//! The default store: a directory on local disk.

use std::path::{Path, PathBuf};

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;

use super::{BlobStore, Created, Object, StoreError};

pub struct LocalStore {
    root: PathBuf,
}

impl LocalStore {
    pub fn open(root: &Path) -> std::io::Result<Self> {
        std::fs::create_dir_all(root.join("tmp"))?;
        Ok(LocalStore { root: root.to_path_buf() })
    }

    /// Keys are `/`-separated names made by origin itself (hex digests and repository
    /// names), never client strings, so they map onto paths directly.
    fn path(&self, key: &str) -> PathBuf {
        self.root.join(key)
    }

    /// Publish `tmp` at `key` without ever replacing an existing file: `link` fails if the
    /// name exists, and the rename-free publish cannot leave a partial file visible.
    fn publish(&self, tmp: &Path, key: &str) -> Result<Created, StoreError> {
        let dest = self.path(key);
        if let Some(dir) = dest.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let result = match std::fs::hard_link(tmp, &dest) {
            Ok(()) => Ok(Created::New),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(Created::AlreadyExists),
            Err(e) => Err(e.into()),
        };
        let _ = std::fs::remove_file(tmp);
        if let Some(dir) = dest.parent() {
            std::fs::File::open(dir)?.sync_all()?;
        }
        result
    }

    /// Replace `key` with `tmp` by rename: atomic, and durable once the directory is synced.
    fn replace(&self, tmp: tempfile::NamedTempFile, key: &str) -> Result<(), StoreError> {
        tmp.as_file().sync_all()?;
        let dest = self.path(key);
        if let Some(dir) = dest.parent() {
            std::fs::create_dir_all(dir)?;
        }
        tmp.persist(&dest).map_err(|e| StoreError::Io(e.error))?;
        if let Some(dir) = dest.parent() {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    }

    fn temp(&self) -> std::io::Result<tempfile::NamedTempFile> {
        tempfile::NamedTempFile::new_in(self.root.join("tmp"))
    }
}

#[async_trait]
impl BlobStore for LocalStore {
    async fn create_from_file(&self, key: &str, path: &Path, _len: u64) -> Result<Created, StoreError> {
        let tmp = self.temp()?;
        std::fs::copy(path, tmp.path())?;
        tmp.as_file().sync_all()?;
        let (_, tmp_path) = tmp.keep().map_err(|e| StoreError::Io(e.error))?;
        self.publish(&tmp_path, key)
    }

    async fn create_small(&self, key: &str, body: Bytes) -> Result<Created, StoreError> {
        let tmp = self.temp()?;
        std::fs::write(tmp.path(), &body)?;
        tmp.as_file().sync_all()?;
        let (_, tmp_path) = tmp.keep().map_err(|e| StoreError::Io(e.error))?;
        self.publish(&tmp_path, key)
    }

    async fn get(&self, key: &str) -> Result<Option<Object>, StoreError> {
        let file = match tokio::fs::File::open(self.path(key)).await {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let len = file.metadata().await?.len();
        let body = tokio_util::io::ReaderStream::with_capacity(file, 256 * 1024).map(|r| r.map_err(StoreError::from)).boxed();
        Ok(Some(Object { len, body }))
    }

    async fn get_small(&self, key: &str) -> Result<Option<Bytes>, StoreError> {
        match tokio::fs::read(self.path(key)).await {
            Ok(b) => Ok(Some(Bytes::from(b))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    async fn exists(&self, key: &str) -> Result<bool, StoreError> {
        Ok(tokio::fs::try_exists(self.path(key)).await?)
    }

    async fn overwrite_from_file(&self, key: &str, path: &Path, _len: u64) -> Result<(), StoreError> {
        let tmp = self.temp()?;
        std::fs::copy(path, tmp.path())?;
        self.replace(tmp, key)
    }

    async fn overwrite_small(&self, key: &str, body: Bytes) -> Result<(), StoreError> {
        let tmp = self.temp()?;
        std::fs::write(tmp.path(), &body)?;
        self.replace(tmp, key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn creates_never_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let s = LocalStore::open(dir.path()).unwrap();
        assert_eq!(s.create_small("a/b", Bytes::from_static(b"one")).await.unwrap(), Created::New);
        assert_eq!(s.create_small("a/b", Bytes::from_static(b"two")).await.unwrap(), Created::AlreadyExists);
        assert_eq!(s.get_small("a/b").await.unwrap().unwrap(), Bytes::from_static(b"one"));
        assert!(s.get_small("a/c").await.unwrap().is_none());
        assert_eq!(std::fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0, "no temp files left");
    }

    #[tokio::test]
    async fn overwrites_replace_whole() {
        let dir = tempfile::tempdir().unwrap();
        let s = LocalStore::open(dir.path()).unwrap();
        s.create_small("a/b", Bytes::from_static(b"bad")).await.unwrap();
        s.overwrite_small("a/b", Bytes::from_static(b"good")).await.unwrap();
        assert_eq!(s.get_small("a/b").await.unwrap().unwrap(), Bytes::from_static(b"good"));
        let src = dir.path().join("src");
        std::fs::write(&src, b"fresh").unwrap();
        s.overwrite_from_file("c/d", &src, 5).await.unwrap();
        assert_eq!(s.get_small("c/d").await.unwrap().unwrap(), Bytes::from_static(b"fresh"));
        assert_eq!(std::fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0, "no temp files left");
    }
}
