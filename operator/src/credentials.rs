//! Passwords: generation, a redacting wrapper, and SCRAM-SHA-256 verifiers.
//!
//! The operator never sends a plaintext password to PostgreSQL. It computes the
//! SCRAM-SHA-256 verifier (RFC 5802 / RFC 7677, the format of `pg_authid.rolpassword`)
//! client-side and sends only that, so no server log, statement log or error can contain
//! the password. Checking whether a Secret's password still matches the role is done the
//! same way, against the stored verifier, without logging in.
//!
//! Managed services (RDS, Cloud SQL, Azure) deny `pg_authid`, and with it the stored
//! verifier, to every role the operator may use. For them the operator records a
//! [`fingerprint`] of each password it sets in the role's comment: HMAC-SHA-256 keyed with
//! a random 16-byte salt kept beside it. Comments are readable by every role of the
//! server; the fingerprint only lets someone test guesses of a 190-bit random password,
//! which is hopeless. A fingerprint proves the Secret still holds the password the
//! operator set; a real login (see `pg::password_current`) proves the server still has it.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, Mac};
use rand::Rng;
use sha2::{Digest, Sha256};

/// Iteration count PostgreSQL itself uses by default (`scram_iterations`).
pub const SCRAM_ITERATIONS: u32 = 4096;
const PASSWORD_LEN: usize = 32;

/// A secret string whose `Debug` and `Display` never show the value.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretString(String);

impl SecretString {
    pub fn new(value: String) -> Self {
        Self(value)
    }
    /// The plaintext; only for building the connection Secret.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for SecretString {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretString(<redacted>)")
    }
}

/// A fresh random password: 32 characters from 62 symbols (about 190 bits) drawn from
/// the OS-seeded CSPRNG. Alphanumeric only, so it needs no escaping in any of the
/// connection string formats and is unchanged by SASLprep.
pub fn generate_password() -> SecretString {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    SecretString(
        (0..PASSWORD_LEN)
            .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
            .collect(),
    )
}

/// HMAC-SHA-256; `None` only if the HMAC implementation rejected the key length, which
/// HMAC never does.
fn hmac(key: &[u8], data: &[u8]) -> Option<[u8; 32]> {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).ok()?;
    mac.update(data);
    Some(mac.finalize().into_bytes().into())
}

fn keys(password: &str, salt: &[u8], iterations: u32) -> Option<([u8; 32], [u8; 32])> {
    let mut salted = [0u8; 32];
    pbkdf2::pbkdf2_hmac::<Sha256>(password.as_bytes(), salt, iterations, &mut salted);
    let client_key = hmac(&salted, b"Client Key")?;
    let stored_key: [u8; 32] = Sha256::digest(client_key).into();
    let server_key = hmac(&salted, b"Server Key")?;
    Some((stored_key, server_key))
}

/// The SCRAM-SHA-256 verifier of `password` with a fresh random salt, in PostgreSQL's
/// `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>` form.
pub fn scram_verifier(password: &SecretString) -> Option<String> {
    let mut salt = [0u8; 16];
    rand::rng().fill(&mut salt);
    verifier_with_salt(password.expose(), &salt, SCRAM_ITERATIONS)
}

fn verifier_with_salt(password: &str, salt: &[u8], iterations: u32) -> Option<String> {
    let (stored, server) = keys(password, salt, iterations)?;
    Some(format!(
        "SCRAM-SHA-256${iterations}:{}${}:{}",
        B64.encode(salt),
        B64.encode(stored),
        B64.encode(server)
    ))
}

/// Whether `password` matches a stored SCRAM-SHA-256 verifier. Anything else (an MD5
/// hash, no password, a malformed value) counts as "does not match".
pub fn verifier_matches(password: &SecretString, verifier: &str) -> bool {
    let parse = || -> Option<bool> {
        let rest = verifier.strip_prefix("SCRAM-SHA-256$")?;
        let (params, keys_part) = rest.split_once('$')?;
        let (iterations, salt) = params.split_once(':')?;
        let (stored, server) = keys_part.split_once(':')?;
        let iterations: u32 = iterations.parse().ok()?;
        if iterations == 0 || iterations > 1_000_000 {
            return None;
        }
        let salt = B64.decode(salt).ok()?;
        let (want_stored, want_server) = (B64.decode(stored).ok()?, B64.decode(server).ok()?);
        let (got_stored, got_server) = keys(password.expose(), &salt, iterations)?;
        Some(got_stored[..] == want_stored[..] && got_server[..] == want_server[..])
    };
    parse().unwrap_or(false)
}

