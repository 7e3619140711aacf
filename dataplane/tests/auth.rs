//! RS256 and ES256 tokens verified against a JWKS file; algorithm confusion refused.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;
use support::*;

const RSA_PEM: &[u8] = include_bytes!("fixtures/test-rs256.pem");
const EC_PEM: &[u8] = include_bytes!("fixtures/test-es256.pem");

fn sign(
    alg: Algorithm,
    kid: Option<&str>,
    key: &EncodingKey,
    claims: &serde_json::Value,
) -> String {
    let mut h = Header::new(alg);
    h.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&h, claims, key).unwrap()
}

#[tokio::test]
async fn rs256_and_es256_from_jwks() {
    let rsa = EncodingKey::from_rsa_pem(RSA_PEM).unwrap();
    let ec = EncodingKey::from_ec_pem(EC_PEM).unwrap();
    let mut rsa_jwk = Jwk::from_encoding_key(&rsa, Algorithm::RS256).unwrap();
    rsa_jwk.common.key_id = Some("rsa-1".into());
    let mut ec_jwk = Jwk::from_encoding_key(&ec, Algorithm::ES256).unwrap();
    ec_jwk.common.key_id = Some("ec-1".into());
    let jwks_dir = tempfile::tempdir().unwrap();
    let jwks = jwks_dir.path().join("jwks.json");
    std::fs::write(
        &jwks,
        serde_json::to_string(&JwkSet {
            keys: vec![rsa_jwk, ec_jwk],
        })
        .unwrap(),
    )
    .unwrap();
    let jwks2 = jwks.clone();
    let f = Fixture::start_with(edumind_tests::redis().await.url(), move |s| {
        s.auth.jwks_file = Some(jwks2);
    })
    .await;
    let ta = f.a.school_id.unwrap();
    let path = format!("/v1/tenants/{ta}/school");
    let now = chrono::Utc::now().timestamp();
    let claims = json!({"sub": f.a.teacher_user.to_string(), "role": "Teacher", "school_id": ta.to_string(),
        "iss": ISSUER, "aud": AUDIENCE, "exp": now + 600, "nbf": now - 5});

    let rs = sign(Algorithm::RS256, Some("rsa-1"), &rsa, &claims);
    assert_eq!(f.call("GET", &path, Some(&rs), None).await.0, 200);
    let es = sign(Algorithm::ES256, Some("ec-1"), &ec, &claims);
    assert_eq!(f.call("GET", &path, Some(&es), None).await.0, 200);
    let es_no_kid = sign(Algorithm::ES256, None, &ec, &claims);
    assert_eq!(f.call("GET", &path, Some(&es_no_kid), None).await.0, 200);

    // Wrong kid, expired, and a key that is not in the JWKS.
    assert_eq!(
        f.call(
            "GET",
            &path,
            Some(&sign(Algorithm::RS256, Some("ec-1"), &rsa, &claims)),
            None
        )
        .await
        .0,
        401
    );
    let mut expired = claims.clone();
    expired["exp"] = json!(now - 600);
    assert_eq!(
        f.call(
            "GET",
            &path,
            Some(&sign(Algorithm::RS256, Some("rsa-1"), &rsa, &expired)),
            None
        )
        .await
        .0,
        401
    );
    let stranger = EncodingKey::from_secret(b"another-secret-another-secret-another");
    assert_eq!(
        f.call(
            "GET",
            &path,
            Some(&sign(Algorithm::HS256, None, &stranger, &claims)),
            None
        )
        .await
        .0,
        401
    );

    // Algorithm confusion: an HS256 token whose "secret" is the RSA public key is refused.
    let public_pem = include_bytes!("fixtures/test-rs256.pub.pem");
    let confused = sign(
        Algorithm::HS256,
        Some("rsa-1"),
        &EncodingKey::from_secret(public_pem),
        &claims,
    );
    assert_eq!(f.call("GET", &path, Some(&confused), None).await.0, 401);
    // HS256 with the configured secret still works alongside the JWKS.
    assert_eq!(
        f.call(
            "GET",
            &path,
            Some(&token(f.a.teacher_user, 1, Some(ta))),
            None
        )
        .await
        .0,
        200
    );
}

/// The JWKS file is re-read while the service runs: a key added to it is accepted, a key
/// removed is refused, and a broken file keeps the last good keys — no restart.
#[tokio::test]
async fn jwks_file_changes_apply_without_restart() {
    let rsa = EncodingKey::from_rsa_pem(RSA_PEM).unwrap();
    let ec = EncodingKey::from_ec_pem(EC_PEM).unwrap();
    let mut rsa_jwk = Jwk::from_encoding_key(&rsa, Algorithm::RS256).unwrap();
    rsa_jwk.common.key_id = Some("rsa-1".into());
    let mut ec_jwk = Jwk::from_encoding_key(&ec, Algorithm::ES256).unwrap();
    ec_jwk.common.key_id = Some("ec-2".into());
    let write = |path: &std::path::Path, keys: Vec<Jwk>| {
        // Write-and-rename, as a mounted Secret or a key-rotation job would.
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, serde_json::to_string(&JwkSet { keys }).unwrap()).unwrap();
        std::fs::rename(&tmp, path).unwrap();
    };
    let jwks_dir = tempfile::tempdir().unwrap();
    let jwks = jwks_dir.path().join("jwks.json");
    write(&jwks, vec![rsa_jwk.clone()]);
    let jwks2 = jwks.clone();
    let f = Fixture::start_with(edumind_tests::redis().await.url(), move |s| {
        s.auth.jwks_file = Some(jwks2);
        s.auth.jwks_reload_ms = 100;
    })
    .await;
    let ta = f.a.school_id.unwrap();
    let path = format!("/v1/tenants/{ta}/school");
    let now = chrono::Utc::now().timestamp();
    let claims = json!({"sub": f.a.teacher_user.to_string(), "role": "Teacher", "school_id": ta.to_string(),
        "iss": ISSUER, "aud": AUDIENCE, "exp": now + 600, "nbf": now - 5});
    let rs = sign(Algorithm::RS256, Some("rsa-1"), &rsa, &claims);
    let es = sign(Algorithm::ES256, Some("ec-2"), &ec, &claims);
    let status = async |t: &str| f.call("GET", &path, Some(t), None).await.0;
    let eventually = async |t: &str, want: u16| {
        for _ in 0..50 {
            if status(t).await == want {
                return true;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        false
    };
    assert_eq!(status(&rs).await, 200);
    assert_eq!(status(&es).await, 401, "ec-2 is not in the file yet");

    write(&jwks, vec![rsa_jwk.clone(), ec_jwk.clone()]);
    assert!(eventually(&es, 200).await, "an added key is picked up");
    assert_eq!(status(&rs).await, 200);

    // A broken file keeps the last good keys.
    std::fs::write(&jwks, "{ not json").unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    assert_eq!(status(&es).await, 200);
    assert_eq!(f.state.auth.jwks_len(), 2);

    // Rotation: the RSA key leaves the file; its tokens stop working.
    write(&jwks, vec![ec_jwk]);
    assert!(eventually(&rs, 401).await, "a removed key is refused");
    assert_eq!(status(&es).await, 200);
}
