//! Artefacts in S3 or any S3-compatible endpoint, through aws-sdk-s3.
//!
//! Credentials come from the standard AWS chain (environment, profile, instance role).
//! Objects above `multipart_threshold` are uploaded in parts; small ones in one request with
//! `If-None-Match: *`, so a key, once written, is never replaced.

use std::path::Path;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::presigning::PresigningConfig;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use bytes::Bytes;
use futures_util::StreamExt;

use super::{BlobStore, Created, Object, StoreError};

#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3Options {
    pub bucket: String,
    /// An S3-compatible endpoint (MinIO, moto, Ceph); unset: AWS.
    #[serde(default)]
    pub endpoint: Option<String>,
    #[serde(default = "default_region")]
    pub region: String,
    /// Path-style addressing (`endpoint/bucket/key`), which most S3-compatible servers need.
    #[serde(default)]
    pub path_style: bool,
    /// Prepended to every key.
    #[serde(default)]
    pub prefix: String,
    /// Create the bucket at startup if it does not exist.
    #[serde(default)]
    pub create_bucket: bool,
    #[serde(default = "default_multipart_threshold")]
    pub multipart_threshold: u64,
    /// Deadline of one S3 call, so an unreachable S3 is an error, not a hang.
    #[serde(default = "default_operation_timeout_secs")]
    pub operation_timeout_secs: u64,
    #[serde(default = "default_part_size")]
    pub part_size: u64,
}

fn default_region() -> String {
    "us-east-1".into()
}
fn default_multipart_threshold() -> u64 {
    64 << 20
}
fn default_operation_timeout_secs() -> u64 {
    30
}
fn default_part_size() -> u64 {
    16 << 20
}

pub struct S3Store {
    client: aws_sdk_s3::Client,
    opts: S3Options,
}

fn unavailable<E: std::fmt::Display>(e: E) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

/// The error's S3 code, or its display text for transport failures.
fn describe<E: ProvideErrorMetadata + std::fmt::Debug, R: std::fmt::Debug>(e: &SdkError<E, R>) -> String {
    match e {
        SdkError::ServiceError(s) => format!("{}: {}", s.err().code().unwrap_or("error"), s.err().message().unwrap_or("")),
        other => format!("{other:?}").chars().take(300).collect(),
    }
}

fn is_precondition_failed<E: ProvideErrorMetadata, R>(e: &SdkError<E, R>) -> bool {
    matches!(e, SdkError::ServiceError(s) if matches!(s.err().code(), Some("PreconditionFailed") | Some("ConditionalRequestConflict")))
}

