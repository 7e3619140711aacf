//! Finding the server binaries and the OS user to run PostgreSQL as.

use std::path::{Path, PathBuf};

use crate::HarnessError;

fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// Directory holding `initdb` and `postgres`: `EDUMIND_PG_BINDIR`, then `PATH`, then
/// Debian's versioned `/usr/lib/postgresql/<major>/bin` (newest major first), where
/// Debian keeps the server binaries off `PATH`.
pub(crate) fn pg_bindir() -> Result<PathBuf, HarnessError> {
    if let Some(dir) = std::env::var_os("EDUMIND_PG_BINDIR") {
        return Ok(PathBuf::from(dir));
    }
    if let (Some(initdb), Some(_)) = (on_path("initdb"), on_path("postgres")) {
        // Resolve symlinks such as /usr/local/bin/initdb -> /usr/lib/postgresql/15/bin/initdb.
        let real = std::fs::canonicalize(&initdb).unwrap_or(initdb);
        if let Some(dir) = real.parent() {
            return Ok(dir.to_path_buf());
        }
    }
    let mut majors: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let major = entry.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").is_file().then_some((major, bin))
        })
        .collect();
    majors.sort();
    majors.pop().map(|(_, dir)| dir).ok_or_else(|| {
        HarnessError(
            "PostgreSQL server binaries not found: install them (Debian: apt-get install -y \
             postgresql), put initdb on PATH, set EDUMIND_PG_BINDIR, or point \
             EDUMIND_TEST_POSTGRES_URL at a running server"
                .into(),
        )
    })
}

pub(crate) fn redis_server() -> Result<PathBuf, HarnessError> {
    if let Some(path) = std::env::var_os("EDUMIND_REDIS_SERVER") {
        return Ok(PathBuf::from(path));
    }
    on_path("redis-server")
        .or_else(|| {
            ["/usr/bin/redis-server", "/usr/sbin/redis-server"]
                .iter()
                .map(Path::new)
                .find(|p| p.is_file())
                .map(Path::to_path_buf)
        })
        .ok_or_else(|| {
            HarnessError(
                "redis-server not found: install it (Debian: apt-get install -y redis-server), \
                 set EDUMIND_REDIS_SERVER, or point EDUMIND_TEST_REDIS_URL at a running server"
                    .into(),
            )
        })
}

/// The uid/gid to run PostgreSQL as: the current user, except for root, which `initdb`
/// refuses — then the `postgres` OS user that Debian's packages create.
pub(crate) fn pg_run_as() -> Result<Option<(u32, u32)>, HarnessError> {
    if current_uid() != 0 {
        return Ok(None);
    }
    let passwd = std::fs::read_to_string("/etc/passwd")?;
    passwd
        .lines()
        .find_map(|line| {
            let mut fields = line.split(':');
            if fields.next()? != "postgres" {
                return None;
            }
            let _password = fields.next()?;
            let uid = fields.next()?.parse().ok()?;
            let gid = fields.next()?.parse().ok()?;
            Some(Some((uid, gid)))
        })
        .ok_or_else(|| {
            HarnessError(
                "running as root, and initdb refuses root: create a `postgres` OS user \
                 (Debian's postgresql package does) or run the tests as another user"
                    .into(),
            )
        })
}

fn current_uid() -> u32 {
    // The owner of /proc/self is the process's real uid; avoids an unsafe libc call.
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self")
        .map(|m| m.uid())
        .unwrap_or(u32::MAX)
}

/// `redis-cli`, next to `redis-server` (or on PATH): the cluster tests build and inspect
/// clusters with it.
pub(crate) fn redis_cli() -> Result<PathBuf, HarnessError> {
    let server = redis_server()?;
    if let Some(dir) = server.parent() {
        let cli = dir.join("redis-cli");
        if cli.is_file() {
            return Ok(cli);
        }
    }
    on_path("redis-cli").ok_or_else(|| {
        HarnessError(
            "redis-cli not found: install it (Debian: apt-get install -y redis-tools)".into(),
        )
    })
}
