//! Server processes that cannot outlive the test process.
//!
//! Each server runs under a small `sh` supervisor whose standard input is a pipe from
//! the test process. The supervisor starts the server in the background and blocks
//! reading that pipe. When the test process closes the pipe — on purpose, or because
//! it exited, panicked, or was killed, since the kernel closes its file descriptors in
//! every case — `read` returns and the supervisor stops the server and removes its
//! temporary directory. Nothing is left behind even after `kill -9` of a test binary.
//!
//! The supervisor ignores SIGINT, SIGTERM and SIGHUP: Ctrl-C or `timeout` signal the
//! whole process group, and the supervisor must outlive the test process to clean up.
//!
//! Process-wide servers are also registered with [`register_at_exit`], so on a normal
//! exit the test process waits until the cleanup has finished instead of racing it.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Mutex;

use crate::HarnessError;

/// A running supervisor. Dropping it stops the server and removes its directory.
pub struct Supervised {
    child: Child,
    stdin: Option<ChildStdin>,
    dir: PathBuf,
}

impl Supervised {
    /// Starts `server_cmd` (a shell command line; it may use `$DIR`) under a supervisor.
    /// On shutdown the server gets `stop_signal`; its output goes to `$DIR/server.log`.
    ///
    /// With `run_as`, only the server drops to that uid/gid (via `setpriv`); the
    /// supervisor keeps the caller's identity so it can always signal the server and
    /// remove the directory, wherever `TMPDIR` points.
    pub fn spawn(
        dir: &Path,
        server_cmd: &str,
        stop_signal: &str,
        run_as: Option<(u32, u32)>,
    ) -> Result<Self, HarnessError> {
        Self::spawn_inner(dir, server_cmd, stop_signal, run_as, "rm -rf \"$DIR\"")
    }

    /// Like [`spawn`](Self::spawn), but leaves `dir` in place on stop: for a server
    /// started again in a directory another supervisor owns (and removes).
    pub fn spawn_keeping_dir(
        dir: &Path,
        server_cmd: &str,
        stop_signal: &str,
        run_as: Option<(u32, u32)>,
    ) -> Result<Self, HarnessError> {
        Self::spawn_inner(dir, server_cmd, stop_signal, run_as, ":")
    }

    fn spawn_inner(
        dir: &Path,
        server_cmd: &str,
        stop_signal: &str,
        run_as: Option<(u32, u32)>,
        cleanup: &str,
    ) -> Result<Self, HarnessError> {
        let server_cmd = match run_as {
            Some((uid, gid)) => {
                format!("setpriv --reuid={uid} --regid={gid} --clear-groups {server_cmd}")
            }
            None => server_cmd.to_string(),
        };
        let script = format!(
            r#"trap '' INT TERM HUP
{server_cmd} >"$DIR/server.log" 2>&1 &
pid=$!
read -r _ignored || true
kill -{stop_signal} "$pid" 2>/dev/null
wait "$pid" 2>/dev/null
{cleanup}"#
        );
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(script)
            .env("DIR", dir)
            .current_dir(dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let mut child = cmd
            .spawn()
            .map_err(|e| HarnessError(format!("cannot start supervisor shell: {e}")))?;
        let stdin = child.stdin.take();
        Ok(Self {
            child,
            stdin,
            dir: dir.to_path_buf(),
        })
    }

    /// The server's log so far, for error messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
    }

    /// Whether the supervisor (and so the server's directory) is still there.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Stops the server, removes its directory and waits until both are gone.
    pub fn stop(&mut self) {
        if let Some(mut stdin) = self.stdin.take() {
            let _ = stdin.write_all(b"stop\n");
        }
        let _ = self.child.wait();
    }
}

impl Drop for Supervised {
    fn drop(&mut self) {
        self.stop();
    }
}

static AT_EXIT: Mutex<Vec<Supervised>> = Mutex::new(Vec::new());

/// Keeps a process-wide server until the process exits, then stops it and waits for
/// its cleanup (also when tests panicked: the test runner still exits normally).
pub fn register_at_exit(server: Supervised) {
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        // SAFETY: `atexit` only records a function pointer; `stop_all` is an
        // `extern "C"` function that never unwinds (it catches every panic).
        #[allow(unsafe_code)]
        unsafe {
            libc::atexit(stop_all);
        }
    });
    match AT_EXIT.lock() {
        Ok(mut servers) => servers.push(server),
        Err(poisoned) => poisoned.into_inner().push(server),
    }
}

extern "C" fn stop_all() {
    let _ = std::panic::catch_unwind(|| {
        let servers = match AT_EXIT.try_lock() {
            Ok(mut guard) => std::mem::take(&mut *guard),
            Err(std::sync::TryLockError::Poisoned(p)) => std::mem::take(&mut *p.into_inner()),
            // Someone holds the lock while the process exits: the closed pipes still
            // make the supervisors clean up, just without us waiting for them.
            Err(std::sync::TryLockError::WouldBlock) => return,
        };
        drop(servers);
    });
}

/// A new private temporary directory (mode 0700) for one server, owned by `run_as`.
pub(crate) fn server_dir(
    prefix: &str,
    run_as: Option<(u32, u32)>,
) -> Result<PathBuf, HarnessError> {
    let dir = tempfile::Builder::new().prefix(prefix).tempdir()?.keep();
    if let Some((uid, gid)) = run_as {
        std::os::unix::fs::chown(&dir, Some(uid), Some(gid))?;
    }
    Ok(dir)
}