impl S3Store {
    pub async fn connect(opts: S3Options) -> Result<Self, StoreError> {
        let timeouts = aws_config::timeout::TimeoutConfig::builder()
            .connect_timeout(Duration::from_secs(3))
            .operation_timeout(Duration::from_secs(opts.operation_timeout_secs))
            .build();
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new(opts.region.clone()))
            .timeout_config(timeouts);
        if let Some(ep) = &opts.endpoint {
            loader = loader.endpoint_url(ep);
        }
        let shared = loader.load().await;
        let conf = aws_sdk_s3::config::Builder::from(&shared).force_path_style(opts.path_style).build();
        let store = S3Store { client: aws_sdk_s3::Client::from_conf(conf), opts };
        if store.opts.create_bucket {
            // S3 may be down at startup; the first write that finds no bucket creates it.
            if let Err(e) = store.ensure_bucket().await {
                tracing::warn!(error = %e, "cannot create the bucket yet");
            }
        }
        Ok(store)
    }

    async fn ensure_bucket(&self) -> Result<(), StoreError> {
        match self.client.create_bucket().bucket(&self.opts.bucket).send().await {
            Ok(_) => Ok(()),
            Err(e) if matches!(e.code(), Some("BucketAlreadyOwnedByYou") | Some("BucketAlreadyExists")) => Ok(()),
            Err(e) => Err(StoreError::Unavailable(describe(&e))),
        }
    }

    fn key(&self, key: &str) -> String {
        format!("{}{key}", self.opts.prefix)
    }

    async fn multipart(&self, key: &str, path: &Path, len: u64) -> Result<Created, StoreError> {
        let key = self.key(key);
        let upload = self.client.create_multipart_upload().bucket(&self.opts.bucket).key(&key).send().await.map_err(|e| StoreError::Unavailable(describe(&e)))?;
        let id = upload.upload_id().ok_or_else(|| unavailable("no upload id"))?.to_string();
        let result: Result<Vec<CompletedPart>, StoreError> = async {
            let mut parts = Vec::new();
            let mut offset = 0u64;
            let mut number = 1;
            while offset < len {
                let size = self.opts.part_size.min(len - offset);
                let body = ByteStream::read_from().path(path).offset(offset).length(aws_sdk_s3::primitives::Length::Exact(size)).build().await.map_err(unavailable)?;
                let part = self
                    .client
                    .upload_part()
                    .bucket(&self.opts.bucket)
                    .key(&key)
                    .upload_id(&id)
                    .part_number(number)
                    .content_length(size as i64)
                    .body(body)
                    .send()
                    .await
                    .map_err(|e| StoreError::Unavailable(describe(&e)))?;
                parts.push(CompletedPart::builder().part_number(number).set_e_tag(part.e_tag().map(str::to_string)).build());
                offset += size;
                number += 1;
            }
            Ok(parts)
        }
        .await;
        let parts = match result {
            Ok(p) => p,
            Err(e) => {
                let _ = self.client.abort_multipart_upload().bucket(&self.opts.bucket).key(&key).upload_id(&id).send().await;
                return Err(e);
            }
        };
        // Blob keys are content digests: completing over an existing key writes the same bytes.
        self.client
            .complete_multipart_upload()
            .bucket(&self.opts.bucket)
            .key(&key)
            .upload_id(&id)
            .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(parts)).build())
            .send()
            .await
            .map_err(|e| StoreError::Unavailable(describe(&e)))?;
        Ok(Created::New)
    }
}

#[async_trait]
impl BlobStore for S3Store {
    async fn create_from_file(&self, key: &str, path: &Path, len: u64) -> Result<Created, StoreError> {
        if self.exists(key).await? {
            return Ok(Created::AlreadyExists);
        }
        if len > self.opts.multipart_threshold {
            return self.multipart(key, path, len).await;
        }
        self.put(key, Source::File(path), len).await
    }

    async fn create_small(&self, key: &str, body: Bytes) -> Result<Created, StoreError> {
        let len = body.len() as u64;
        self.put(key, Source::Small(body), len).await
    }

    async fn get(&self, key: &str) -> Result<Option<Object>, StoreError> {
        match self.client.get_object().bucket(&self.opts.bucket).key(self.key(key)).send().await {
            Ok(out) => {
                let len = out.content_length().unwrap_or(0).max(0) as u64;
                let body = futures_util::stream::unfold(out.body, |mut b| async move {
                    match b.next().await {
                        Some(Ok(chunk)) => Some((Ok(chunk), b)),
                        Some(Err(e)) => Some((Err(unavailable(e)), b)),
                        None => None,
                    }
                })
                .boxed();
                Ok(Some(Object { len, body }))
            }
            // No bucket yet (it is created by the first write) holds nothing.
            Err(SdkError::ServiceError(e)) if e.err().is_no_such_key() || e.err().code() == Some("NoSuchBucket") => Ok(None),
            Err(e) => Err(StoreError::Unavailable(describe(&e))),
        }
    }

    async fn get_small(&self, key: &str) -> Result<Option<Bytes>, StoreError> {
        let Some(obj) = self.get(key).await? else { return Ok(None) };
        let mut out = Vec::with_capacity(obj.len as usize);
        let mut body = obj.body;
        while let Some(chunk) = body.next().await {
            out.extend_from_slice(&chunk?);
        }
        Ok(Some(Bytes::from(out)))
    }

