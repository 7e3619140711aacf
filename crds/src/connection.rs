//! The connection Secret: the contract between the operator, which writes one per tenant,
//! and its readers (the data plane and the backup runner). Its label names, key names and
//! value formats are written here once; every builder and parser uses this module.
//!
//! Shape (design brief, "Connection Secret"): type `kubernetes.io/basic-auth`; labels
//! `app.kubernetes.io/managed-by: edumind-operator`, and `edumind.ai/school-id` plus
//! `edumind.ai/school-code` for a school, or `edumind.ai/tenant: selfservice` for the shared
//! self-service database; `edumind.ai/tenant-kind` says which. Keys: `username`, `user`,
//! `password`, `host`, `port`, `dbname`, `uri`, `jdbc-uri`, `pgpass` and the .NET
//! connection string (`School-{id}-ConnectionString` or `SelfService-ConnectionString`).
//! When the target server is configured for TLS, also `sslmode` (`disable`, `require`,
//! `verify-ca`, `verify-full`; the `uri`, `jdbc-uri` and .NET string carry it too) and,
//! when a CA bundle is configured, `ca.crt` (PEM). Without TLS settings neither key is
//! written and the other values are unchanged.
//!
//! Parse errors name the key or label at fault and never carry a value from the Secret.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use uuid::Uuid;

/// `app.kubernetes.io/managed-by`: only Secrets carrying [`MANAGED_BY`] here are tenants.
pub const LABEL_MANAGED_BY: &str = "app.kubernetes.io/managed-by";
/// The value of [`LABEL_MANAGED_BY`] on everything the operator manages.
pub const MANAGED_BY: &str = "edumind-operator";
/// The school's id (a UUID): the exact key readers route by.
pub const LABEL_SCHOOL_ID: &str = "edumind.ai/school-id";
/// A label-safe form of the school's code, for humans and selectors.
pub const LABEL_SCHOOL_CODE: &str = "edumind.ai/school-code";
/// `school` or `selfservice`.
pub const LABEL_TENANT_KIND: &str = "edumind.ai/tenant-kind";
/// `selfservice` on the shared self-service database's Secret (and nothing else).
pub const LABEL_TENANT: &str = "edumind.ai/tenant";
/// The value of [`LABEL_TENANT`] and [`LABEL_TENANT_KIND`] for the self-service tenant.
pub const SELF_SERVICE: &str = "selfservice";
/// The value of [`LABEL_TENANT_KIND`] for a school.
pub const SCHOOL: &str = "school";
/// The Secret type.
pub const SECRET_TYPE: &str = "kubernetes.io/basic-auth";
/// The .NET key of the self-service Secret (`GetConnectionString("SelfService")`).
pub const SELF_SERVICE_DOTNET_KEY: &str = "SelfService-ConnectionString";

/// The key names of the Secret's data.
pub mod keys {
    pub const USERNAME: &str = "username";
    pub const USER: &str = "user";
    pub const PASSWORD: &str = "password";
    pub const HOST: &str = "host";
    pub const PORT: &str = "port";
    pub const DBNAME: &str = "dbname";
    pub const URI: &str = "uri";
    pub const JDBC_URI: &str = "jdbc-uri";
    pub const PGPASS: &str = "pgpass";
    /// libpq's SSL mode; present only when the target server configures TLS.
    pub const SSLMODE: &str = "sslmode";
    /// The CA bundle (PEM) that verifies the server; present only when configured.
    pub const CA_CRT: &str = "ca.crt";
}

/// libpq's SSL modes the platform supports. `prefer` and `allow` are left out on purpose:
/// they fall back to plaintext silently.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SslMode {
    Disable,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    pub fn as_str(&self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }

    pub fn parse(value: &str) -> Option<SslMode> {
        Some(match value.trim() {
            "disable" => SslMode::Disable,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            _ => return None,
        })
    }

    /// Npgsql's spelling (`SSL Mode=VerifyFull`).
    pub fn dotnet(&self) -> &'static str {
        match self {
            SslMode::Disable => "Disable",
            SslMode::Require => "Require",
            SslMode::VerifyCa => "VerifyCA",
            SslMode::VerifyFull => "VerifyFull",
        }
    }
}

