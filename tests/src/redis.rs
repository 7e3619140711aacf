//! Throwaway Redis servers: one shared per test process, or private ones a test may
//! stop and restart (to prove the data plane survives Redis going away).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
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
    supervised: Option<Supervised>,
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
            supervised: None,
        })
    }

    /// Starts a private Redis on a free port; it lives until dropped.
    pub fn start() -> Result<Self, HarnessError> {
        let mut last_error = None;
        for _attempt in 0..3 {
            let port = free_port()?;
            let mut server = RedisServer {
                host: "127.0.0.1".into(),
                port,
                startup: Duration::ZERO,
                supervised: None,
            };
            match server.spawn() {
                Ok(()) => return Ok(server),
                Err(e) => last_error = Some(e),
            }
        }
        Err(last_error.unwrap_or_else(|| HarnessError("Redis did not start".into())))
    }

    pub fn url(&self) -> String {
        format!("redis://{}:{}", self.host, self.port)
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
        ping(&self.host, self.port)
    }

    fn spawn(&mut self) -> Result<(), HarnessError> {
        let started = Instant::now();
        let binary = binaries::redis_server()?;
        let dir: PathBuf = supervisor::server_dir("edumind-redis-", None)?;
        let cmd = format!(
            "'{binary}' --port {port} --bind 127.0.0.1 --dir \"$DIR\" --save '' \
             --appendonly no --daemonize no --protected-mode no --loglevel warning",
            binary = binary.display(),
            port = self.port
        );
        let mut supervised = Supervised::spawn(&dir, &cmd, "TERM", None)?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while !ping(&self.host, self.port) {
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
