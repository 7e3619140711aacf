//! Bearer JWT authentication.
//!
//! Accepted: HS256 signed with the configured shared secret, and RS256/ES256 signed by a
//! key from the configured JWKS file (chosen by `kid`; a token without `kid` is tried
//! against the keys of its algorithm). The algorithm decides the key family, so a
//! public key can never be used as an HMAC secret. `exp`, `iss` and `aud` are required;
//! `nbf` is checked when present; `leeway_secs` of clock skew is allowed.
//!
//! Claims: `sub` = user id (UUID), `role` = the spec's `UserRole` (number 0–5 or its
//! name spelled exactly as documented: `SchoolAdmin`, never `schooladmin`), `school_id` =
//! UUID, absent for self-service users.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};

use jsonwebtoken::jwk::{AlgorithmParameters, JwkSet, KeyAlgorithm};
use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode, decode_header};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::config::AuthSettings;

/// The storage spec's `UserRole` (`users.role`, 0–5). The spec names the enum but not its
/// members; this mapping is ours and is documented in `docs/dataplane.md`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[repr(i32)]
pub enum UserRole {
    Student = 0,
    Teacher = 1,
    SchoolAdmin = 2,
    CourseAdmin = 3,
    BusinessAdmin = 4,
    SystemAdmin = 5,
}

impl UserRole {
    pub const ALL: [UserRole; 6] = [
        UserRole::Student,
        UserRole::Teacher,
        UserRole::SchoolAdmin,
        UserRole::CourseAdmin,
        UserRole::BusinessAdmin,
        UserRole::SystemAdmin,
    ];

    pub fn from_i32(n: i32) -> Option<UserRole> {
        UserRole::ALL.into_iter().find(|r| *r as i32 == n)
    }

    /// The documented spelling only (`SystemAdmin`, not `systemadmin`): a token whose
    /// role is spelled otherwise was not minted by an issuer we document, so it is refused.
    pub fn from_name(s: &str) -> Option<UserRole> {
        UserRole::ALL.into_iter().find(|r| r.name() == s)
    }

    /// The documented name.
    pub fn name(self) -> &'static str {
        match self {
            UserRole::Student => "Student",
            UserRole::Teacher => "Teacher",
            UserRole::SchoolAdmin => "SchoolAdmin",
            UserRole::CourseAdmin => "CourseAdmin",
            UserRole::BusinessAdmin => "BusinessAdmin",
            UserRole::SystemAdmin => "SystemAdmin",
        }
    }

    /// System and business admins reach every tenant (spec 3.2: "bypass all filters").
    pub fn is_platform_admin(self) -> bool {
        matches!(self, UserRole::SystemAdmin | UserRole::BusinessAdmin)
    }
}

/// Who is calling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub user_id: Uuid,
    pub role: UserRole,
    pub school_id: Option<Uuid>,
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("missing bearer token")]
    Missing,
    #[error("invalid token")]
    Invalid,
    /// A school token whose `sub` is not an active user of that school with that role.
    #[error("not an active user of the token's school")]
    NotMember,
    /// The membership could not be checked (the school's database is unreachable).
    #[error("membership check unavailable")]
    Unavailable,
}

