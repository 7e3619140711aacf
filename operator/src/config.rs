//! Target servers: the PostgreSQL servers the platform team lets the operator use.
//!
//! Read from a YAML file (normally a ConfigMap mounted into the operator pod):
//!
//! ```yaml
//! servers:
//!   - name: main                # what School.spec.targetServer refers to
//!     host: pg-main.databases.svc
//!     port: 5432                # default 5432
//!     adminSecret: pg-main-admin  # Secret in the operator's namespace, keys username + password
//!     default: true             # the server of Schools without targetServer (exactly one)
//!     clientHost: pg-main.databases.svc.cluster.local  # optional: host written to Secrets
//!     clientPort: 5432          # optional: port written to Secrets
//!     sslMode: verify-full      # optional: disable | require | verify-ca | verify-full
//!     ca:                       # optional: CA bundle (PEM) that verifies the server
//!       secret: pg-main-ca      # a Secret in the operator's namespace
//!       key: ca.crt             # default ca.crt
//! ```
//!
//! TLS: `sslMode` defaults to `verify-full` when a CA is given; with neither, connections
//! use libpq's default (`prefer`) and connection Secrets carry no `sslmode`. The mode and
//! CA apply to the operator's admin connections, its login tests, and reach the data
//! plane and backup/restore Jobs through the connection Secret (`sslmode`, `ca.crt`).
//!
//! A School can only name a server from this list; admin credentials only ever come from
//! Secrets in the operator's own namespace.

use edumind_crds::connection::SslMode;
use serde::Deserialize;

/// Where a target server's CA bundle is: a key of a Secret in the operator's namespace.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CaRef {
    pub secret: String,
    #[serde(default = "default_ca_key")]
    pub key: String,
}

fn default_ca_key() -> String {
    "ca.crt".into()
}

/// One PostgreSQL server the operator may create school databases on.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TargetServer {
    pub name: String,
    pub host: String,
    #[serde(default = "default_port")]
    pub port: u16,
    /// Secret (type basic-auth: keys `username`, `password`) in the operator namespace.
    pub admin_secret: String,
    #[serde(default)]
    pub default: bool,
    /// Host applications should connect to, when it differs from the operator's view.
    #[serde(default)]
    pub client_host: Option<String>,
    #[serde(default)]
    pub client_port: Option<u16>,
    /// Maintenance database the operator connects to for admin work.
    #[serde(default = "default_maintenance_db")]
    pub maintenance_database: String,
    /// TLS mode; see the module documentation for the default.
    #[serde(default)]
    pub ssl_mode: Option<SslMode>,
    /// CA bundle that verifies the server.
    #[serde(default)]
    pub ca: Option<CaRef>,
}

fn default_port() -> u16 {
    5432
}

fn default_maintenance_db() -> String {
    "postgres".into()
}

impl TargetServer {
    pub fn client_host(&self) -> &str {
        self.client_host.as_deref().unwrap_or(&self.host)
    }
    pub fn client_port(&self) -> u16 {
        self.client_port.unwrap_or(self.port)
    }
    /// The TLS mode in force: `sslMode`, else `verify-full` when a CA is given, else
    /// `None` (no TLS settings).
    pub fn effective_ssl_mode(&self) -> Option<SslMode> {
        self.ssl_mode
            .or_else(|| self.ca.as_ref().map(|_| SslMode::VerifyFull))
    }
}

/// The validated list of target servers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetServers {
    servers: Vec<TargetServer>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    servers: Vec<TargetServer>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("cannot parse the target server configuration: {0}")]
    Parse(String),
    #[error("no target servers configured")]
    Empty,
    #[error("target server {0:?} is configured twice")]
    Duplicate(String),
    #[error("exactly one target server must be `default: true` (found {0})")]
    Default(usize),
    #[error("target server {0:?} has a CA but `sslMode: disable`")]
    CaWithoutTls(String),
}

