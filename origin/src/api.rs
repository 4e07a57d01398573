//! origin's HTTP API.
//!
//! - `PUT /objects/<repository>/<path>`: store an artefact. The body is spooled to disk while
//!   it is hashed; an `X-Hangar-Sha256` the proxy sends must match. The bytes go to
//!   `blobs/sha256/..` (deduplicated), then a manifest is *created* for the path: a path that
//!   already names other bytes is a 409, never an overwrite.
//! - `GET`/`HEAD /objects/<repository>/<path>`: the bytes (with `X-Hangar-Sha256`), or a 307
//!   to a presigned URL for repositories served by redirect; 404 if unknown.
//! - A `PUT` with `X-Hangar-Replaces: <sha256>` is a repair: a proxy found the copy at that
//!   path corrupt (its blob does not hash to its sha256, or its bytes are not what the format
//!   publishes) and sends a verified one. It must be signed ([`HopKind::Replace`], with
//!   `fleet_secret`), and it replaces only the copy it names: a path holding anything else is
//!   a 409, as for any overwrite. A blob claimed corrupt that hashes right is left alone.
//! - A `PUT` larger than `max_upload_bytes` is a 413, before its body is read when its
//!   `Content-Length` says so, else as soon as the body passes the limit; nothing is stored.
//! - Every object request must come from a proxy of the fleet: signed with `fleet_secret`
//!   ([`HopKind::Origin`], or [`HopKind::Replace`] for a repair). Without a proof: 401; with
//!   one that does not verify or is of another kind: 403; an origin without `fleet_secret`
//!   serves and stores nothing (403). Deny by default: anyone who can reach origin could
//!   otherwise publish bytes that proxies then serve as the upstream's.
//! - `GET /healthz`.
//!
//! Storage that cannot be reached is a 503, so a proxy falls back to the upstream and retries
//! its upload later.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::StreamExt;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Full, StreamBody};
use hangar_core::wire::{parse_object_path, replacement_signed_target, HopKey, HopKind, HOP_HEADER, REPLACES_HEADER, SHA256_HEADER};
use hyper::body::{Frame, Incoming};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use crate::config::{OriginConfig, Serve};
use crate::manifest::{blob_key, manifest_key, Manifest};
use crate::store::{BlobStore, Created, StoreError};

pub type Body = UnsyncBoxBody<Bytes, std::io::Error>;

pub struct Origin {
    pub config: OriginConfig,
    pub store: Arc<dyn BlobStore>,
    /// Checks every object request's proof (and repairs'); `None` (no `fleet_secret`) refuses
    /// them all.
    replace_key: Option<HopKey>,
}

/// A `PUT`'s claim to replace a corrupt copy: the sha256 origin holds for the path.
struct Replaces(String);

fn now_secs() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn stored(status: StatusCode, sha256: &str, size: u64) -> Response<Body> {
    full(status, "application/json", format!("{{\"sha256\":\"{sha256}\",\"size\":{size}}}\n"))
}

fn full(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, content_type)
        .body(Full::new(body.into()).map_err(|never: Infallible| match never {}).boxed_unsync())
        .expect("static response parts are valid")
}

fn error(status: StatusCode, message: &str) -> Response<Body> {
    let escaped = message.replace('\\', "\\\\").replace('"', "\\\"");
    full(status, "application/json", format!("{{\"error\":\"{escaped}\",\"status\":{}}}\n", status.as_u16()))
}

fn store_error(e: StoreError) -> Response<Body> {
    tracing::warn!(error = %e, "storage error");
    error(StatusCode::SERVICE_UNAVAILABLE, &e.to_string())
}

impl Origin {
    pub fn new(config: OriginConfig, store: Arc<dyn BlobStore>) -> Self {
        let replace_key = config.fleet_secret.as_ref().map(|s| HopKey::new(s.0.as_bytes()));
        Origin { config, store, replace_key }
    }