impl From<AuthError> for crate::problem::Problem {
    /// 401 for every refusal, whatever its reason (the reply does not say which);
    /// 503 with `Retry-After` when the membership could not be checked.
    fn from(e: AuthError) -> Self {
        match e {
            AuthError::Unavailable => crate::problem::Problem::unavailable(
                1,
                "the account could not be checked; retry shortly",
            ),
            _ => crate::problem::Problem::unauthorized(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read JWKS file {0}: {1}")]
    Read(String, std::io::Error),
    #[error("JWKS file {0} is not a valid key set")]
    Parse(String),
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RoleClaim {
    Number(i32),
    Name(String),
}

#[derive(Deserialize)]
struct Claims {
    sub: String,
    /// Checked by the validation already; kept to know how long a verified token may be
    /// remembered.
    exp: f64,
    role: RoleClaim,
    #[serde(default)]
    school_id: Option<String>,
}

struct Key {
    kid: Option<String>,
    alg: Algorithm,
    key: DecodingKey,
}

/// Verifies bearer tokens. Built once at startup; the JWKS keys are swapped in place when
/// the file changes ([`Authenticator::reload_jwks`]).
pub struct Authenticator {
    hs256: Option<DecodingKey>,
    keys: RwLock<Arc<Vec<Key>>>,
    jwks_file: Option<PathBuf>,
    /// SHA-256 of the JWKS file's bytes as last loaded.
    jwks_hash: Mutex<Option<[u8; 32]>>,
    issuer: String,
    audience: String,
    leeway: u64,
    /// Tokens verified already, by SHA-256 of the token's bytes (the token itself is not
    /// kept): the principal and the token's `exp`. Bounded ([`MAX_VERIFIED`]); emptied
    /// when the JWKS keys change.
    verified: Mutex<HashMap<[u8; 32], (Principal, f64)>>,
}

/// At most this many verified tokens are remembered.
const MAX_VERIFIED: usize = 10_000;

fn now_secs() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

impl Authenticator {
    pub fn from_settings(s: &AuthSettings) -> Result<Self, KeyError> {
        let (keys, hash) = match &s.jwks_file {
            Some(path) => {
                let shown = path.display().to_string();
                let bytes = std::fs::read(path).map_err(|e| KeyError::Read(shown.clone(), e))?;
                (parse_jwks(&bytes, &shown)?, Some(digest(&bytes)))
            }
            None => (Vec::new(), None),
        };
        Ok(Authenticator {
            hs256: s
                .hs256_secret
                .as_ref()
                .map(|k| DecodingKey::from_secret(k.expose().as_bytes())),
            keys: RwLock::new(Arc::new(keys)),
            jwks_file: s.jwks_file.clone(),
            jwks_hash: Mutex::new(hash),
            issuer: s.issuer.clone(),
            audience: s.audience.clone(),
            leeway: s.leeway_secs,
            verified: Mutex::new(HashMap::new()),
        })
    }

    /// Re-reads the JWKS file; when its bytes changed and parse, the new key set replaces
    /// the old one (`Ok(true)`). A file that cannot be read or parsed keeps the current
    /// keys (a half-written or briefly missing file must not lock every caller out).
    pub async fn reload_jwks(&self) -> Result<bool, KeyError> {
        let Some(path) = &self.jwks_file else {
            return Ok(false);
        };
        let shown = path.display().to_string();
        let bytes = tokio::fs::read(path)
            .await
            .map_err(|e| KeyError::Read(shown.clone(), e))?;
        let hash = digest(&bytes);
        if *self.jwks_hash.lock().unwrap_or_else(|p| p.into_inner()) == Some(hash) {
            return Ok(false);
        }
        let keys = parse_jwks(&bytes, &shown)?;
        *self.keys.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(keys);
        // A token verified with a key that is gone now must be verified again.
        self.verified
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        *self.jwks_hash.lock().unwrap_or_else(|p| p.into_inner()) = Some(hash);
        Ok(true)
    }

    /// Number of RS256/ES256 keys currently loaded.
    pub fn jwks_len(&self) -> usize {
        self.current_keys().len()
    }

    fn current_keys(&self) -> Arc<Vec<Key>> {
        self.keys.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn validation(&self, alg: Algorithm) -> Validation {
        let mut v = Validation::new(alg);
        v.set_issuer(&[&self.issuer]);
        v.set_audience(&[&self.audience]);
        v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        v.validate_exp = true;
        v.validate_nbf = true;
        v.leeway = self.leeway;
        v
    }

    /// Checks an `Authorization` header value and returns the principal. A token
    /// verified before is answered from memory until its `exp` (a hash of the token's
    /// bytes is the key, so only the very same token matches).
    pub fn authenticate(&self, header: Option<&str>) -> Result<Principal, AuthError> {
        let header = header.ok_or(AuthError::Missing)?;
        let token = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
            .ok_or(AuthError::Missing)?
            .trim();
        let hash = digest(token.as_bytes());
        let now = now_secs();
        if let Some((p, exp)) = self
            .verified
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&hash)
            && now < *exp
        {
            return Ok(p.clone());
        }
        let (p, exp) = self.verify(token)?;
        let mut verified = self.verified.lock().unwrap_or_else(|p| p.into_inner());
        if verified.len() >= MAX_VERIFIED {
            verified.retain(|_, (_, exp)| now < *exp);
            if verified.len() >= MAX_VERIFIED {
                verified.clear();
            }
        }
        verified.insert(hash, (p.clone(), exp));
        Ok(p)
    }

    /// Verifies a token's signature and claims: the principal and its `exp`.
    fn verify(&self, token: &str) -> Result<(Principal, f64), AuthError> {
        let head = decode_header(token).map_err(|_| AuthError::Invalid)?;
        let claims = match head.alg {
            Algorithm::HS256 => {
                let key = self.hs256.as_ref().ok_or(AuthError::Invalid)?;
                decode::<Claims>(token, key, &self.validation(Algorithm::HS256))
                    .map_err(|_| AuthError::Invalid)?
                    .claims
            }
            alg @ (Algorithm::RS256 | Algorithm::ES256) => {
                let keys = self.current_keys();
                let candidates = keys.iter().filter(|k| {
                    k.alg == alg && (head.kid.is_none() || k.kid.as_deref() == head.kid.as_deref())
                });
                let validation = self.validation(alg);
                let mut found = None;
                for k in candidates {
                    if let Ok(data) = decode::<Claims>(token, &k.key, &validation) {
                        found = Some(data.claims);
                        break;
                    }
                }
                found.ok_or(AuthError::Invalid)?
            }
            _ => return Err(AuthError::Invalid),
        };
        let exp = claims.exp;
        Ok((principal(claims)?, exp))
    }
}

fn principal(c: Claims) -> Result<Principal, AuthError> {
    let user_id = Uuid::parse_str(&c.sub).map_err(|_| AuthError::Invalid)?;
    let role = match c.role {
        RoleClaim::Number(n) => UserRole::from_i32(n),
        RoleClaim::Name(s) => UserRole::from_name(&s),
    }
    .ok_or(AuthError::Invalid)?;
    let school_id = match c.school_id.as_deref() {
        None | Some("") => None,
        Some(s) => Some(Uuid::parse_str(s).map_err(|_| AuthError::Invalid)?),
    };
    Ok(Principal {
        user_id,
        role,
        school_id,
    })
}

fn digest(bytes: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).into()
}

/// Keeps the keys in step with the JWKS file: re-reads it every `every` until `shutdown`.
pub fn spawn_jwks_reloader(
    auth: Arc<Authenticator>,
    metrics: Arc<crate::metrics::Metrics>,
    every: std::time::Duration,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = shutdown.changed() => return,
            }
            match auth.reload_jwks().await {
                Ok(true) => {
                    metrics.jwks_reload(true);
                    tracing::info!(keys = auth.jwks_len(), "JWKS reloaded")
                }
                Ok(false) => {}
                Err(e) => {
                    metrics.jwks_reload(false);
                    tracing::warn!(error = %e, "JWKS reload failed; keeping the current keys")
                }
            }
        }
    })
}

fn parse_jwks(bytes: &[u8], shown: &str) -> Result<Vec<Key>, KeyError> {
    let shown = shown.to_owned();
    let set: JwkSet = serde_json::from_slice(bytes).map_err(|_| KeyError::Parse(shown.clone()))?;
    let mut keys = Vec::new();
    for jwk in &set.keys {
        let alg = match (&jwk.algorithm, jwk.common.key_algorithm) {
            (AlgorithmParameters::RSA(_), None) => Algorithm::RS256,
            (AlgorithmParameters::EllipticCurve(_), None) => Algorithm::ES256,
            (_, Some(KeyAlgorithm::RS256)) => Algorithm::RS256,
            (_, Some(KeyAlgorithm::ES256)) => Algorithm::ES256,
            _ => continue, // only RS256/ES256 keys are used from a JWKS
        };
        let key = DecodingKey::from_jwk(jwk).map_err(|_| KeyError::Parse(shown.clone()))?;
        keys.push(Key {
            kid: jwk.common.key_id.clone(),
            alg,
            key,
        });
    }
    Ok(keys)
}