impl TargetServers {
    pub fn new(servers: Vec<TargetServer>) -> Result<Self, ConfigError> {
        if servers.is_empty() {
            return Err(ConfigError::Empty);
        }
        let mut names = std::collections::HashSet::new();
        for s in &servers {
            if !names.insert(s.name.as_str()) {
                return Err(ConfigError::Duplicate(s.name.clone()));
            }
            if s.ca.is_some() && s.ssl_mode == Some(SslMode::Disable) {
                return Err(ConfigError::CaWithoutTls(s.name.clone()));
            }
        }
        let defaults = servers.iter().filter(|s| s.default).count();
        // A single server is the default whether or not it says so.
        if !(defaults == 1 || (servers.len() == 1 && defaults == 0)) {
            return Err(ConfigError::Default(defaults));
        }
        Ok(Self { servers })
    }

    pub fn from_yaml(text: &str) -> Result<Self, ConfigError> {
        let file: File =
            serde_yaml_ng::from_str(text).map_err(|e| ConfigError::Parse(e.to_string()))?;
        Self::new(file.servers)
    }

    /// The server a School asks for (`None`: the default one).
    pub fn resolve(&self, requested: Option<&str>) -> Option<&TargetServer> {
        match requested {
            Some(name) => self.servers.iter().find(|s| s.name == name),
            None => self
                .servers
                .iter()
                .find(|s| s.default)
                .or_else(|| self.servers.first().filter(|_| self.servers.len() == 1)),
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = &TargetServer> {
        self.servers.iter()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn parses_and_resolves() {
        let s = TargetServers::from_yaml(
            "servers:\n- {name: main, host: a, adminSecret: s1, default: true}\n- {name: b, host: b, port: 6432, adminSecret: s2, clientHost: pub}\n",
        )
        .unwrap();
        assert_eq!(s.resolve(None).unwrap().name, "main");
        let b = s.resolve(Some("b")).unwrap();
        assert_eq!(
            (b.port, b.client_host(), b.client_port()),
            (6432, "pub", 6432)
        );
        assert!(s.resolve(Some("nope")).is_none());
        assert_eq!(b.effective_ssl_mode(), None);
    }

    #[test]
    fn tls_settings_default_to_verify_full_with_a_ca() {
        let s = TargetServers::from_yaml(
            "servers:\n- {name: a, host: a, adminSecret: s, default: true, ca: {secret: ca}}\n- {name: b, host: b, adminSecret: s, sslMode: require}\n",
        )
        .unwrap();
        let a = s.resolve(Some("a")).unwrap();
        assert_eq!(a.effective_ssl_mode(), Some(SslMode::VerifyFull));
        assert_eq!(a.ca.as_ref().unwrap().key, "ca.crt");
        assert_eq!(
            s.resolve(Some("b")).unwrap().effective_ssl_mode(),
            Some(SslMode::Require)
        );
        assert_eq!(
            TargetServers::from_yaml(
                "servers: [{name: a, host: h, adminSecret: s, sslMode: disable, ca: {secret: c}}]"
            ),
            Err(ConfigError::CaWithoutTls("a".into()))
        );
        assert!(matches!(
            TargetServers::from_yaml(
                "servers: [{name: a, host: h, adminSecret: s, sslMode: prefer}]"
            ),
            Err(ConfigError::Parse(_))
        ));
    }

    #[test]
    fn rejects_ambiguous_configs() {
        let two = |d1: bool, d2: bool| {
            TargetServers::new(vec![
                TargetServer {
                    name: "a".into(),
                    host: "h".into(),
                    port: 1,
                    admin_secret: "s".into(),
                    default: d1,
                    client_host: None,
                    client_port: None,
                    maintenance_database: "postgres".into(),
                    ssl_mode: None,
                    ca: None,
                },
                TargetServer {
                    name: "b".into(),
                    host: "h".into(),
                    port: 1,
                    admin_secret: "s".into(),
                    default: d2,
                    client_host: None,
                    client_port: None,
                    maintenance_database: "postgres".into(),
                    ssl_mode: None,
                    ca: None,
                },
            ])
        };
        assert_eq!(two(true, true), Err(ConfigError::Default(2)));
        assert_eq!(two(false, false), Err(ConfigError::Default(0)));
        assert!(two(true, false).is_ok());
        assert_eq!(TargetServers::new(vec![]), Err(ConfigError::Empty));
        assert!(matches!(
            TargetServers::from_yaml("servers: [{name: a, host: h, adminSecret: s, password: x}]"),
            Err(ConfigError::Parse(_))
        ));
    }
}