/// TLS settings of an endpoint: the mode and, when configured, the CA bundle (PEM).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tls {
    pub mode: SslMode,
    pub ca_pem: Option<String>,
}

impl Tls {
    /// sqlx connection options with these settings: the mode, and the CA bundle as the
    /// only trusted roots when present (else the system's roots). Every sqlx client of a
    /// tenant or target server (operator, data plane, backup runner) goes through this.
    pub fn apply(
        &self,
        options: sqlx::postgres::PgConnectOptions,
    ) -> sqlx::postgres::PgConnectOptions {
        use sqlx::postgres::PgSslMode;
        let options = options.ssl_mode(match self.mode {
            SslMode::Disable => PgSslMode::Disable,
            SslMode::Require => PgSslMode::Require,
            SslMode::VerifyCa => PgSslMode::VerifyCa,
            SslMode::VerifyFull => PgSslMode::VerifyFull,
        });
        match &self.ca_pem {
            Some(pem) => options.ssl_root_cert_from_pem(pem.as_bytes().to_vec()),
            None => options,
        }
    }
}

/// The .NET key of a school's Secret, as the storage spec names it.
pub fn school_dotnet_key(school_id: Uuid) -> String {
    format!("School-{school_id}-ConnectionString")
}

/// A password. `Debug` prints `***`; the value is reachable only through [`Password::expose`].
#[derive(Clone, PartialEq, Eq)]
pub struct Password(String);

impl Password {
    pub fn new(value: impl Into<String>) -> Self {
        Password(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Password(***)")
    }
}

/// Which tenant a connection Secret is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TenantRef {
    /// A school. `code_label` is the label-safe form of its code (absent when a reader
    /// finds no code label).
    School {
        id: Uuid,
        code_label: Option<String>,
    },
    /// The shared self-service database.
    SelfService,
}

/// Where and as whom to connect: the keys every reader needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
    pub dbname: String,
    pub username: String,
    pub password: Password,
    /// `None`: the server has no TLS settings (no `sslmode` key; clients use their default).
    pub tls: Option<Tls>,
}

impl Endpoint {
    /// Every key of the contract for this endpoint, with the .NET connection string under
    /// `dotnet_key`. Role, database and password are generated as `[A-Za-z0-9_]`, so no
    /// value needs escaping in any of the formats.
    pub fn data(&self, dotnet_key: &str) -> BTreeMap<String, String> {
        let Endpoint {
            host,
            port,
            dbname: db,
            username: user,
            password,
            tls,
        } = self;
        let pw = password.expose();
        let (uri_ssl, jdbc_ssl, dotnet_ssl) = match tls {
            Some(t) => (
                format!("?sslmode={}", t.mode.as_str()),
                format!("&sslmode={}", t.mode.as_str()),
                format!(";SSL Mode={}", t.mode.dotnet()),
            ),
            None => Default::default(),
        };
        let mut data = BTreeMap::from([
            (keys::USERNAME.into(), user.clone()),
            (keys::USER.into(), user.clone()),
            (keys::PASSWORD.into(), pw.into()),
            (keys::HOST.into(), host.clone()),
            (keys::PORT.into(), port.to_string()),
            (keys::DBNAME.into(), db.clone()),
            (
                keys::URI.into(),
                format!("postgresql://{user}:{pw}@{host}:{port}/{db}{uri_ssl}"),
            ),
            (
                keys::JDBC_URI.into(),
                format!("jdbc:postgresql://{host}:{port}/{db}?user={user}&password={pw}{jdbc_ssl}"),
            ),
            (
                keys::PGPASS.into(),
                format!("{host}:{port}:{db}:{user}:{pw}\n"),
            ),
            (
                dotnet_key.into(),
                format!(
                    "Host={host};Port={port};Database={db};Username={user};Password={pw}{dotnet_ssl}"
                ),
            ),
        ]);
        if let Some(t) = tls {
            data.insert(keys::SSLMODE.into(), t.mode.as_str().into());
            if let Some(ca) = &t.ca_pem {
                data.insert(keys::CA_CRT.into(), ca.clone());
            }
        }
        data
    }

