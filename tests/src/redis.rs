//! Throwaway Redis servers: one shared per test process, or private ones a test may
//! stop and restart (to prove the data plane survives Redis going away).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::supervisor::{self, Supervised};
use crate::{HarnessError, binaries, free_port};

/// A Redis server on 127.0.0.1. Dropping an owned one stops it and removes its directory.
pub struct RedisServer {
    pub host: String,
    pub port: u16,
    /// How long the last start took (zero for an external server).
    pub startup: Duration,
    config: RedisConfig,
    supervised: Option<Supervised>,
}

/// How a private server is configured beyond the defaults (no persistence, loopback only).
#[derive(Clone, Debug, Default)]
pub struct RedisConfig {
    /// Serve TLS only (the port takes no plain connections), with these files.
    pub tls: Option<TlsFiles>,
    /// Extra `redis.conf` lines: ACL users, cluster settings.
    pub conf: Vec<String>,
    /// The ACL user and password the harness itself logs in with (readiness checks,
    /// [`RedisServer::cli`]); `None` for the default user without a password.
    pub admin: Option<(String, String)>,
    /// Stop with SIGKILL (a crash) instead of SIGTERM.
    pub kill: bool,
}

/// A server certificate, its key, and the CA that signed it (PEM files).
#[derive(Clone, Debug)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
}

impl TlsFiles {
    pub fn from_ca(ca: &crate::certs::TestCa) -> Self {
        TlsFiles {
            cert: ca.server_cert(),
            key: ca.server_key(),
            ca: ca.ca_cert(),
        }
    }
}

impl std::fmt::Debug for RedisServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisServer")
            .field("host", &self.host)
            .field("port", &self.port)
            .finish()
    }
}

static SHARED: OnceLock<Result<RedisServer, String>> = OnceLock::new();

/// The process-wide Redis server, started on first use. Blocks while starting.
pub fn redis_blocking() -> &'static RedisServer {
    let result = SHARED.get_or_init(|| match std::env::var("EDUMIND_TEST_REDIS_URL") {
        Ok(url) => RedisServer::from_url(&url).map_err(|e| e.to_string()),
        Err(_) => RedisServer::start()
            .map(|mut server| {
                if let Some(supervised) = server.supervised.take() {
                    supervisor::register_at_exit(supervised);
                }
                server
            })
            .map_err(|e| e.to_string()),
    });
    match result {
        Ok(server) => server,
        Err(e) => panic!("test Redis unavailable: {e}"),
    }
}

