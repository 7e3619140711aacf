//! The demo end to end, the way a new user meets it: run the real `edumind-demo` binary,
//! run every printed curl command exactly as printed (with the real `curl`), check each
//! answers as its comment promises, press Ctrl-C (SIGINT), and check that every process
//! the demo started and every directory it created is gone.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::Value;

/// Kills the demo if the test fails half-way (its supervisors then clean up).
struct Demo(Child);

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Every process below `root`, with its working directory (a supervisor's is the
/// directory it removes).
fn descendants(root: u32) -> Vec<(u32, Option<PathBuf>)> {
    let mut parent = std::collections::HashMap::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // pid (comm) state ppid …; comm may contain spaces: split after the last ')'.
        let after = &stat[stat.rfind(')').unwrap() + 2..];
        let ppid: u32 = after.split(' ').nth(1).unwrap().parse().unwrap();
        parent.insert(pid, ppid);
    }
    let below = |mut pid: u32| {
        while let Some(&p) = parent.get(&pid) {
            if p == root {
                return true;
            }
            if p <= 1 {
                return false;
            }
            pid = p;
        }
        false
    };
    parent
        .keys()
        .filter(|&&pid| below(pid))
        .map(|&pid| (pid, std::fs::read_link(format!("/proc/{pid}/cwd")).ok()))
        .collect()
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            let state = s[s.rfind(')').unwrap() + 2..].chars().next();
            state != Some('Z')
        })
        .unwrap_or(false)
}

/// The JSON claims of a JWT (no verification: the server did that).
fn claims(token: &str) -> Value {
    let payload = token.split('.').nth(1).unwrap();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

/// Runs one printed command exactly as printed, plus `-w` for the status code.
fn run_curl(line: &str) -> (u16, Value) {
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!("{line} -w '\\n%{{http_code}}'"))
        .output()
        .unwrap();
    assert!(out.status.success(), "curl failed: {line}");
    let text = String::from_utf8(out.stdout).unwrap();
    let (body, code) = text.rsplit_once('\n').unwrap();
    (
        code.trim().parse().unwrap(),
        serde_json::from_str(body).unwrap_or(Value::Null),
    )
}

fn path_part(line: &str, after: &str) -> String {
    let url = line.split_whitespace().last().unwrap();
    let rest = &url[url.find(after).unwrap() + after.len()..];
    rest.split('/').next().unwrap().to_string()
}

