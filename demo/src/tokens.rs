//! Development tokens: HS256 JWTs signed with the demo's random per-run secret, in the
//! shape the data plane expects (`sub`, `role`, `school_id`, `iss`, `aud`, `exp`).

use jsonwebtoken::{EncodingKey, Header};
use serde_json::json;
use uuid::Uuid;

pub const ISSUER: &str = "https://auth.edumind.ai";
pub const AUDIENCE: &str = "edumind-dataplane";
/// Long-lived enough for any demo session; they die with the secret when the demo stops.
const VALID_SECS: i64 = 7 * 24 * 3600;

pub struct Tokens {
    secret: String,
}

impl Tokens {
    pub fn new(secret: String) -> Self {
        Tokens { secret }
    }

    pub fn mint(&self, user: Uuid, role: &str, school: Option<Uuid>) -> anyhow::Result<String> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs() as i64;
        let mut claims = json!({
            "sub": user, "role": role, "iss": ISSUER, "aud": AUDIENCE,
            "iat": now, "exp": now + VALID_SECS,
        });
        if let (Some(school), Some(o)) = (school, claims.as_object_mut()) {
            o.insert("school_id".into(), json!(school));
        }
        Ok(jsonwebtoken::encode(
            &Header::default(),
            &claims,
            &EncodingKey::from_secret(self.secret.as_bytes()),
        )?)
    }

    /// A platform admin (loads the demo data; not printed).
    pub fn platform_admin(&self) -> anyhow::Result<String> {
        self.mint(crate::data::demo_id("platform-admin"), "SystemAdmin", None)
    }

    pub fn student(&self, user: Uuid, school: Option<Uuid>) -> anyhow::Result<String> {
        self.mint(user, "Student", school)
    }
}