    async fn exists(&self, key: &str) -> Result<bool, StoreError> {
        match self.client.head_object().bucket(&self.opts.bucket).key(self.key(key)).send().await {
            Ok(_) => Ok(true),
            Err(SdkError::ServiceError(e)) if e.err().is_not_found() => Ok(false),
            Err(e) => Err(StoreError::Unavailable(describe(&e))),
        }
    }

    async fn overwrite_from_file(&self, key: &str, path: &Path, len: u64) -> Result<(), StoreError> {
        // S3 replaces an object whole when the upload completes.
        if len > self.opts.multipart_threshold {
            return self.multipart(key, path, len).await.map(drop);
        }
        self.put_unconditional(key, Source::File(path), len).await
    }

    async fn overwrite_small(&self, key: &str, body: Bytes) -> Result<(), StoreError> {
        let len = body.len() as u64;
        self.put_unconditional(key, Source::Small(body), len).await
    }

    async fn presign(&self, key: &str, ttl: Duration) -> Result<Option<String>, StoreError> {
        let cfg = PresigningConfig::expires_in(ttl).map_err(unavailable)?;
        let req = self.client.get_object().bucket(&self.opts.bucket).key(self.key(key)).presigned(cfg).await.map_err(unavailable)?;
        Ok(Some(req.uri().to_string()))
    }
}

/// Where a single-request upload's bytes come from; each attempt reads them afresh.
enum Source<'a> {
    Small(Bytes),
    File(&'a Path),
}

impl Source<'_> {
    async fn stream(&self) -> Result<ByteStream, StoreError> {
        match self {
            Source::Small(b) => Ok(ByteStream::from(b.clone())),
            Source::File(p) => ByteStream::from_path(p).await.map_err(unavailable),
        }
    }
}

impl S3Store {
    /// Create `key`; if the bucket is gone and we may create it, create it and try once more.
    async fn put(&self, key: &str, source: Source<'_>, len: u64) -> Result<Created, StoreError> {
        match self.put_once(key, &source, len).await {
            Err(PutError::NoSuchBucket) if self.opts.create_bucket => {
                self.ensure_bucket().await?;
                self.put_once(key, &source, len).await.map_err(|e| match e {
                    PutError::NoSuchBucket => StoreError::Unavailable(format!("bucket {} does not exist", self.opts.bucket)),
                    PutError::Store(e) => e,
                })
            }
            Err(PutError::NoSuchBucket) => Err(StoreError::Unavailable(format!("bucket {} does not exist", self.opts.bucket))),
            Err(PutError::Store(e)) => Err(e),
            Ok(c) => Ok(c),
        }
    }

    async fn put_once(&self, key: &str, source: &Source<'_>, len: u64) -> Result<Created, PutError> {
        let body = source.stream().await.map_err(PutError::Store)?;
        match self
            .client
            .put_object()
            .bucket(&self.opts.bucket)
            .key(self.key(key))
            .if_none_match("*")
            .content_length(len as i64)
            .body(body)
            .send()
            .await
        {
            Ok(_) => Ok(Created::New),
            Err(e) if is_precondition_failed(&e) => Ok(Created::AlreadyExists),
            Err(e) if e.code() == Some("NoSuchBucket") => Err(PutError::NoSuchBucket),
            Err(e) => Err(PutError::Store(StoreError::Unavailable(describe(&e)))),
        }
    }
}

impl S3Store {
    /// A plain `PutObject`, replacing whatever `key` held.
    async fn put_unconditional(&self, key: &str, source: Source<'_>, len: u64) -> Result<(), StoreError> {
        let body = source.stream().await?;
        self.client
            .put_object()
            .bucket(&self.opts.bucket)
            .key(self.key(key))
            .content_length(len as i64)
            .body(body)
            .send()
            .await
            .map_err(|e| StoreError::Unavailable(describe(&e)))?;
        Ok(())
    }
}

enum PutError {
    NoSuchBucket,
    Store(StoreError),
}