    pub async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
        let path = req.uri().path().to_string();
        if path == "/healthz" {
            return Ok(full(StatusCode::OK, "text/plain", "ok\n"));
        }
        let (repo, object) = match parse_object_path(&path) {
            Ok(n) => n,
            Err(why) => return Ok(error(StatusCode::NOT_FOUND, &why.to_string())),
        };
        if let Err(refused) = self.check_proof(&req) {
            return Ok(*refused);
        }
        let resp = match *req.method() {
            Method::GET | Method::HEAD => {
                let head = req.method() == Method::HEAD;
                self.get(&repo, &object, head).await
            }
            Method::PUT => self.put(&repo, &object, req).await,
            _ => error(StatusCode::METHOD_NOT_ALLOWED, "GET, HEAD or PUT"),
        };
        Ok(resp)
    }

    async fn manifest(&self, repo: &str, object: &str) -> Result<Option<Manifest>, StoreError> {
        let Some(raw) = self.store.get_small(&manifest_key(repo, object)).await? else { return Ok(None) };
        serde_json::from_slice(&raw).map(Some).map_err(|e| StoreError::Unavailable(format!("corrupt manifest: {e}")))
    }

    async fn get(&self, repo: &str, object: &str, head: bool) -> Response<Body> {
        let manifest = match self.manifest(repo, object).await {
            Ok(Some(m)) => m,
            Ok(None) => return error(StatusCode::NOT_FOUND, "no such object"),
            Err(e) => return store_error(e),
        };
        let blob = blob_key(&manifest.sha256);
        if self.config.serve(repo) == Serve::Redirect {
            match self.store.presign(&blob, self.config.presign_ttl()).await {
                Ok(Some(url)) => {
                    return Response::builder()
                        .status(StatusCode::TEMPORARY_REDIRECT)
                        .header(http::header::LOCATION, url)
                        .header(SHA256_HEADER, &manifest.sha256)
                        .body(Full::new(Bytes::new()).map_err(|never: Infallible| match never {}).boxed_unsync())
                        .expect("valid redirect");
                }
                Ok(None) => {}
                Err(e) => return store_error(e),
            }
        }
        let mut builder = Response::builder()
            .status(StatusCode::OK)
            .header(http::header::CONTENT_LENGTH, manifest.size)
            .header(http::header::ETAG, format!("\"sha256:{}\"", manifest.sha256))
            .header(SHA256_HEADER, &manifest.sha256)
            .header(http::header::CONTENT_TYPE, manifest.content_type.as_deref().unwrap_or("application/octet-stream"));
        if head {
            builder = builder.header(http::header::CACHE_CONTROL, "public, max-age=31536000, immutable");
            return builder.body(Full::new(Bytes::new()).map_err(|never: Infallible| match never {}).boxed_unsync()).expect("valid head");
        }
        let obj = match self.store.get(&blob).await {
            Ok(Some(o)) => o,
            Ok(None) => return error(StatusCode::INTERNAL_SERVER_ERROR, "manifest names a missing blob"),
            Err(e) => return store_error(e),
        };
        let stream = obj.body.map(|r| r.map(Frame::data).map_err(|e| std::io::Error::other(e.to_string())));
        builder
            .header(http::header::CACHE_CONTROL, "public, max-age=31536000, immutable")
            .body(BodyExt::boxed_unsync(StreamBody::new(stream)))
            .expect("valid response")
    }

    async fn put(&self, repo: &str, object: &str, req: Request<Incoming>) -> Response<Body> {
        let declared = req.headers().get(SHA256_HEADER).and_then(|v| v.to_str().ok()).map(|v| v.trim().to_ascii_lowercase());
        if declared.as_deref().is_some_and(|d| d.len() != 64 || !d.bytes().all(|b| b.is_ascii_hexdigit())) {
            return error(StatusCode::BAD_REQUEST, &format!("{SHA256_HEADER} must be 64 hex digits"));
        }
        let limit = self.config.max_upload_bytes.0;
        let too_large = |size: &str| {
            error(StatusCode::PAYLOAD_TOO_LARGE, &format!("the upload is {size}, over this origin's limit of {limit} bytes (max_upload_bytes in its config)"))
        };
        let declared_length = req.headers().get(http::header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.trim().parse::<u64>().ok());
        if let Some(length) = declared_length.filter(|&l| l > limit) {
            return too_large(&format!("{length} bytes"));
        }
        let replaces = match self.replacement(&req) {
            Ok(r) => r,
            Err(refused) => return *refused,
        };
        let content_type = req.headers().get(http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(str::to_string);
        // Spool while hashing: the digest is known before anything is published.
        let spool = match tempfile::NamedTempFile::new_in(&self.config.spool_dir) {
            Ok(f) => f,
            Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, &format!("spool: {e}")),
        };
        let mut file = tokio::fs::File::from_std(match spool.reopen() {
            Ok(f) => f,
            Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, &format!("spool: {e}")),
        });
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        let mut body = req.into_body();
        while let Some(frame) = body.frame().await {
            let frame = match frame {
                Ok(f) => f,
                Err(e) => return error(StatusCode::BAD_REQUEST, &format!("upload interrupted: {e}")),
            };
            if let Ok(data) = frame.into_data() {
                size += data.len() as u64;
                if size > limit {
                    return too_large(&format!("more than {limit} bytes"));
                }
                hasher.update(&data);
                if let Err(e) = file.write_all(&data).await {
                    return error(StatusCode::INSUFFICIENT_STORAGE, &format!("spool: {e}"));
                }
            }
        }
        if let Err(e) = file.flush().await {
            return error(StatusCode::INSUFFICIENT_STORAGE, &format!("spool: {e}"));
        }
        let sha256 = hex::encode(hasher.finalize());
        if let Some(d) = declared {
            if d != sha256 {
                return error(StatusCode::UNPROCESSABLE_ENTITY, &format!("body has sha256 {sha256}, not the declared {d}"));
            }
        }
        // A path already published answers before any bytes are stored. (The manifest's
        // create below is what guarantees no overwrite; this only avoids orphan blobs.)
        match self.manifest(repo, object).await {
            Ok(Some(existing)) if replaces.as_ref().is_some_and(|r| r.0 == existing.sha256) => {
                let manifest = Manifest { repository: repo.to_string(), path: object.to_string(), sha256, size, content_type };
                return self.repair(existing, manifest, spool.path()).await;
            }
            Ok(Some(existing)) if existing.sha256 == sha256 => return stored(StatusCode::OK, &sha256, size),
            Ok(Some(existing)) => return error(StatusCode::CONFLICT, &format!("{object} is already published with sha256 {}", existing.sha256)),
            Ok(None) => {}
            Err(e) => return store_error(e),
        }
        if let Err(e) = self.store.create_from_file(&blob_key(&sha256), spool.path(), size).await {
            return store_error(e);
        }
        let manifest = Manifest { repository: repo.to_string(), path: object.to_string(), sha256: sha256.clone(), size, content_type };
        let raw = Bytes::from(serde_json::to_vec(&manifest).expect("manifest serialises"));
        match self.store.create_small(&manifest_key(repo, object), raw).await {
            Ok(Created::New) => {
                tracing::info!(repository = repo, path = object, sha256, size, "stored");
                stored(StatusCode::CREATED, &sha256, size)
            }
            Ok(Created::AlreadyExists) => match self.manifest(repo, object).await {
                Ok(Some(existing)) if existing.sha256 == sha256 => stored(StatusCode::OK, &sha256, size),
                Ok(Some(existing)) => error(StatusCode::CONFLICT, &format!("{object} is already published with sha256 {}", existing.sha256)),
                Ok(None) => error(StatusCode::SERVICE_UNAVAILABLE, "manifest vanished"),
                Err(e) => store_error(e),
            },
            Err(e) => store_error(e),
        }
    }

    /// Whether `req` is a proxy's (see the module's docs); a repair's proof is checked by
    /// [`Api::replacement`], which knows what it signs.
    fn check_proof(&self, req: &Request<Incoming>) -> Result<(), Box<Response<Body>>> {
        let Some(key) = self.replace_key.as_ref() else {
            return Err(Box::new(error(StatusCode::FORBIDDEN, "this origin has no fleet_secret, so it serves and stores nothing: give it the proxies' fleet.secret")));
        };
        if req.method() == Method::PUT && req.headers().contains_key(REPLACES_HEADER) {
            return Ok(());
        }
        let Some(proof) = req.headers().get(HOP_HEADER).and_then(|v| v.to_str().ok()) else {
            return Err(Box::new(error(StatusCode::UNAUTHORIZED, &format!("object requests must come from a proxy of the fleet, signed in {HOP_HEADER} with its secret"))));
        };
        let target = req.uri().path_and_query().map_or("/", |p| p.as_str());
        match key.verify(proof, req.method().as_str(), target, now_secs()) {
            Ok(HopKind::Origin) => Ok(()),
            Ok(_) => Err(Box::new(error(StatusCode::FORBIDDEN, &format!("{HOP_HEADER} is not an origin request's proof")))),
            Err(e) => Err(Box::new(error(StatusCode::FORBIDDEN, &format!("{HOP_HEADER} refused: {e}")))),
        }
    }

    /// The replacement a `PUT` claims, if any: a well-formed [`REPLACES_HEADER`] on a request
    /// signed with the fleet's secret. Anything less is refused before a byte is read.
    fn replacement(&self, req: &Request<Incoming>) -> Result<Option<Replaces>, Box<Response<Body>>> {
        let Some(value) = req.headers().get(REPLACES_HEADER) else { return Ok(None) };
        let sha = value.to_str().unwrap_or("").trim().to_ascii_lowercase();
        if sha.len() != 64 || !sha.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(Box::new(error(StatusCode::BAD_REQUEST, &format!("{REPLACES_HEADER} must be 64 hex digits"))));
        }
        let Some(key) = self.replace_key.as_ref() else {
            return Err(Box::new(error(StatusCode::FORBIDDEN, "this origin has no fleet_secret, so it refuses every replacement")));
        };
        // The replacing bytes are named up front (and checked as they arrive), and signed with
        // the copy they replace.
        let Some(sha256) = req.headers().get(SHA256_HEADER).and_then(|v| v.to_str().ok()).map(|v| v.trim().to_ascii_lowercase()) else {
            return Err(Box::new(error(StatusCode::BAD_REQUEST, &format!("a replacement must name its bytes' digest in {SHA256_HEADER}"))));
        };
        let target = req.uri().path_and_query().map_or("/", |p| p.as_str());
        let signed = replacement_signed_target(target, &sha, &sha256);
        let proof = req.headers().get(HOP_HEADER).and_then(|v| v.to_str().ok()).unwrap_or("");
        match key.verify(proof, "PUT", &signed, now_secs()) {
            Ok(HopKind::Replace) => Ok(Some(Replaces(sha))),
            _ => Err(Box::new(error(StatusCode::FORBIDDEN, &format!("a replacement must carry {HOP_HEADER} signed with the fleet's secret")))),
        }
    }

    /// Replace `existing` with `verified` (whose bytes are spooled at `spool`). Same sha256:
    /// the blob is claimed corrupt, so it is hashed again and rewritten only if it is. Another
    /// sha256: the manifest is pointed at the new bytes.
    async fn repair(&self, existing: Manifest, verified: Manifest, spool: &std::path::Path) -> Response<Body> {
        let (sha256, size) = (verified.sha256.clone(), verified.size);
        let blob = blob_key(&sha256);
        if existing.sha256 == sha256 {
            match self.blob_hashes_to(&blob, &sha256).await {
                Ok(true) => return stored(StatusCode::OK, &sha256, size),
                Ok(false) => {}
                Err(e) => return store_error(e),
            }
            if let Err(e) = self.store.overwrite_from_file(&blob, spool, size).await {
                return store_error(e);
            }
            tracing::warn!(repository = %verified.repository, path = %verified.path, sha256, "repaired a blob whose bytes did not match its digest");
            return stored(StatusCode::CREATED, &sha256, size);
        }
        // A blob already under the new digest is used only if it is what its name says.
        match self.store.create_from_file(&blob, spool, size).await {
            Ok(Created::New) => {}
            Ok(Created::AlreadyExists) => match self.blob_hashes_to(&blob, &sha256).await {
                Ok(true) => {}
                Ok(false) => {
                    if let Err(e) = self.store.overwrite_from_file(&blob, spool, size).await {
                        return store_error(e);
                    }
                }
                Err(e) => return store_error(e),
            },
            Err(e) => return store_error(e),
        }
        // (Check-then-write: two proxies replacing one copy at once write the same verified
        // bytes; a replacement racing another replacement of the same copy is not guarded.)
        match self.manifest(&verified.repository, &verified.path).await {
            Ok(Some(now)) if now.sha256 == existing.sha256 => {}
            Ok(Some(now)) if now.sha256 == sha256 => return stored(StatusCode::OK, &sha256, size),
            Ok(_) => return error(StatusCode::CONFLICT, &format!("{} changed while it was being replaced", verified.path)),
            Err(e) => return store_error(e),
        }
        let raw = Bytes::from(serde_json::to_vec(&verified).expect("manifest serialises"));
        if let Err(e) = self.store.overwrite_small(&manifest_key(&verified.repository, &verified.path), raw).await {
            return store_error(e);
        }
        tracing::warn!(repository = %verified.repository, path = %verified.path, was = %existing.sha256, now = %sha256, "replaced a copy a proxy found wrong");
        stored(StatusCode::CREATED, &sha256, size)
    }

    /// Whether the blob at `key` is there and its bytes hash to `sha256`.
    async fn blob_hashes_to(&self, key: &str, sha256: &str) -> Result<bool, StoreError> {
        let Some(obj) = self.store.get(key).await? else { return Ok(false) };
        let mut hasher = Sha256::new();
        let mut body = obj.body;
        while let Some(chunk) = body.next().await {
            hasher.update(&chunk?);
        }
        Ok(hex::encode(hasher.finalize()) == sha256)
    }
}
