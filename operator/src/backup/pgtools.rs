//! Running `pg_dump` and `pg_restore` without exposing the password: it goes into a
//! private password file (mode 0600) named by `PGPASSFILE`, never into arguments or
//! the environment, and the tools run with `--no-password` so they never prompt.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use tokio::process::Command;

use super::BackupError;
use super::connection::ConnectionInfo;

/// The PostgreSQL client tools to use.
#[derive(Debug, Clone)]
pub struct PgTools {
    pub bindir: PathBuf,
}

impl PgTools {
    /// `EDUMIND_PG_BINDIR`, else the newest of Debian's `/usr/lib/postgresql/<major>/bin`,
    /// else whatever `pg_dump` is on `PATH`. The newest is chosen because `pg_dump` must be
    /// no older than the server; [`PgTools::for_server`] checks that against the server.
    pub fn discover() -> Result<Self, BackupError> {
        candidates()
            .into_iter()
            .next()
            .map(|bindir| Self { bindir })
            .ok_or_else(not_found)
    }

    /// The client tools for the server behind `conn`: the newest candidate (see
    /// [`PgTools::discover`]; only `EDUMIND_PG_BINDIR` when it is set) whose major version
    /// is at least the server's, since `pg_dump` cannot dump a newer server and
    /// `pg_restore` may not read the dump of a newer `pg_dump`. Otherwise a clear error
    /// naming both versions.
    pub async fn for_server(conn: &ConnectionInfo) -> Result<Self, BackupError> {
        Self::for_server_among(conn, candidates()).await
    }

    /// [`PgTools::for_server`] among these directories, best first.
    pub async fn for_server_among(
        conn: &ConnectionInfo,
        candidates: Vec<PathBuf>,
    ) -> Result<Self, BackupError> {
        let server = server_major(conn).await?;
        let mut newest_seen: Option<(u32, PathBuf)> = None;
        for bindir in candidates {
            let tools = Self { bindir };
            let Ok(client) = tools.major().await else {
                continue;
            };
            if client >= server {
                return Ok(tools);
            }
            if newest_seen.as_ref().is_none_or(|(m, _)| client > *m) {
                newest_seen = Some((client, tools.bindir));
            }
        }
        Err(BackupError::Tools(match newest_seen {
            Some((client, dir)) => format!(
                "pg_dump {client} ({}) is older than the server (PostgreSQL {server}): the \
                 client tools must be of major version {server} or later; install them or \
                 set EDUMIND_PG_BINDIR to their directory",
                dir.display()
            ),
            None => not_found_message(),
        }))
    }

    /// The major version of this directory's `pg_dump` (`pg_dump (PostgreSQL) 18.6`).
    pub async fn major(&self) -> Result<u32, BackupError> {
        let out = Command::new(self.bindir.join("pg_dump"))
            .arg("--version")
            .stdin(Stdio::null())
            .output()
            .await
            .map_err(|e| BackupError::Tools(format!("cannot run pg_dump: {e}")))?;
        let text = String::from_utf8_lossy(&out.stdout);
        parse_major(&text).ok_or_else(|| {
            BackupError::Tools(format!("cannot read pg_dump's version from {text:?}"))
        })
    }

    fn command(&self, tool: &str, passfile: Option<&PassFile>) -> Command {
        let mut cmd = Command::new(self.bindir.join(tool));
        cmd.env_remove("PGPASSWORD")
            .env_remove("PGSERVICE")
            .env_remove("PGSSLMODE")
            .env_remove("PGSSLROOTCERT")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        match passfile {
            Some(file) => {
                cmd.env("PGPASSFILE", file.path());
                // TLS as the connection Secret says, through libpq's environment (never
                // argv); the CA is a private file beside the password file.
                if let Some(mode) = &file.sslmode {
                    cmd.env("PGSSLMODE", mode);
                }
                if let Some(ca) = &file.ca {
                    cmd.env("PGSSLROOTCERT", ca);
                }
            }
            None => {
                cmd.env_remove("PGPASSFILE");
            }
        };
        cmd
    }

