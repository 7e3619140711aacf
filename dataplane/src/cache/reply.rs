//! Cached replies (issue 15 §1): the bytes a cached GET sends, stored next to the document
//! they were rendered from, so a hit sends stored bytes without any JSON work.
//!
//! A cached key (built by [`super::key`], as before) is a Redis HASH:
//!
//! | field | value |
//! |---|---|
//! | `doc` | the document as loaded from PostgreSQL (JSON text, `null` for "no such row") |
//! | `v` | a random version, new with every load of `doc` |
//! | `r:<variant>` | one rendered reply: `<etag>\n<body>`, or `-` for "not found" for this variant |
//!
//! A variant is what differs between callers of the same document: the visibility (a
//! student gets questions without answers, never an inactive assessment, only their own
//! progress) and the page parameters of paged replies. Every invalidation (a write's DEL,
//! the pending set, the outbox replay, a generation drop) deletes the one key and with it
//! every variant. A variant rendered from a document is written only if that document is
//! still the stored one (a script compares `v`), so an invalidation racing with a render
//! never leaves a stale variant behind; the document itself is stored under the same
//! single-flight and epoch rules as every cached value ([`Cache::get_or_load`]).

use std::sync::LazyLock;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use tracing::Instrument;

use super::{Cache, CacheError, READS, lock};

/// At most this many fields per cached key (document, version and variants): page
/// parameters come from callers, so the number of variants is bounded here. A variant
/// beyond it is rendered from the document on every request instead of being stored.
const MAX_FIELDS: usize = 64;

/// One reply as sent: its strong ETag and JSON body, or "not found".
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Stored {
    Found { etag: Bytes, body: Bytes },
    NotFound,
}

impl Stored {
    /// A found reply with the ETag of its body (SHA-256, first 16 bytes, hex, quoted:
    /// the format every ETag of the API has).
    pub fn found(body: impl Into<Bytes>) -> Stored {
        use sha2::Digest;
        let body = body.into();
        let etag = format!("\"{}\"", hex::encode(&sha2::Sha256::digest(&body)[..16]));
        Stored::Found {
            etag: Bytes::from(etag),
            body,
        }
    }

    fn encode(&self) -> Vec<u8> {
        match self {
            Stored::NotFound => b"-".to_vec(),
            Stored::Found { etag, body } => {
                let mut v = Vec::with_capacity(etag.len() + 1 + body.len());
                v.extend_from_slice(etag);
                v.push(b'\n');
                v.extend_from_slice(body);
                v
            }
        }
    }

    /// Reads a stored variant without copying its body. `None` for a value this version
    /// did not write (it is then rendered again).
    fn decode(b: Bytes) -> Option<Stored> {
        if &b[..] == b"-" {
            return Some(Stored::NotFound);
        }
        let nl = b.iter().position(|c| *c == b'\n')?;
        Some(Stored::Found {
            etag: b.slice(..nl),
            body: b.slice(nl + 1..),
        })
    }
}

/// Stores a freshly loaded document and the variant rendered from it, replacing whatever
/// the key held (an older format, or nothing), with the TTL.
static STORE_DOC: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        "redis.call('DEL', KEYS[1]) \
         redis.call('HSET', KEYS[1], 'doc', ARGV[1], 'v', ARGV[2], ARGV[4], ARGV[5]) \
         redis.call('PEXPIRE', KEYS[1], ARGV[3]) return 1",
    )
});

/// Adds a variant only while the document it was rendered from (version `ARGV[1]`) is
/// still the stored one, and only below the field bound.
static STORE_VARIANT: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        "if redis.call('HGET', KEYS[1], 'v') == ARGV[1] \
            and redis.call('HLEN', KEYS[1]) < tonumber(ARGV[4]) then \
           redis.call('HSET', KEYS[1], ARGV[2], ARGV[3]) return 1 end return 0",
    )
});

/// A key holding a value of another type (a plain string written by an older version):
/// an answer from a working Redis, read as "nothing cached".
fn wrong_type<T>(r: redis::RedisResult<Option<T>>) -> redis::RedisResult<Option<T>> {
    match r {
        Err(e) if e.code() == Some("WRONGTYPE") => Ok(None),
        other => other,
    }
}