    /// Reads the endpoint from a Secret's keys (`username`, or `user` when it is absent).
    pub fn from_keys(keys: &BTreeMap<String, String>) -> Result<Self, ParseError> {
        let get = |name: &'static str| {
            keys.get(name)
                .filter(|v| !v.is_empty())
                .cloned()
                .ok_or(ParseError::MissingKey(name))
        };
        Ok(Endpoint {
            host: get(keys::HOST)?,
            port: get(keys::PORT)?
                .trim()
                .parse()
                .map_err(|_| ParseError::BadPort)?,
            dbname: get(keys::DBNAME)?,
            username: get(keys::USERNAME).or_else(|_| get(keys::USER))?,
            password: Password::new(get(keys::PASSWORD)?),
            tls: match get(keys::SSLMODE) {
                Ok(mode) => Some(Tls {
                    mode: SslMode::parse(&mode).ok_or(ParseError::BadSslMode)?,
                    ca_pem: get(keys::CA_CRT).ok(),
                }),
                Err(_) => None,
            },
        })
    }
}

/// One tenant's connection Secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionSecret {
    pub tenant: TenantRef,
    pub endpoint: Endpoint,
}

/// Why a Secret is not a usable connection Secret. Never carries a value from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParseError {
    NotManaged,
    NotASecret,
    MissingKey(&'static str),
    NotUtf8(String),
    /// A value under `data` of a manifest is not base64 (names the key).
    NotBase64(String),
    BadPort,
    BadSslMode,
    NoSchoolId,
    BadSchoolId,
}

impl std::fmt::Display for ParseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ParseError::NotManaged => write!(f, "not managed by {MANAGED_BY}"),
            ParseError::NotASecret => f.write_str("not a Secret manifest"),
            ParseError::MissingKey(k) => write!(f, "the Secret has no `{k}` key"),
            ParseError::NotUtf8(k) => write!(f, "the value of `{k}` is not UTF-8 text"),
            ParseError::NotBase64(k) => write!(f, "data.{k} is not base64"),
            ParseError::BadPort => write!(f, "`{}` is not a port number", keys::PORT),
            ParseError::BadSslMode => write!(
                f,
                "`{}` is not one of disable, require, verify-ca, verify-full",
                keys::SSLMODE
            ),
            ParseError::NoSchoolId => write!(f, "no {LABEL_SCHOOL_ID} label"),
            ParseError::BadSchoolId => write!(f, "the {LABEL_SCHOOL_ID} label is not a UUID"),
        }
    }
}

impl std::error::Error for ParseError {}

impl ConnectionSecret {
    /// The labels the operator sets.
    pub fn labels(&self) -> BTreeMap<String, String> {
        let mut labels = BTreeMap::from([(LABEL_MANAGED_BY.to_string(), MANAGED_BY.to_string())]);
        match &self.tenant {
            TenantRef::School { id, code_label } => {
                labels.insert(LABEL_SCHOOL_ID.into(), id.to_string());
                if let Some(code) = code_label {
                    labels.insert(LABEL_SCHOOL_CODE.into(), code.clone());
                }
                labels.insert(LABEL_TENANT_KIND.into(), SCHOOL.into());
            }
            TenantRef::SelfService => {
                labels.insert(LABEL_TENANT.into(), SELF_SERVICE.into());
                labels.insert(LABEL_TENANT_KIND.into(), SELF_SERVICE.into());
            }
        }
        labels
    }

