//! The school's connection details, read from its connection Secret: a Secret-shaped YAML
//! file (`kubectl get secret -o yaml`, or what the operator's local mode writes) or a
//! directory with one file per key (a Secret mounted as a volume).

use std::collections::BTreeMap;
use std::path::Path;

use edumind_crds::connection::{self, Endpoint, LABEL_SCHOOL_ID, ParseError, Tls};

use super::BackupError;

/// Where and as whom to connect. `Debug` never shows the password.
#[derive(Clone)]
pub struct ConnectionInfo {
    pub host: String,
    pub port: u16,
    pub dbname: String,
    pub username: String,
    password: String,
    /// The `edumind.ai/school-id` label, when the source carried labels.
    pub school_id: Option<String>,
    /// `sslmode` and `ca.crt`, when the server configures TLS.
    pub tls: Option<Tls>,
}

impl std::fmt::Debug for ConnectionInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectionInfo")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("dbname", &self.dbname)
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .field("school_id", &self.school_id)
            .field("sslmode", &self.tls.as_ref().map(|t| t.mode.as_str()))
            .finish()
    }
}

impl ConnectionInfo {
    pub fn new(host: &str, port: u16, dbname: &str, username: &str, password: &str) -> Self {
        Self {
            host: host.into(),
            port,
            dbname: dbname.into(),
            username: username.into(),
            password: password.into(),
            school_id: None,
            tls: None,
        }
    }

    pub(crate) fn password(&self) -> &str {
        &self.password
    }

    /// sqlx connection options for the same connection (statement logging off, TLS
    /// settings applied).
    pub fn connect_options(&self) -> sqlx::postgres::PgConnectOptions {
        use sqlx::ConnectOptions;
        let options = sqlx::postgres::PgConnectOptions::new()
            .host(&self.host)
            .port(self.port)
            .username(&self.username)
            .password(&self.password)
            .database(&self.dbname)
            .application_name("edumind-backup")
            .disable_statement_logging();
        match &self.tls {
            Some(tls) => tls.apply(options),
            None => options,
        }
    }

    /// Reads a Secret-shaped YAML file, or a directory of key files.
    pub fn load(path: &Path) -> Result<Self, BackupError> {
        let invalid = |why: String| BackupError::Connection(format!("{}: {why}", path.display()));
        if path.is_dir() {
            let mut keys = BTreeMap::new();
            for entry in std::fs::read_dir(path).map_err(|e| invalid(e.to_string()))? {
                let entry = entry.map_err(|e| invalid(e.to_string()))?;
                let name = entry.file_name().to_string_lossy().into_owned();
                // Mounted Secrets contain `..data` symlink bookkeeping; keys are plain names.
                if name.starts_with('.') || !entry.path().is_file() {
                    continue;
                }
                let value = std::fs::read_to_string(entry.path())
                    .map_err(|e| invalid(format!("key {name}: {e}")))?;
                keys.insert(name, value.trim_end_matches('\n').to_string());
            }
            return Self::from_keys(&keys, None).map_err(|e| invalid(e.to_string()));
        }
        let text = std::fs::read_to_string(path).map_err(|e| invalid(e.to_string()))?;
        Self::from_secret_yaml(&text).map_err(invalid)
    }

    /// Parses a Secret manifest through the contract (`edumind_crds::connection`);
    /// `stringData` wins over `data`, as in the API server. Errors never echo a value.
    pub fn from_secret_yaml(text: &str) -> Result<Self, String> {
        let parse = || -> Result<Self, ParseError> {
            let secret = connection::secret_from_yaml(text)?;
            let school_id = secret
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(LABEL_SCHOOL_ID))
                .cloned();
            Self::from_keys(&connection::secret_keys(&secret)?, school_id)
        };
        parse().map_err(|e| e.to_string())
    }

    fn from_keys(
        keys: &BTreeMap<String, String>,
        school_id: Option<String>,
    ) -> Result<Self, ParseError> {
        let endpoint = Endpoint::from_keys(keys)?;
        Ok(Self {
            host: endpoint.host,
            port: endpoint.port,
            dbname: endpoint.dbname,
            username: endpoint.username,
            password: endpoint.password.expose().to_string(),
            school_id,
            tls: endpoint.tls,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = r#"
apiVersion: v1
kind: Secret
metadata:
  name: school-a-db
  labels:
    edumind.ai/school-id: 0b8f3a5e-0000-4000-8000-000000000001
type: kubernetes.io/basic-auth
data:
  username: c2Nob29sX2E=
  password: czNjcjN0
  host: MTI3LjAuMC4x
stringData:
  port: "5432"
  dbname: edumind_school_a
"#;

    #[test]
    fn reads_data_and_string_data() {
        let c = ConnectionInfo::from_secret_yaml(SECRET).unwrap();
        assert_eq!(c.username, "school_a");
        assert_eq!(c.password(), "s3cr3t");
        assert_eq!(c.host, "127.0.0.1");
        assert_eq!(c.port, 5432);
        assert_eq!(c.dbname, "edumind_school_a");
        assert_eq!(
            c.school_id.as_deref(),
            Some("0b8f3a5e-0000-4000-8000-000000000001")
        );
    }

    #[test]
    fn debug_and_errors_never_show_the_password() {
        let c = ConnectionInfo::from_secret_yaml(SECRET).unwrap();
        assert!(!format!("{c:?}").contains("s3cr3t"));
        let err =
            ConnectionInfo::from_secret_yaml(&SECRET.replace("czNjcjN0", "abc$")).unwrap_err();
        assert!(err.contains("data.password is not base64"), "{err}");
        let err = ConnectionInfo::from_secret_yaml("{ this is: [not yaml").unwrap_err();
        assert_eq!(err, "not a Secret manifest");
        assert!(!err.contains("s3cr3t"));
    }

    #[test]
    fn missing_keys_are_named() {
        let err =
            ConnectionInfo::from_secret_yaml("kind: Secret\nstringData:\n  host: h\n").unwrap_err();
        assert!(err.contains("`port`"), "{err}");
    }
}
