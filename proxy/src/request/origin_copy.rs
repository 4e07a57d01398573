//! Origin's copies are checked like the upstream's bytes: origin is storage, and storage rots,
//! is written by mistake, or holds what someone put there. A copy is judged twice:
//!
//! - on its head: origin names the sha256 of what it holds ([`SHA256_HEADER`], on the answer
//!   or on its redirect). When the artefact's digest is known (from the format, or a
//!   `?sha256=` pin) and they differ, origin's copy is wrong before a byte is read, and the
//!   request goes on to the upstream as if origin had not had it;
//! - on its body: when nothing else says what the bytes must be, origin's own sha256 does, and
//!   the body is hashed as it streams ([`HangarProxy::origin_copy_corrupt`] when it fails).
//!
//! Either way the copy is counted (`hangar_origin_fetches_total{result="corrupt"}`) and
//! distrusted ([`crate::origin::OriginClient::distrust`]) until a verified one replaces it.
//! A digest that is only the client's wish (generic's `?sha256=`) shows nothing wrong with
//! origin's copy: the request goes on to the upstream and origin's copy stays as it is.

use hangar_core::wire::SHA256_HEADER;
use hangar_core::Digest;
use pingora::http::ResponseHeader;
use pingora::prelude::*;

use super::ctx::RequestCtx;
use crate::origin::Distrust;
use super::HangarProxy;
use super::attempt::Step;

impl HangarProxy {
    /// An answer from origin, before the attempt acts on it: note the sha256 origin claims, and
    /// when the artefact's own digest contradicts it, move on (the error is the step's).
    pub(super) fn judge_origin_copy(&self, resp: &ResponseHeader, ctx: &mut RequestCtx) -> Result<()> {
        let claimed = resp.headers.get(SHA256_HEADER).and_then(|v| v.to_str().ok()).and_then(Digest::sha256_hex);
        if let Some(claimed) = claimed {
            ctx.attempt.claim_origin_sha256(claimed.hex());
        }
        if resp.status != http::StatusCode::OK {
            return Ok(());
        }
        let Some(claimed) = ctx.attempt.origin_sha256().and_then(Digest::sha256_hex) else { return Ok(()) };
        match ctx.body.expected.as_ref() {
            // The client's own `?sha256=` vouches for nothing: origin's copy is not the one it
            // asks for, so this request goes on, and origin's copy stays trusted.
            Some(expected @ Digest::Sha256(_)) if *expected != claimed && ctx.body.expected_asked => {
                self.metrics.origin_fetches.with_label_values(&[ctx.repo_name(), "other_digest"]).inc();
                Err(ctx.attempt.step(Step::NextHop))
            }
            Some(expected @ Digest::Sha256(_)) if *expected != claimed => {
                tracing::warn!(repository = %ctx.repo_name(), expected = %expected, origin = %claimed, "origin holds another artefact under this path; fetching it from the upstream");
                self.origin_copy_corrupt(ctx, false);
                Err(ctx.attempt.step(Step::NextHop))
            }
            // A digest of another algorithm is checked as the body streams.
            Some(_) => Ok(()),
            None => {
                ctx.body.expected = Some(claimed);
                Ok(())
            }
        }
    }

    /// Origin's copy is not what it must be: count it, and stop trusting origin with it.
    /// `rotten`: its body failed the check as it streamed (see [`Distrust::rotten`]).
    pub(super) fn origin_copy_corrupt(&self, ctx: &RequestCtx, rotten: bool) {
        let (Some(origin), Some((repo, route))) = (self.origin.as_ref(), ctx.routed()) else { return };
        self.metrics.origin_fetches.with_label_values(&[&repo.name, "corrupt"]).inc();
        if let Some(claimed) = ctx.attempt.origin_sha256() {
            origin.distrust(&repo.name, &route.resolved.key_path, Distrust { sha256: claimed.to_string(), rotten });
        }
    }
}