    /// The .NET key for this tenant.
    pub fn dotnet_key(&self) -> String {
        match &self.tenant {
            TenantRef::School { id, .. } => school_dotnet_key(*id),
            TenantRef::SelfService => SELF_SERVICE_DOTNET_KEY.to_string(),
        }
    }

    /// Every key of the Secret's data, as text.
    pub fn data(&self) -> BTreeMap<String, String> {
        self.endpoint.data(&self.dotnet_key())
    }

    /// The Secret the operator publishes.
    pub fn to_secret(&self, name: &str, namespace: &str, owner: Option<OwnerReference>) -> Secret {
        Secret {
            metadata: ObjectMeta {
                name: Some(name.to_string()),
                namespace: Some(namespace.to_string()),
                labels: Some(self.labels()),
                owner_references: owner.map(|o| vec![o]),
                ..Default::default()
            },
            type_: Some(SECRET_TYPE.into()),
            data: Some(
                self.data()
                    .into_iter()
                    .map(|(k, v)| (k, ByteString(v.into_bytes())))
                    .collect(),
            ),
            ..Default::default()
        }
    }

    /// Reads a tenant from a Secret (from the API or a manifest). `stringData` wins over
    /// `data`, as in the API server. [`ParseError::NotManaged`] for a Secret without the
    /// managed-by label: readers skip those silently.
    pub fn from_secret(secret: &Secret) -> Result<Self, ParseError> {
        let labels = secret.metadata.labels.clone().unwrap_or_default();
        if labels.get(LABEL_MANAGED_BY).map(String::as_str) != Some(MANAGED_BY) {
            return Err(ParseError::NotManaged);
        }
        Self::from_parts(&labels, &secret_keys(secret)?)
    }

    /// Reads a tenant from labels and key values, whatever shape they came in.
    pub fn from_parts(
        labels: &BTreeMap<String, String>,
        keys: &BTreeMap<String, String>,
    ) -> Result<Self, ParseError> {
        let tenant = if labels.get(LABEL_TENANT).map(String::as_str) == Some(SELF_SERVICE) {
            TenantRef::SelfService
        } else {
            let raw = labels.get(LABEL_SCHOOL_ID).ok_or(ParseError::NoSchoolId)?;
            TenantRef::School {
                id: Uuid::parse_str(raw).map_err(|_| ParseError::BadSchoolId)?,
                code_label: labels.get(LABEL_SCHOOL_CODE).cloned(),
            }
        };
        Ok(ConnectionSecret {
            tenant,
            endpoint: Endpoint::from_keys(keys)?,
        })
    }
}

/// A Secret's values as text: `data` decoded, then `stringData` over it.
pub fn secret_keys(secret: &Secret) -> Result<BTreeMap<String, String>, ParseError> {
    let mut out = BTreeMap::new();
    for (key, value) in secret.data.iter().flatten() {
        let text =
            String::from_utf8(value.0.clone()).map_err(|_| ParseError::NotUtf8(key.clone()))?;
        out.insert(key.clone(), text);
    }
    for (key, value) in secret.string_data.iter().flatten() {
        out.insert(key.clone(), value.clone());
    }
    Ok(out)
}

/// Parses a Secret manifest (YAML or JSON). The error never echoes the document.
pub fn secret_from_yaml(text: &str) -> Result<Secret, ParseError> {
    #[derive(serde::Deserialize)]
    struct Kind {
        kind: Option<String>,
    }
    let kind: Kind = serde_yaml_ng::from_str(text).map_err(|_| ParseError::NotASecret)?;
    if kind.kind.as_deref().is_some_and(|k| k != "Secret") {
        return Err(ParseError::NotASecret);
    }
    serde_yaml_ng::from_str(text).map_err(|_| match bad_data_key(text) {
        Some(key) => ParseError::NotBase64(key),
        None => ParseError::NotASecret,
    })
}