/// The process-wide Redis server, started on first use without blocking the runtime.
pub async fn redis() -> &'static RedisServer {
    match tokio::task::spawn_blocking(redis_blocking).await {
        Ok(server) => server,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

impl RedisServer {
    fn from_url(url: &str) -> Result<Self, HarnessError> {
        let parsed = url::Url::parse(url)
            .map_err(|e| HarnessError(format!("EDUMIND_TEST_REDIS_URL is not a URL: {e}")))?;
        Ok(Self {
            host: parsed.host_str().unwrap_or("127.0.0.1").to_string(),
            port: parsed.port().unwrap_or(6379),
            startup: Duration::ZERO,
            config: RedisConfig::default(),
            supervised: None,
        })
    }

    /// Starts a private Redis on a free port; it lives until dropped.
    pub fn start() -> Result<Self, HarnessError> {
        Self::start_with(RedisConfig::default())
    }

    /// Starts a private Redis configured by `config` on a free port.
    pub fn start_with(config: RedisConfig) -> Result<Self, HarnessError> {
        let mut last_error = None;
        for _attempt in 0..3 {
            let port = free_port()?;
            let mut server = RedisServer {
                host: "127.0.0.1".into(),
                port,
                startup: Duration::ZERO,
                config: config.clone(),
                supervised: None,
            };
            match server.spawn() {
                Ok(()) => return Ok(server),
                Err(e) => last_error = Some(e),
            }
        }
        Err(last_error.unwrap_or_else(|| HarnessError("Redis did not start".into())))
    }

    /// `redis://host:port`, or `rediss://…` for a TLS server (no credentials).
    pub fn url(&self) -> String {
        let scheme = if self.config.tls.is_some() {
            "rediss"
        } else {
            "redis"
        };
        format!("{scheme}://{}:{}", self.host, self.port)
    }

    /// Runs `redis-cli` against this server (over TLS, as the admin user, when so
    /// configured) and returns its standard output, trimmed.
    pub fn cli(&self, args: &[&str]) -> Result<String, HarnessError> {
        let mut cmd = Command::new(binaries::redis_cli()?);
        cmd.arg("-h")
            .arg(&self.host)
            .arg("-p")
            .arg(self.port.to_string());
        if let Some(tls) = &self.config.tls {
            cmd.arg("--tls").arg("--cacert").arg(&tls.ca);
        }
        if let Some((user, password)) = &self.config.admin {
            cmd.arg("--user").arg(user).env("REDISCLI_AUTH", password);
        }
        let out = cmd
            .args(args)
            .output()
            .map_err(|e| HarnessError(format!("cannot run redis-cli: {e}")))?;
        if !out.status.success() {
            return Err(HarnessError(format!(
                "redis-cli {args:?} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    /// Stops a private server (its data is gone); [`RedisServer::restart`] brings it back
    /// empty on the same port.
    pub fn stop(&mut self) {
        if let Some(mut supervised) = self.supervised.take() {
            supervised.stop();
        }
    }

    /// Starts a stopped private server again on the same port.
    pub fn restart(&mut self) -> Result<(), HarnessError> {
        self.stop();
        self.spawn()
    }

    /// Whether the server answers PING right now.
    pub fn is_up(&self) -> bool {
        if self.config.tls.is_some() || self.config.admin.is_some() {
            return self.cli(&["PING"]).is_ok_and(|r| r == "PONG");
        }
        ping(&self.host, self.port)
    }

    fn spawn(&mut self) -> Result<(), HarnessError> {
        let started = Instant::now();
        let binary = binaries::redis_server()?;
        let dir: PathBuf = supervisor::server_dir("edumind-redis-", None)?;
        let mut conf = vec![
            "bind 127.0.0.1".to_owned(),
            "save \"\"".to_owned(),
            "appendonly no".to_owned(),
            "daemonize no".to_owned(),
            "protected-mode no".to_owned(),
            "loglevel warning".to_owned(),
        ];
        match &self.config.tls {
            None => conf.push(format!("port {}", self.port)),
            Some(tls) => conf.extend([
                "port 0".to_owned(),
                format!("tls-port {}", self.port),
                format!("tls-cert-file {}", tls.cert.display()),
                format!("tls-key-file {}", tls.key.display()),
                format!("tls-ca-cert-file {}", tls.ca.display()),
                "tls-auth-clients no".to_owned(),
                "tls-replication yes".to_owned(),
                "tls-cluster yes".to_owned(),
            ]),
        }
        conf.extend(self.config.conf.iter().cloned());
        std::fs::write(dir.join("redis.conf"), conf.join("\n") + "\n")?;
        let cmd = format!(
            "'{binary}' \"$DIR/redis.conf\" --dir \"$DIR\"",
            binary = binary.display(),
        );
        let signal = if self.config.kill { "KILL" } else { "TERM" };
        let mut supervised = Supervised::spawn(&dir, &cmd, signal, None)?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.is_up() {
            if !supervised.is_running() || Instant::now() > deadline {
                let log = supervised.log();
                supervised.stop();
                return Err(HarnessError(format!("Redis did not start: {log}")));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        self.startup = started.elapsed();
        self.supervised = Some(supervised);
        Ok(())
    }
}

fn ping(host: &str, port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect((host, port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    if stream.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 7];
    matches!(stream.read(&mut buf), Ok(n) if buf[..n].starts_with(b"+PONG"))
}