impl Cache {
    /// The reply `variant` of the document under the key `key()` builds: the stored
    /// bytes on a hit; else rendered (`render`) from the stored document (read back with
    /// `decode`), or from `load()`'s (stored as `encode` writes it, for `ttl`; single
    /// flight per key). `kind` labels metrics.
    ///
    /// With the breaker open, cache reads off or the tenant not readable this is
    /// `render(load())`: nothing encoded, decoded or stored.
    #[allow(clippy::too_many_arguments)]
    pub async fn reply_or_load<D, E, K, F, Fut>(
        &self,
        kind: &str,
        key: K,
        variant: &str,
        ttl: Duration,
        load: F,
        render: impl Fn(&D) -> Result<Stored, E>,
        encode: impl FnOnce(&D) -> String,
        decode: impl Fn(&str) -> Result<D, E>,
    ) -> Result<Stored, E>
    where
        K: FnOnce() -> String,
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<D, E>>,
    {
        if !READS.load(Ordering::Relaxed) {
            return render(&load().await?);
        }
        if self.breaker_open() || !self.settle().await {
            self.metrics.cache_event(kind, "bypass");
            return render(&load().await?);
        }
        let key = &key();
        let field = format!("r:{variant}");
        let Some(epoch) = self.readable(key).await else {
            self.metrics.cache_event(kind, "bypass");
            return render(&load().await?);
        };
        match self.variant(key, &field).await {
            // Read just as Redis came back (a new epoch): may predate replayed writes.
            Ok(Some(_)) if self.epoch() != epoch => {
                self.metrics.cache_event(kind, "bypass");
                return render(&load().await?);
            }
            Ok(Some(stored)) => {
                self.metrics.cache_event(kind, "hit");
                return Ok(stored);
            }
            Ok(None) => {}
            Err(_) => {
                self.metrics.cache_event(kind, "error");
                return render(&load().await?);
            }
        }
        let flight = self.flight(key);
        let _gate = flight.gate.lock().await;
        let result = async {
            // Someone may have stored the variant, or the document, while we waited.
            if let Ok((found, doc)) = self.variant_or_doc(key, &field).await
                && self.epoch() == epoch
            {
                if let Some(stored) = found {
                    self.metrics.cache_event(kind, "hit");
                    return Ok(stored);
                }
                if let Some((text, version)) = doc {
                    self.metrics.cache_event(kind, "render");
                    let stored = render(&decode(&text)?)?;
                    self.store_variant(key, &field, version, &stored).await;
                    return Ok(stored);
                }
            }
            self.metrics.cache_event(kind, "miss");
            flight.invalidated.store(false, Ordering::SeqCst);
            let doc = load().await?;
            let stored = render(&doc)?;
            if !flight.invalidated.load(Ordering::SeqCst)
                && lock(&self.pending).is_empty()
                && self.epoch() == epoch
            {
                self.store_doc(key, encode(&doc), &field, &stored, ttl)
                    .await;
            }
            Ok(stored)
        }
        .await;
        self.land(key, &flight);
        result
    }

    /// Replaces whatever `key` held with a freshly loaded document, a new version and
    /// the variant rendered from it.
    async fn store_doc(&self, key: &str, doc: String, field: &str, stored: &Stored, ttl: Duration) {
        let version = format!("{:016x}", rand::random::<u64>());
        let (k, f, b, ms) = (
            key.to_owned(),
            field.to_owned(),
            stored.encode(),
            ttl.as_millis() as u64,
        );
        let _ = self
            .run(|mut c| async move {
                STORE_DOC
                    .key(k)
                    .arg(doc)
                    .arg(version)
                    .arg(ms)
                    .arg(f)
                    .arg(b)
                    .invoke_async::<i64>(&mut c)
                    .await
            })
            .instrument(tracing::debug_span!("cache.set"))
            .await;
    }

    /// Adds a variant rendered from the document of `version`, if that is still stored.
    async fn store_variant(&self, key: &str, field: &str, version: String, stored: &Stored) {
        let (k, f, b) = (key.to_owned(), field.to_owned(), stored.encode());
        let _ = self
            .run(|mut c| async move {
                STORE_VARIANT
                    .key(k)
                    .arg(version)
                    .arg(f)
                    .arg(b)
                    .arg(MAX_FIELDS)
                    .invoke_async::<i64>(&mut c)
                    .await
            })
            .instrument(tracing::debug_span!("cache.set"))
            .await;
    }

    /// The stored variant (one HGET: the whole hit path in Redis).
    async fn variant(&self, key: &str, field: &str) -> Result<Option<Stored>, CacheError> {
        let (k, f) = (key.to_owned(), field.to_owned());
        let raw = self
            .run(|mut c| async move {
                wrong_type(
                    redis::cmd("HGET")
                        .arg(k)
                        .arg(f)
                        .query_async::<Option<Bytes>>(&mut c)
                        .await,
                )
            })
            .instrument(tracing::debug_span!("cache.get"))
            .await?;
        Ok(raw.and_then(Stored::decode))
    }

    /// The stored variant, or else the stored document and its version.
    #[allow(clippy::type_complexity)]
    async fn variant_or_doc(
        &self,
        key: &str,
        field: &str,
    ) -> Result<(Option<Stored>, Option<(String, String)>), CacheError> {
        let (k, f) = (key.to_owned(), field.to_owned());
        let got = self
            .run(|mut c| async move {
                wrong_type(
                    redis::cmd("HMGET")
                        .arg(k)
                        .arg(f)
                        .arg("doc")
                        .arg("v")
                        .query_async::<(Option<Bytes>, Option<String>, Option<String>)>(&mut c)
                        .await
                        .map(Some),
                )
            })
            .instrument(tracing::debug_span!("cache.get"))
            .await?;
        Ok(match got {
            Some((Some(b), _, _)) => (Stored::decode(b), None),
            Some((None, Some(doc), Some(v))) => (None, Some((doc, v))),
            _ => (None, None),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_round_trip() {
        let s = Stored::found(&b"{\"a\":1}"[..]);
        let back = Stored::decode(Bytes::from(s.encode())).unwrap();
        assert_eq!(back, s);
        let Stored::Found { etag, body } = back else {
            panic!("found")
        };
        assert_eq!(etag.len(), 34);
        assert_eq!(&body[..], b"{\"a\":1}");
        assert_eq!(
            Stored::decode(Bytes::from(Stored::NotFound.encode())),
            Some(Stored::NotFound)
        );
        assert_eq!(Stored::decode(Bytes::from_static(b"no newline")), None);
    }
}