/// The first key under `data` whose value does not decode as base64, if that is why a
/// manifest is not a Secret.
fn bad_data_key(text: &str) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Data {
        data: Option<BTreeMap<String, serde_yaml_ng::Value>>,
    }
    let data: Data = serde_yaml_ng::from_str(text).ok()?;
    data.data?
        .into_iter()
        .find(|(_, v)| serde_yaml_ng::from_value::<ByteString>(v.clone()).is_err())
        .map(|(k, _)| k)
}

/// The Secret as a clean manifest: what `kubectl get secret -o yaml` shows without the
/// server-populated fields (uid, resourceVersion, owner references).
pub fn secret_to_yaml(secret: &Secret) -> Result<String, serde_yaml_ng::Error> {
    // k8s-openapi writes `apiVersion` and `kind` itself.
    let clean = Secret {
        metadata: ObjectMeta {
            name: secret.metadata.name.clone(),
            namespace: secret.metadata.namespace.clone(),
            labels: secret.metadata.labels.clone(),
            ..Default::default()
        },
        type_: secret.type_.clone(),
        data: secret.data.clone(),
        string_data: secret.string_data.clone(),
        ..Default::default()
    };
    serde_yaml_ng::to_string(&clean)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn school() -> ConnectionSecret {
        ConnectionSecret {
            tenant: TenantRef::School {
                id: Uuid::parse_str("0b8f3a5e-0000-4000-8000-000000000001").unwrap(),
                code_label: Some("LHS".into()),
            },
            endpoint: Endpoint {
                host: "pg.example".into(),
                port: 5433,
                dbname: "edumind_school_lhs_x".into(),
                username: "edumind_school_lhs_x".into(),
                password: Password::new("s3cr3tPassw0rd"),
                tls: None,
            },
        }
    }

    #[test]
    fn tls_settings_travel_in_every_format_and_parse_back() {
        let mut c = school();
        c.endpoint.tls = Some(Tls {
            mode: SslMode::VerifyFull,
            ca_pem: Some("-----BEGIN CERTIFICATE-----\nx\n-----END CERTIFICATE-----\n".into()),
        });
        let data = c.data();
        assert_eq!(data["sslmode"], "verify-full");
        assert!(data["ca.crt"].starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(data["uri"].ends_with("/edumind_school_lhs_x?sslmode=verify-full"));
        assert!(data["jdbc-uri"].ends_with("&sslmode=verify-full"));
        assert!(
            data["School-0b8f3a5e-0000-4000-8000-000000000001-ConnectionString"]
                .ends_with(";SSL Mode=VerifyFull")
        );
        let secret = c.to_secret("n", "ns", None);
        assert_eq!(ConnectionSecret::from_secret(&secret), Ok(c.clone()));
        // Without TLS settings nothing changes: no new keys, no query string.
        let plain = school().data();
        assert!(!plain.contains_key("sslmode") && !plain.contains_key("ca.crt"));
        assert!(!plain["uri"].contains('?'));
        // A mode the platform does not support is refused by name.
        let mut bad = secret.clone();
        bad.data
            .as_mut()
            .unwrap()
            .insert("sslmode".into(), ByteString(b"prefer".to_vec()));
        assert_eq!(
            ConnectionSecret::from_secret(&bad),
            Err(ParseError::BadSslMode)
        );
        for mode in [
            SslMode::Disable,
            SslMode::Require,
            SslMode::VerifyCa,
            SslMode::VerifyFull,
        ] {
            assert_eq!(SslMode::parse(mode.as_str()), Some(mode));
        }
    }

    #[test]
    fn build_then_parse_is_the_identity() {
        for c in [
            school(),
            ConnectionSecret {
                tenant: TenantRef::SelfService,
                ..school()
            },
        ] {
            let secret = c.to_secret("n", "ns", None);
            assert_eq!(secret.type_.as_deref(), Some(SECRET_TYPE));
            assert_eq!(ConnectionSecret::from_secret(&secret), Ok(c.clone()));
            let yaml = secret_to_yaml(&secret).unwrap();
            assert!(yaml.contains("kind: Secret") && yaml.contains("apiVersion: v1"));
            let back = secret_from_yaml(&yaml).unwrap();
            assert_eq!(ConnectionSecret::from_secret(&back), Ok(c));
        }
    }

    #[test]
    fn every_contract_key_is_present() {
        let c = school();
        let data = c.data();
        for key in [
            "username",
            "user",
            "password",
            "host",
            "port",
            "dbname",
            "uri",
            "jdbc-uri",
            "pgpass",
            "School-0b8f3a5e-0000-4000-8000-000000000001-ConnectionString",
        ] {
            assert!(data.contains_key(key), "{key}");
        }
        assert_eq!(
            data["uri"],
            "postgresql://edumind_school_lhs_x:s3cr3tPassw0rd@pg.example:5433/edumind_school_lhs_x"
        );
        let ss = ConnectionSecret {
            tenant: TenantRef::SelfService,
            ..school()
        };
        assert!(ss.data().contains_key(SELF_SERVICE_DOTNET_KEY));
        assert_eq!(ss.labels()[LABEL_TENANT], SELF_SERVICE);
        assert!(!ss.labels().contains_key(LABEL_SCHOOL_ID));
    }

    #[test]
    fn string_data_wins_and_user_stands_in_for_username() {
        let mut secret = school().to_secret("n", "ns", None);
        let data = secret.data.as_mut().unwrap();
        data.remove("username");
        secret.string_data = Some(BTreeMap::from([("port".into(), "6000".into())]));
        let parsed = ConnectionSecret::from_secret(&secret).unwrap();
        assert_eq!(parsed.endpoint.port, 6000);
        assert_eq!(parsed.endpoint.username, "edumind_school_lhs_x");
    }

    #[test]
    fn errors_name_the_fault_never_a_value() {
        let mut secret = school().to_secret("n", "ns", None);
        secret.data.as_mut().unwrap().remove("password");
        let err = ConnectionSecret::from_secret(&secret).unwrap_err();
        assert_eq!(err, ParseError::MissingKey("password"));
        let mut secret = school().to_secret("n", "ns", None);
        secret
            .metadata
            .labels
            .as_mut()
            .unwrap()
            .insert(LABEL_SCHOOL_ID.into(), "s3cr3tPassw0rd".into());
        let err = ConnectionSecret::from_secret(&secret).unwrap_err();
        assert!(!err.to_string().contains("s3cr3t"), "{err}");
        let mut secret = school().to_secret("n", "ns", None);
        secret.metadata.labels = None;
        assert_eq!(
            ConnectionSecret::from_secret(&secret),
            Err(ParseError::NotManaged)
        );
        assert_eq!(
            secret_from_yaml("{ this is: [not yaml").unwrap_err(),
            ParseError::NotASecret
        );
        assert_eq!(
            secret_from_yaml("kind: ConfigMap\n").unwrap_err(),
            ParseError::NotASecret
        );
        assert!(!format!("{:?}", school()).contains("s3cr3t"));
    }

    #[test]
    fn a_value_that_is_not_base64_is_named_never_shown() {
        let yaml = "kind: Secret\ndata:\n  host: aG9zdA==\n  password: s3cr3t$\n";
        let err = secret_from_yaml(yaml).unwrap_err();
        assert_eq!(err, ParseError::NotBase64("password".into()));
        assert_eq!(err.to_string(), "data.password is not base64");
        let good = secret_from_yaml(&yaml.replace("s3cr3t$", "czNjcjN0")).unwrap();
        assert_eq!(secret_keys(&good).unwrap()["password"], "s3cr3t");
    }

    #[test]
    fn manifests_without_api_version_are_read() {
        let s = secret_from_yaml("kind: Secret\nstringData:\n  host: h\n").unwrap();
        assert_eq!(secret_keys(&s).unwrap()["host"], "h");
        let s = secret_from_yaml("stringData:\n  host: h\n").unwrap();
        assert_eq!(secret_keys(&s).unwrap()["host"], "h");
    }
}
