//! Throwaway certificate authorities and a server certificate each, made with the
//! `openssl` command line in a temporary directory: for the servers that only accept TLS
//! (PostgreSQL in `tls.rs`, Redis in `redis.rs`). The one CA helper of the harness.

use std::path::PathBuf;
use std::process::Command;

use crate::HarnessError;

/// The CA and server files; removed when dropped.
pub struct TestCa {
    dir: tempfile::TempDir,
}

impl std::fmt::Debug for TestCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestCa")
            .field("dir", &self.dir.path())
            .finish()
    }
}

impl TestCa {
    /// A new CA whose subject is `name` (P-256, valid two days) and a server certificate it
    /// signed for `DNS:localhost` only: connecting to `127.0.0.1` with host name
    /// verification fails (the PostgreSQL tests check that).
    pub fn new(name: &str) -> Result<Self, HarnessError> {
        Self::make(name, "DNS:localhost")
    }

    /// Like [`TestCa::new`], the server certificate also valid for `IP:127.0.0.1` (the
    /// Redis tests connect by address).
    pub fn with_loopback_ip(name: &str) -> Result<Self, HarnessError> {
        Self::make(name, "DNS:localhost,IP:127.0.0.1")
    }

    fn make(name: &str, san: &str) -> Result<Self, HarnessError> {
        let dir = tempfile::Builder::new().prefix("edumind-ca-").tempdir()?;
        std::fs::write(
            dir.path().join("server.ext"),
            format!(
                "subjectAltName={san}\nbasicConstraints=critical,CA:FALSE\n\
                 keyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n"
            ),
        )?;
        let subject = format!("/CN={name}");
        let steps: [&[&str]; 3] = [
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                "ca.key",
                "-out",
                "ca.crt",
                "-days",
                "2",
                "-subj",
                &subject,
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ],
            &[
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                "server.key",
                "-out",
                "server.csr",
                "-subj",
                "/CN=localhost",
            ],
            &[
                "x509",
                "-req",
                "-in",
                "server.csr",
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                "server.crt",
                "-days",
                "2",
                "-extfile",
                "server.ext",
            ],
        ];
        for args in steps {
            let out = Command::new("openssl")
                .args(args)
                .current_dir(dir.path())
                .output()
                .map_err(|e| {
                    HarnessError(format!(
                        "cannot run openssl (Debian: apt-get install -y openssl): {e}"
                    ))
                })?;
            if !out.status.success() {
                return Err(HarnessError(format!(
                    "openssl {} failed: {}",
                    args[0],
                    String::from_utf8_lossy(&out.stderr)
                )));
            }
        }
        Ok(TestCa { dir })
    }

    /// The CA certificate (PEM): what clients trust.
    pub fn ca_cert(&self) -> PathBuf {
        self.dir.path().join("ca.crt")
    }

    /// The CA certificate's PEM text.
    pub fn ca_pem(&self) -> String {
        std::fs::read_to_string(self.ca_cert()).unwrap_or_default()
    }

    /// The server certificate (PEM).
    pub fn server_cert(&self) -> PathBuf {
        self.dir.path().join("server.crt")
    }

    /// The server certificate's private key (PEM).
    pub fn server_key(&self) -> PathBuf {
        self.dir.path().join("server.key")
    }
}
