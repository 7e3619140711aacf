//! The served `/openapi.json` is the contract: schemathesis (pinned, installed by
//! `scripts/install-deps.sh`) generates requests from it against a running data plane with
//! seeded data, once per role, and checks that no reply is a server error, that every
//! status is one the operation documents, and that every body matches its schema.
//!
//! Bounded: `CONTRACT_EXAMPLES` examples per operation and `CONTRACT_SECONDS` per role.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::process::Stdio;

use support::*;
use uuid::Uuid;

/// The schemathesis release this test is written for (scripts/install-deps.sh pins it).
const SCHEMATHESIS: &str = "4.32.5";
const CONTRACT_EXAMPLES: u32 = 8;
const CONTRACT_SECONDS: u32 = 45;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_failures() {
    let version = tokio::process::Command::new("schemathesis")
        .arg("--version")
        .output()
        .await
        .expect("schemathesis is not installed: run scripts/install-deps.sh");
    let version = String::from_utf8_lossy(&version.stdout).into_owned();
    assert!(
        version.contains(SCHEMATHESIS),
        "schemathesis {SCHEMATHESIS} expected, found {version}: run scripts/install-deps.sh"
    );

    // The server's warnings and errors go to the test's output (shown on failure).
    let _ = tracing_subscriber::fmt()
        .with_env_filter("warn")
        .with_test_writer()
        .try_init();
    let f = Fixture::start(edumind_tests::redis().await.url()).await;
    let sa = f.a.school_id.unwrap();
    let (student_user, student) = f.a.students[0];
    let roles = [
        ("student", token(student_user, 0, Some(sa))),
        ("teacher", token(f.a.teacher_user, 1, Some(sa))),
        ("school_admin", token(f.a.admin_user, 2, Some(sa))),
        ("course_admin", token(Uuid::new_v4(), 3, None)),
        ("system_admin", token(Uuid::new_v4(), 5, None)),
    ];
    // Every operation runs in school A's tenant; ids of seeded rows where an operation
    // reads one (other ids are generated, mostly answering 404).
    let fixed = [
        ("students.progress", student.to_string()),
        ("classes.roster.get", f.a.class_id.to_string()),
        ("courses.questions", COURSE.to_string()),
        ("assessments.get", ASSESSMENT.to_string()),
    ];
    // The token comes from the environment, not argv.
    let mut config = format!(
        "headers = {{ Authorization = \"Bearer ${{EDUMIND_CONTRACT_TOKEN}}\" }}\n\n[parameters]\n\"path.tenant\" = \"{sa}\"\n"
    );
    for (op, id) in fixed {
        config.push_str(&format!(
            "\n[[operations]]\ninclude-operation-id = \"{op}\"\nparameters = {{ \"path.id\" = \"{id}\" }}\n"
        ));
    }
    let config_path = f.dir.path().join("schemathesis.toml");
    std::fs::write(&config_path, config).unwrap();

    let mut failed = Vec::new();
    // `EDUMIND_CONTRACT_ROLES=teacher,student` runs only those roles (when debugging).
    let only = std::env::var("EDUMIND_CONTRACT_ROLES").ok();
    for (role, tok) in roles {
        if only
            .as_deref()
            .is_some_and(|o| !o.split(',').any(|r| r == role))
        {
            continue;
        }
        let out = tokio::process::Command::new("schemathesis")
            .arg("--no-color")
            .arg("--config-file")
            .arg(&config_path)
            .arg("run")
            .arg(f.url("/openapi.json"))
            .args([
                "--checks",
                "not_a_server_error,status_code_conformance,response_schema_conformance",
            ])
            .args(["--max-examples", &CONTRACT_EXAMPLES.to_string()])
            .args(["--max-time", &CONTRACT_SECONDS.to_string()])
            .args(["--seed", "20261202"])
            .args(["--workers", "1"])
            .args(["--generation-database", "none"])
            .env("EDUMIND_CONTRACT_TOKEN", &tok)
            .current_dir(f.dir.path())
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output()
            .await
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let summary: Vec<&str> = text.lines().rev().take(6).collect();
        eprintln!("schemathesis as {role}: {:?}", summary);
        if !out.status.success() {
            failed.push(format!("=== as {role} ===\n{text}"));
        }
    }
    assert!(failed.is_empty(), "{}", failed.join("\n"));
}