    /// `pg_dump --format=custom` of the whole database into `dest`.
    pub async fn dump(&self, conn: &ConnectionInfo, dest: &Path) -> Result<(), BackupError> {
        let passfile = PassFile::write(conn, dest.parent())?;
        let mut cmd = self.command("pg_dump", Some(&passfile));
        cmd.args(connection_args(conn))
            .args([
                "--format=custom",
                "--no-password",
                "--no-owner",
                "--no-privileges",
            ])
            .arg(format!("--file={}", dest.display()));
        run(cmd, "pg_dump").await
    }

    /// `pg_dump --format=custom` of the whole database to its standard output, for
    /// [`super::run_backup`] to send to the verifier and the store at the same time.
    /// The password file lives in `scratch` until the returned dump is dropped.
    pub fn spawn_dump(
        &self,
        conn: &ConnectionInfo,
        scratch: Option<&Path>,
    ) -> Result<RunningDump, BackupError> {
        let passfile = PassFile::write(conn, scratch)?;
        let mut cmd = self.command("pg_dump", Some(&passfile));
        cmd.args(connection_args(conn))
            .args([
                "--format=custom",
                "--no-password",
                "--no-owner",
                "--no-privileges",
            ])
            .stdout(Stdio::piped());
        let mut child = cmd
            .spawn()
            .map_err(|e| BackupError::Tools(format!("cannot run pg_dump: {e}")))?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| BackupError::Tools("pg_dump has no output pipe".into()))?;
        Ok(RunningDump {
            child,
            stdout: Some(stdout),
            _passfile: passfile,
        })
    }

    /// A full read of a custom-format archive fed on its standard input
    /// (`pg_restore --verbose --file=/dev/null`): what [`Self::verify`] does for a file,
    /// while the archive is still being written or downloaded.
    pub fn spawn_verifier(&self) -> Result<StreamVerifier, BackupError> {
        let mut cmd = self.command("pg_restore", None);
        cmd.args(["--verbose", "--file=/dev/null"])
            .stdin(Stdio::piped());
        let mut child = cmd
            .spawn()
            .map_err(|e| BackupError::Tools(format!("cannot run pg_restore: {e}")))?;
        let (stdin, stderr) = (child.stdin.take(), child.stderr.take());
        Ok(StreamVerifier {
            child,
            stdin,
            stderr,
        })
    }

    /// Checks that `file` is a complete, readable custom-format dump: its table of
    /// contents lists (`pg_restore --list`), and every data block decodes to the end
    /// (`pg_restore --file=/dev/null`), which a truncated or corrupted file fails.
    /// Returns the number of table-data entries.
    pub async fn verify(&self, file: &Path) -> Result<usize, BackupError> {
        let mut list = self.command("pg_restore", None);
        list.arg("--list").arg(file).stdout(Stdio::piped());
        let out = list
            .output()
            .await
            .map_err(|e| BackupError::Tools(format!("cannot run pg_restore: {e}")))?;
        if !out.status.success() {
            return Err(BackupError::Corrupt(format!(
                "pg_restore --list failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        let toc = String::from_utf8_lossy(&out.stdout);
        let tables = toc.lines().filter(|l| l.contains(" TABLE DATA ")).count();
        if tables == 0 {
            return Err(BackupError::Corrupt(
                "the dump contains no table data".into(),
            ));
        }
        let mut full = self.command("pg_restore", None);
        full.arg("--file=/dev/null").arg(file);
        run(full, "pg_restore (full read)")
            .await
            .map_err(|e| match e {
                BackupError::Failed(why) => BackupError::Corrupt(why),
                other => other,
            })?;
        Ok(tables)
    }

    /// Restores `file` over the database, as the connecting role, in one transaction:
    /// either everything is replaced or nothing changes.
    pub async fn restore(&self, conn: &ConnectionInfo, file: &Path) -> Result<(), BackupError> {
        self.restore_as(conn, file, None).await
    }

    /// [`Self::restore`], switching to `role` (`pg_restore --role`) after connecting, so
    /// that a login role that is a member of the school's role restores objects owned by
    /// the school's role (what a SchoolRestore does while the school role cannot log in).
    pub async fn restore_as(
        &self,
        conn: &ConnectionInfo,
        file: &Path,
        role: Option<&str>,
    ) -> Result<(), BackupError> {
        let passfile = PassFile::write(conn, file.parent())?;
        let mut cmd = self.command("pg_restore", Some(&passfile));
        cmd.args(connection_args(conn));
        if let Some(role) = role {
            cmd.arg(format!("--role={role}"));
        }
        cmd.args([
            "--clean",
            "--if-exists",
            "--no-owner",
            "--no-privileges",
            "--single-transaction",
            "--exit-on-error",
            "--no-password",
        ])
        .arg(file);
        run(cmd, "pg_restore").await
    }
}

/// A `pg_dump` writing to its standard output (see [`PgTools::spawn_dump`]).
pub struct RunningDump {
    child: tokio::process::Child,
    stdout: Option<tokio::process::ChildStdout>,
    _passfile: PassFile,
}

impl RunningDump {
    /// The archive as `pg_dump` writes it (once).
    pub fn output(&mut self) -> Option<tokio::process::ChildStdout> {
        self.stdout.take()
    }

    /// Waits for `pg_dump` to exit (after its output was read to the end or dropped).
    pub async fn finish(self) -> Result<(), BackupError> {
        let out = self
            .child
            .wait_with_output()
            .await
            .map_err(|e| BackupError::Tools(format!("cannot run pg_dump: {e}")))?;
        exit_status(&out, "pg_dump")
    }
}

/// How long a streaming verifier may go without reading (or, after the archive's end,
/// without exiting) before it is killed and the archive counted as damaged. `pg_restore`
/// can spin for ever on some damaged archives read from a pipe (seen: an altered stored
/// dump kept it at full CPU for over ten minutes after its input had ended).
const VERIFIER_STALL: std::time::Duration = std::time::Duration::from_secs(20);

/// A `pg_restore` reading an archive from its standard input to the end (see
/// [`PgTools::spawn_verifier`]).
pub struct StreamVerifier {
    child: tokio::process::Child,
    stdin: Option<tokio::process::ChildStdin>,
    stderr: Option<tokio::process::ChildStderr>,
}

impl StreamVerifier {
    /// Reads the archive from `chunks` to its end, then waits for the verdict: the
    /// number of table-data entries read, or [`BackupError::Corrupt`] when the archive
    /// does not decode to its end (truncated, damaged, or bytes after its end).
    pub async fn run(
        mut self,
        mut chunks: tokio::sync::mpsc::Receiver<bytes::Bytes>,
    ) -> Result<usize, BackupError> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stdin = self.stdin.take();
        let stderr = self.stderr.take();
        // stderr is read to its end in its own task: it ends only when pg_restore exits,
        // and a pg_restore that never exits must not hold this function.
        let log = tokio::spawn(async move {
            let mut text = Vec::new();
            if let Some(mut pipe) = stderr {
                let _ = pipe.read_to_end(&mut text).await;
            }
            String::from_utf8_lossy(&text).into_owned()
        });
        let mut stalled = false;
        let mut unread = false;
        while let Some(chunk) = chunks.recv().await {
            let Some(pipe) = stdin.as_mut() else {
                // pg_restore stopped reading: drain, so the sender never waits.
                unread = true;
                continue;
            };
            match tokio::time::timeout(VERIFIER_STALL, pipe.write_all(&chunk)).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => {
                    stdin = None;
                    unread = true;
                }
                // pg_restore has stopped reading without exiting (it can spin on a
                // damaged archive read from a pipe): stop feeding it.
                Err(_) => {
                    stdin = None;
                    unread = true;
                    stalled = true;
                }
            }
        }
        // End of input: pg_restore sees EOF.
        drop(stdin);
        let status = if stalled {
            None
        } else {
            // After its input ends pg_restore has at most a pipe's worth left to read:
            // one that has not exited by then is spinning on a damaged archive.
            tokio::time::timeout(VERIFIER_STALL, self.child.wait())
                .await
                .ok()
        };
        let status = match status {
            Some(status) => {
                status.map_err(|e| BackupError::Tools(format!("cannot run pg_restore: {e}")))?
            }
            None => {
                let _ = self.child.kill().await;
                log.abort();
                return Err(BackupError::Corrupt(format!(
                    "pg_restore (full read) made no progress for {} s: the archive is damaged",
                    VERIFIER_STALL.as_secs()
                )));
            }
        };
        let log = log.await.unwrap_or_default();
        // The verbose progress lines are noise in an error; keep what pg_restore objected to.
        let errors = || {
            let lines: Vec<&str> = log
                .lines()
                .filter(|l| l.contains("error") || l.contains("warning"))
                .collect();
            if lines.is_empty() {
                log.clone()
            } else {
                lines.join("\n")
            }
        };
        if !status.success() {
            return Err(BackupError::Corrupt(format!(
                "pg_restore (full read) failed ({status}): {}",
                errors().trim()
            )));
        }
        if unread {
            return Err(BackupError::Corrupt(
                "pg_restore (full read) stopped before the end of the archive".into(),
            ));
        }
        let tables = log
            .lines()
            .filter(|l| l.contains("processing data for table"))
            .count();
        if tables == 0 {
            return Err(BackupError::Corrupt(
                "the dump contains no table data".into(),
            ));
        }
        Ok(tables)
    }
}

fn exit_status(out: &std::process::Output, what: &str) -> Result<(), BackupError> {
    if out.status.success() {
        Ok(())
    } else {
        // libpq never prints passwords; the message is safe to report.
        Err(BackupError::Failed(format!(
            "{what} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

fn not_found_message() -> String {
    "pg_dump/pg_restore not found: install the PostgreSQL client tools or set \
     EDUMIND_PG_BINDIR"
        .into()
}

fn not_found() -> BackupError {
    BackupError::Tools(not_found_message())
}

/// Directories holding `pg_dump` and `pg_restore`, best first: `EDUMIND_PG_BINDIR` alone
/// when set; else Debian's versioned directories, newest major first, then `PATH`.
fn candidates() -> Vec<PathBuf> {
    if let Some(dir) = std::env::var_os("EDUMIND_PG_BINDIR") {
        return vec![dir.into()];
    }
    let mut majors: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let major = entry.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = entry.path().join("bin");
            bin.join("pg_dump").is_file().then_some((major, bin))
        })
        .collect();
    majors.sort_by_key(|m| std::cmp::Reverse(m.0));
    let mut dirs: Vec<PathBuf> = majors.into_iter().map(|(_, dir)| dir).collect();
    let path = std::env::var_os("PATH").unwrap_or_default();
    dirs.extend(
        std::env::split_paths(&path)
            .filter(|dir| dir.join("pg_dump").is_file() && dir.join("pg_restore").is_file()),
    );
    dirs
}

/// `pg_dump (PostgreSQL) 18.6` -> 18; `pg_dump (PostgreSQL) 9.6.24` -> 9.
fn parse_major(version: &str) -> Option<u32> {
    let number = version
        .split_whitespace()
        .find(|w| w.starts_with(|c: char| c.is_ascii_digit()))?;
    let digits: String = number.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// The server's major version (`server_version_num` / 10000, PostgreSQL 10 and later).
async fn server_major(conn: &ConnectionInfo) -> Result<u32, BackupError> {
    use sqlx::{ConnectOptions, Connection};
    let mut c = conn
        .connect_options()
        .connect()
        .await
        .map_err(|e| BackupError::Failed(format!("cannot connect to the database: {e}")))?;
    let version: String = sqlx::query_scalar("SHOW server_version_num")
        .fetch_one(&mut c)
        .await
        .map_err(|e| BackupError::Failed(format!("cannot read the server version: {e}")))?;
    let _ = c.close().await;
    version
        .trim()
        .parse::<u32>()
        .map(|v| v / 10_000)
        .map_err(|_| BackupError::Failed(format!("unexpected server_version_num {version:?}")))
}

fn connection_args(conn: &ConnectionInfo) -> Vec<String> {
    vec![
        format!("--host={}", conn.host),
        format!("--port={}", conn.port),
        format!("--username={}", conn.username),
        format!("--dbname={}", conn.dbname),
    ]
}

async fn run(mut cmd: Command, what: &str) -> Result<(), BackupError> {
    let out = cmd
        .output()
        .await
        .map_err(|e| BackupError::Tools(format!("cannot run {what}: {e}")))?;
    exit_status(&out, what)
}

/// A libpq password file holding one line for this connection, and the CA bundle when
/// the connection has one, in a private directory deleted on drop.
struct PassFile {
    _dir: tempfile::TempDir,
    path: PathBuf,
    sslmode: Option<&'static str>,
    ca: Option<PathBuf>,
}

impl PassFile {
    fn write(conn: &ConnectionInfo, near: Option<&Path>) -> Result<Self, BackupError> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let io = |e: std::io::Error| BackupError::Tools(format!("cannot write password file: {e}"));
        let dir = match near {
            Some(parent) if parent.is_dir() => tempfile::Builder::new()
                .prefix(".pgpass")
                .tempdir_in(parent),
            _ => tempfile::Builder::new().prefix(".pgpass").tempdir(),
        }
        .map_err(io)?;
        let path = dir.path().join("pgpass");
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(io)?;
        let line = [
            conn.host.as_str(),
            &conn.port.to_string(),
            conn.dbname.as_str(),
            conn.username.as_str(),
            conn.password(),
        ]
        .map(escape)
        .join(":");
        writeln!(file, "{line}").map_err(io)?;
        let ca = match conn.tls.as_ref().and_then(|t| t.ca_pem.as_deref()) {
            Some(pem) => {
                let ca = dir.path().join("ca.crt");
                std::fs::write(&ca, pem).map_err(io)?;
                Some(ca)
            }
            None => None,
        };
        Ok(Self {
            _dir: dir,
            path,
            sslmode: conn.tls.as_ref().map(|t| t.mode.as_str()),
            ca,
        })
    }

    fn path(&self) -> &Path {
        &self.path
    }
}

/// `.pgpass` fields escape `\` and `:` with a backslash.
fn escape(field: &str) -> String {
    field.replace('\\', "\\\\").replace(':', "\\:")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passfile_escapes_and_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let conn = ConnectionInfo::new("db:1", 5432, "edumind", "r\\o:le", "p:a\\ss");
        let pf = PassFile::write(&conn, None).unwrap();
        let text = std::fs::read_to_string(pf.path()).unwrap();
        assert_eq!(text, "db\\:1:5432:edumind:r\\\\o\\:le:p\\:a\\\\ss\n");
        let mode = std::fs::metadata(pf.path()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let path = pf.path().to_path_buf();
        drop(pf);
        assert!(!path.exists(), "the password file is removed after use");
    }

    #[test]
    fn client_versions_parse() {
        assert_eq!(parse_major("pg_dump (PostgreSQL) 18.6\n"), Some(18));
        assert_eq!(
            parse_major("pg_dump (PostgreSQL) 15.14 (Debian 15.14-0+deb12u1)"),
            Some(15)
        );
        assert_eq!(parse_major("pg_dump (PostgreSQL) 9.6.24"), Some(9));
        assert_eq!(parse_major("pg_dump (PostgreSQL) 19devel"), Some(19));
        assert_eq!(parse_major("nonsense"), None);
    }

    #[test]
    fn connection_arguments_never_carry_the_password() {
        let conn = ConnectionInfo::new("h", 1, "d", "u", "topsecret");
        assert!(
            connection_args(&conn)
                .iter()
                .all(|a| !a.contains("topsecret"))
        );
    }
}