/// Prefix of a password fingerprint (lets the format change later).
const FINGERPRINT_V1: &str = "hmac-sha256:";

/// A keyed fingerprint of `password` with a fresh random salt:
/// `hmac-sha256:<salt>:<HMAC-SHA-256(salt, password)>`, both base64.
pub fn fingerprint(password: &SecretString) -> Option<String> {
    let mut salt = [0u8; 16];
    rand::rng().fill(&mut salt);
    fingerprint_with_salt(password.expose(), &salt)
}

fn fingerprint_with_salt(password: &str, salt: &[u8]) -> Option<String> {
    let mac = hmac(salt, password.as_bytes())?;
    Some(format!(
        "{FINGERPRINT_V1}{}:{}",
        B64.encode(salt),
        B64.encode(mac)
    ))
}

/// Whether `password` is the one `fingerprint` was made from; anything malformed does
/// not match.
pub fn fingerprint_matches(password: &SecretString, fingerprint: &str) -> bool {
    let parse = || -> Option<bool> {
        let (salt, mac) = fingerprint.strip_prefix(FINGERPRINT_V1)?.split_once(':')?;
        let (salt, mac) = (B64.decode(salt).ok()?, B64.decode(mac).ok()?);
        let mut check = <Hmac<Sha256> as Mac>::new_from_slice(&salt).ok()?;
        check.update(password.expose().as_bytes());
        Some(check.verify_slice(&mac).is_ok())
    };
    parse().unwrap_or(false)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    // That PostgreSQL accepts these verifiers for real logins is proven by the
    // reconcile tests, which connect with the published credentials.
    #[test]
    fn verifier_format_and_matching() {
        let v = verifier_with_salt("pencil", b"0123456789abcdef", 4096).unwrap();
        assert!(v.starts_with("SCRAM-SHA-256$4096:MDEyMzQ1Njc4OWFiY2RlZg==$"));
        assert!(verifier_matches(&SecretString::new("pencil".into()), &v));
        assert!(!verifier_matches(&SecretString::new("pencil2".into()), &v));
        assert!(!verifier_matches(
            &SecretString::new("pencil".into()),
            "md5abc"
        ));
        assert!(!verifier_matches(&SecretString::new("pencil".into()), ""));
    }

    #[test]
    fn fingerprints_match_only_their_password() {
        let p = SecretString::new("pencil".into());
        let f = fingerprint(&p).unwrap();
        assert!(f.starts_with("hmac-sha256:"));
        assert!(!f.contains("pencil"));
        assert!(fingerprint_matches(&p, &f));
        assert!(!fingerprint_matches(
            &SecretString::new("pencil2".into()),
            &f
        ));
        assert_ne!(Some(f.clone()), fingerprint(&p), "fresh salt each time");
        let fixed = fingerprint_with_salt("pencil", b"0123456789abcdef").unwrap();
        assert!(fingerprint_matches(&p, &fixed));
        assert!(!fingerprint_matches(&p, "hmac-sha256:AAAA"));
        assert!(!fingerprint_matches(&p, ""));
    }

    #[test]
    fn passwords_are_random_strong_and_redacted() {
        let (a, b) = (generate_password(), generate_password());
        assert_ne!(a, b);
        assert_eq!(a.expose().len(), 32);
        assert!(a.expose().bytes().all(|c| c.is_ascii_alphanumeric()));
        assert!(!format!("{a:?}").contains(a.expose()));
        let v1 = scram_verifier(&a).unwrap();
        assert_ne!(Some(v1.clone()), scram_verifier(&a), "fresh salt each time");
        assert!(verifier_matches(&a, &v1));
    }
}
