//! Layered configuration: built-in defaults, then an optional TOML file, then environment
//! variables `EDUMIND_DP__SECTION__KEY` (double underscore separates levels). Environment
//! values are read as TOML scalars when they parse as one (`8080`, `true`), otherwise as
//! strings; quote a value (`'"123"'`) to force a string.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::secret::Secret;

/// The prefix of every environment variable that configures the service.
pub const ENV_PREFIX: &str = "EDUMIND_DP__";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// Address to listen on; port 0 picks a free port (tests).
    pub listen: SocketAddr,
    /// The admin listener: `/metrics` and the detailed `/readyz` (per PostgreSQL server,
    /// Redis). Not for applications: the chart's Service does not expose it. The CLI's
    /// `--admin-addr` overrides it.
    pub admin_listen: SocketAddr,
    /// Where tenants come from: `directory` (Secret-shaped files in `tenants_dir`) or
    /// `kubernetes` (the labelled Secrets in `[kubernetes] namespaces`, in-cluster).
    pub tenant_source: TenantSourceKind,
    /// Directory of Secret-shaped YAML files, one per tenant.
    pub tenants_dir: PathBuf,
    /// How often the tenant source is re-read (directory) or re-listed (Kubernetes), in ms.
    pub tenant_poll_ms: u64,
    /// Largest accepted request body, in bytes.
    pub max_body_bytes: u64,
    /// Seconds after a shutdown signal during which `/readyz` answers 503 while every
    /// request is still served, so load balancers stop sending traffic before the listener
    /// closes (rolling updates drop nothing).
    pub shutdown_drain_secs: u64,
    /// Seconds in-flight requests get to finish once the listener is closed.
    pub shutdown_grace_secs: u64,
    pub redis: RedisSettings,
    pub pool: PoolSettings,
    pub auth: AuthSettings,
    pub kubernetes: KubernetesSettings,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TenantSourceKind {
    Directory,
    Kubernetes,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KubernetesSettings {
    /// Namespaces whose connection Secrets are tenants (the operator's namespaces, and the
    /// self-service Secret's). Required when `tenant_source = "kubernetes"`, unless
    /// `all_namespaces` is set.
    pub namespaces: Vec<String>,
    /// List the Secrets in every namespace (cluster-wide `list`), for an operator that
    /// watches every namespace. Exclusive with `namespaces`.
    pub all_namespaces: bool,
    /// Which Secrets to list.
    pub label_selector: String,
}

impl Default for KubernetesSettings {
    fn default() -> Self {
        KubernetesSettings {
            namespaces: Vec::new(),
            all_namespaces: false,
            label_selector: crate::kube_source::DEFAULT_SELECTOR.into(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisSettings {
    /// `standalone` (one server or a managed endpoint) or `cluster` (Redis Cluster).
    pub mode: RedisMode,
    /// `redis://[user:password@]host:port[/db]`, or `rediss://…` for TLS; in cluster mode a
    /// comma-separated list of seed nodes. A secret because it may carry a password.
    pub url: Secret,
    /// ACL user name; replaces one given in the URL.
    pub username: Option<String>,
    /// ACL password (or the `requirepass` password); replaces one given in the URL.
    pub password: Option<Secret>,
    /// PEM CA bundle that verifies the servers' certificates (`rediss://` only); without
    /// it the system's roots are used. The server name (or IP) in the URL must match the
    /// certificate.
    pub ca_file: Option<PathBuf>,
    /// Longest wait for one Redis command before the cache is treated as down.
    pub timeout_ms: u64,
    /// Consecutive failed commands that open the circuit breaker: no command is sent
    /// to Redis until a background probe gets an answer again.
    pub breaker_failures: u32,
    /// How often the background probe pings Redis while the breaker is open, in ms.
    pub probe_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RedisMode {
    #[default]
    Standalone,
    Cluster,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PoolSettings {
    /// Connections the data plane may hold open on one PostgreSQL server, all tenants together.
    pub server_budget: usize,
    /// Connections one tenant may hold at once (fairness between tenants).
    pub per_tenant_max: usize,
    /// Longest wait for a connection before answering 503 with `Retry-After`.
    pub acquire_timeout_ms: u64,
    /// An idle connection older than this is closed.
    pub idle_timeout_secs: u64,
    /// Most tenant entries kept in the pool cache.
    pub max_cached_tenants: usize,
    /// Longest wait for PostgreSQL to accept a new connection.
    pub connect_timeout_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthSettings {
    /// Required `iss` claim.
    pub issuer: String,
    /// Required `aud` claim.
    pub audience: String,
    /// HS256 shared secret; HS256 tokens are refused when absent.
    pub hs256_secret: Option<Secret>,
    /// JWKS file with the RS256/ES256 public keys (production: the OIDC provider's keys).
    pub jwks_file: Option<PathBuf>,
    /// Clock skew allowed on `exp`/`nbf`, in seconds.
    pub leeway_secs: u64,
    /// How often the JWKS file is re-read (a changed file replaces the keys without a
    /// restart), in milliseconds.
    pub jwks_reload_ms: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 9090)),
            tenant_source: TenantSourceKind::Directory,
            tenants_dir: PathBuf::from("/etc/edumind/tenants"),
            tenant_poll_ms: 2000,
            max_body_bytes: 64 * 1024,
            shutdown_drain_secs: 5,
            shutdown_grace_secs: 20,
            redis: RedisSettings::default(),
            pool: PoolSettings::default(),
            auth: AuthSettings::default(),
            kubernetes: KubernetesSettings::default(),
        }
    }
}

impl Default for RedisSettings {
    fn default() -> Self {
        RedisSettings {
            mode: RedisMode::Standalone,
            url: Secret::new("redis://127.0.0.1:6379"),
            username: None,
            password: None,
            ca_file: None,
            timeout_ms: 250,
            breaker_failures: 3,
            probe_ms: 500,
        }
    }
}

impl Default for PoolSettings {
    fn default() -> Self {
        PoolSettings {
            server_budget: 50,
            per_tenant_max: 5,
            acquire_timeout_ms: 2000,
            idle_timeout_secs: 60,
            max_cached_tenants: 10_000,
            connect_timeout_ms: 5000,
        }
    }
}

impl Default for AuthSettings {
    fn default() -> Self {
        AuthSettings {
            issuer: "https://auth.edumind.ai".into(),
            audience: "edumind-dataplane".into(),
            hs256_secret: None,
            jwks_file: None,
            leeway_secs: 30,
            jwks_reload_ms: 30_000,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read configuration file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("configuration file {path} is not valid TOML: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

impl Settings {
    /// Defaults, overlaid by `file` (when given), overlaid by the `EDUMIND_DP__*` variables in `env`.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Settings, ConfigError> {
        let mut root = toml::Table::new();
        if let Some(path) = file {
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.to_owned(),
                source,
            })?;
            // The parser's message may quote the offending line, which could hold a secret:
            // report only where the error is.
            root = text
                .parse::<toml::Table>()
                .map_err(|e| ConfigError::Parse {
                    path: path.to_owned(),
                    message: match e.span() {
                        Some(span) => format!("syntax error at byte {}", span.start),
                        None => "syntax error".into(),
                    },
                })?;
        }
        for (name, value) in env {
            let Some(rest) = name.strip_prefix(ENV_PREFIX) else {
                continue;
            };
            let path: Vec<String> = rest.split("__").map(|p| p.to_ascii_lowercase()).collect();
            insert_path(&mut root, &path, env_value(&value))?;
        }
        let settings: Settings = toml::Value::Table(root)
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::Invalid(e.message().to_owned()))?;
        settings.validate()?;
        Ok(settings)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if self.tenant_source == TenantSourceKind::Kubernetes
            && self.kubernetes.namespaces.is_empty() != self.kubernetes.all_namespaces
        {
            return Err(ConfigError::Invalid(
                "tenant_source = \"kubernetes\" needs either kubernetes.namespaces or \
                 kubernetes.all_namespaces = true"
                    .into(),
            ));
        }
        if self.pool.server_budget == 0 || self.pool.per_tenant_max == 0 {
            return Err(ConfigError::Invalid(
                "pool budgets must be at least 1".into(),
            ));
        }
        if self.auth.hs256_secret.is_none() && self.auth.jwks_file.is_none() {
            return Err(ConfigError::Invalid(
                "auth needs hs256_secret or jwks_file, or no token could ever be accepted".into(),
            ));
        }
        if let Some(s) = &self.auth.hs256_secret
            && s.expose().len() < 32
        {
            return Err(ConfigError::Invalid(
                "auth.hs256_secret must be at least 32 bytes".into(),
            ));
        }
        Ok(())
    }
}

fn env_value(raw: &str) -> toml::Value {
    match format!("v = {raw}").parse::<toml::Table>() {
        Ok(mut t) => t
            .remove("v")
            .unwrap_or_else(|| toml::Value::String(raw.to_owned())),
        Err(_) => toml::Value::String(raw.to_owned()),
    }
}

fn insert_path(
    table: &mut toml::Table,
    path: &[String],
    value: toml::Value,
) -> Result<(), ConfigError> {
    match path {
        [] => Err(ConfigError::Invalid("empty environment key".into())),
        [last] => {
            table.insert(last.clone(), value);
            Ok(())
        }
        [first, rest @ ..] => {
            let entry = table
                .entry(first.clone())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            match entry {
                toml::Value::Table(t) => insert_path(t, rest, value),
                _ => Err(ConfigError::Invalid(format!("{first} is not a section"))),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn env_overrides_file_overrides_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("dp.toml");
        std::fs::write(
            &file,
            "tenant_poll_ms = 500\n[pool]\nserver_budget = 7\nper_tenant_max = 3\n[auth]\nhs256_secret = \"0123456789abcdef0123456789abcdef\"\n",
        )
        .unwrap();
        let s = Settings::load(
            Some(&file),
            env(&[("EDUMIND_DP__POOL__SERVER_BUDGET", "9"), ("UNRELATED", "x")]),
        )
        .unwrap();
        assert_eq!(s.tenant_poll_ms, 500); // file
        assert_eq!(s.pool.server_budget, 9); // env beats file
        assert_eq!(s.pool.per_tenant_max, 3); // file
        assert_eq!(s.pool.idle_timeout_secs, 60); // default
        assert!(
            !format!("{s:?}").contains("0123456789abcdef"),
            "Debug must redact secrets"
        );
    }

    #[test]
    fn rejects_unknown_keys_and_missing_auth() {
        let err = Settings::load(None, env(&[("EDUMIND_DP__POOL__BUDGETT", "3")])).unwrap_err();
        assert!(err.to_string().contains("budgett"), "{err}");
        let err = Settings::load(None, Vec::new()).unwrap_err();
        assert!(err.to_string().contains("hs256_secret"), "{err}");
    }

    #[test]
    fn kubernetes_source_needs_namespaces() {
        let secret = (
            "EDUMIND_DP__AUTH__HS256_SECRET",
            "0123456789abcdef0123456789abcdef",
        );
        let err = Settings::load(
            None,
            env(&[secret, ("EDUMIND_DP__TENANT_SOURCE", "kubernetes")]),
        )
        .unwrap_err();
        assert!(err.to_string().contains("namespaces"), "{err}");
        let s = Settings::load(
            None,
            env(&[
                secret,
                ("EDUMIND_DP__TENANT_SOURCE", "kubernetes"),
                (
                    "EDUMIND_DP__KUBERNETES__NAMESPACES",
                    r#"["schools", "edumind-system"]"#,
                ),
            ]),
        )
        .unwrap();
        assert_eq!(s.tenant_source, TenantSourceKind::Kubernetes);
        assert_eq!(s.kubernetes.namespaces, ["schools", "edumind-system"]);
        assert!(!s.kubernetes.all_namespaces);
        let all = |extra: &[(&'static str, &'static str)]| {
            let mut vars = vec![
                secret,
                ("EDUMIND_DP__TENANT_SOURCE", "kubernetes"),
                ("EDUMIND_DP__KUBERNETES__ALL_NAMESPACES", "true"),
            ];
            vars.extend_from_slice(extra);
            Settings::load(None, env(&vars))
        };
        assert!(all(&[]).unwrap().kubernetes.all_namespaces);
        let err = all(&[("EDUMIND_DP__KUBERNETES__NAMESPACES", r#"["schools"]"#)]).unwrap_err();
        assert!(err.to_string().contains("either"), "{err}");
        assert_eq!(
            s.kubernetes.label_selector,
            "app.kubernetes.io/managed-by=edumind-operator"
        );
    }
}