#[test]
fn demo_prints_commands_that_answer_as_promised_and_ctrl_c_leaves_nothing() {
    let started = Instant::now();
    let child = Command::new(env!("CARGO_BIN_EXE_edumind-demo"))
        .args(["--port", "0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut demo = Demo(child);
    let pid = demo.0.id();
    let stdout = demo.0.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut lines = Vec::new();
    loop {
        let line = rx
            .recv_timeout(Duration::from_secs(90).saturating_sub(started.elapsed()))
            .unwrap_or_else(|_| {
                panic!(
                    "the demo did not get ready; output so far:\n{}",
                    lines.join("\n")
                )
            });
        let done = line.starts_with("Press Ctrl-C");
        lines.push(line);
        if done {
            break;
        }
    }
    let ready_after = started.elapsed();
    let output = lines.join("\n");
    println!("{output}");

    // Each command is "# what it answers" followed by the curl line.
    let mut commands = Vec::new();
    for pair in lines.windows(2) {
        if pair[1].trim_start().starts_with("curl ") {
            assert!(
                pair[0].starts_with("# "),
                "no description above {}",
                pair[1]
            );
            commands.push((pair[0].clone(), pair[1].trim().to_string()));
        }
    }
    assert_eq!(commands.len(), 5, "{output}");
    let token = |line: &str| {
        let start = line.find("Bearer ").unwrap() + 7;
        line[start..line[start..].find('\'').unwrap() + start].to_string()
    };

    // School admin: the school's 7 users, all of this school.
    let (desc, line) = &commands[0];
    assert!(
        desc.contains("School admin") && desc.contains("7 users"),
        "{desc}"
    );
    let (status, body) = run_curl(line);
    assert_eq!(status, 200, "{body}");
    let school = path_part(line, "/v1/tenants/");
    let users = body["items"].as_array().unwrap();
    assert_eq!(users.len(), 7, "{body}");
    assert!(users.iter().all(|u| u["school_id"] == school.as_str()));
    let mut roles: Vec<i64> = users.iter().map(|u| u["role"].as_i64().unwrap()).collect();
    roles.sort();
    assert_eq!(roles, [0, 0, 0, 0, 1, 1, 2]);
    assert_eq!(claims(&token(line))["role"], "SchoolAdmin");

    // Teacher: the class roster with 3 students.
    let (desc, line) = &commands[1];
    assert!(
        desc.contains("Teacher") && desc.contains("3 students"),
        "{desc}"
    );
    let (status, body) = run_curl(line);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["students"].as_array().unwrap().len(), 3, "{body}");
    assert_eq!(body["class_id"], path_part(line, "/classes/").as_str());
    assert_eq!(claims(&token(line))["role"], "Teacher");

    // Student: her own progress, as promised (1 quiz passed, 80 XP).
    let (desc, line) = &commands[2];
    assert!(desc.contains("Student") && desc.contains("80 XP"), "{desc}");
    let (status, body) = run_curl(line);
    assert_eq!(status, 200, "{body}");
    let student_claims = claims(&token(line));
    assert_eq!(body["user_id"], student_claims["sub"], "{body}");
    assert_eq!(body["xp_points"], 80);
    assert_eq!(body["attempts_passed"], 1);

    // Self-service student: exactly one row, their own, though three exist.
    let (desc, line) = &commands[3];
    assert!(
        desc.contains("Self-service") && desc.contains("holds 3"),
        "{desc}"
    );
    let (status, body) = run_curl(line);
    assert_eq!(status, 200, "{body}");
    let items = body["items"].as_array().unwrap();
    let ss_claims = claims(&token(line));
    assert_eq!(items.len(), 1, "{body}");
    assert_eq!(items[0]["user_id"], ss_claims["sub"]);
    assert!(items[0]["school_id"].is_null());
    // JSON-array columns are arrays on the wire.
    assert_eq!(items[0]["class_ids"], serde_json::json!([]), "{body}");
    assert!(ss_claims.get("school_id").is_none());

    // Another school's tenant: 404, like a tenant that does not exist.
    let (desc, line) = &commands[4];
    assert!(desc.contains("404"), "{desc}");
    let (status, body) = run_curl(line);
    assert_eq!(status, 404, "{body}");
    assert_ne!(path_part(line, "/v1/tenants/"), school);

    // A client generated from the served /openapi.json (openapi-python-client) calls the
    // demo with typed functions and models: tests/generated_client.py.
    let url = commands[0]
        .1
        .split_whitespace()
        .last()
        .unwrap()
        .trim_matches('\'');
    let args = serde_json::json!({
        "base": &url[..url.find("/v1/").unwrap()],
        "school": school,
        "class": path_part(&commands[1].1, "/classes/"),
        "student": path_part(&commands[2].1, "/students/"),
        "tokens": {"school_admin": token(&commands[0].1), "teacher": token(&commands[1].1),
                   "student": token(&commands[2].1), "selfservice": token(&commands[3].1)},
    });
    let mut py = Command::new("python3")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/generated_client.py"
        ))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        py.stdin
            .take()
            .unwrap()
            .write_all(args.to_string().as_bytes())
            .unwrap();
    }
    let out = py.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "generated client: {text}");
    println!("{text}");

    // Ctrl-C: every process and directory goes away.
    let work_dir = PathBuf::from(
        output
            .lines()
            .find_map(|l| l.split("Files (manifests, Secrets): ").nth(1))
            .expect("the work directory is printed")
            .trim(),
    )
    .canonicalize()
    .unwrap();
    assert!(work_dir.join("secrets").is_dir());
    let tmp = std::env::temp_dir().canonicalize().unwrap();
    let procs = descendants(pid);
    // Supervisors for PostgreSQL, Redis and the work directory, and what they run.
    assert!(procs.len() >= 6, "{procs:?}");
    let mut dirs: Vec<PathBuf> = procs
        .iter()
        .filter_map(|(_, cwd)| cwd.clone())
        .filter(|d| d.starts_with(&tmp))
        .collect();
    dirs.sort();
    dirs.dedup();
    assert!(dirs.len() >= 3, "server directories: {dirs:?}");
    assert!(dirs.contains(&work_dir));

    let stop = Instant::now();
    #[allow(unsafe_code)]
    // SAFETY: kill(2) on the pid of a child we have not reaped yet.
    let rc = unsafe { libc::kill(pid as i32, libc::SIGINT) };
    assert_eq!(rc, 0);
    let status = loop {
        if let Some(status) = demo.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            stop.elapsed() < Duration::from_secs(30),
            "the demo did not stop"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let rest: Vec<String> = rx.try_iter().collect();
    assert!(status.success(), "exit status {status}; {rest:?}");
    assert!(rest.iter().any(|l| l.starts_with("Stopped.")), "{rest:?}");
    for (p, cwd) in &procs {
        assert!(!alive(*p), "process {p} (cwd {cwd:?}) outlived the demo");
    }
    for d in &dirs {
        assert!(!d.exists(), "{} outlived the demo", d.display());
    }
    println!(
        "ready after {:.1} s, stopped {:.1} s after SIGINT",
        ready_after.as_secs_f64(),
        stop.elapsed().as_secs_f64()
    );
}
