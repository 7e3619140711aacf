#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report
//! The harness itself: servers start fast, are real (password auth, isolation), and
//! leave nothing behind however the test process ends.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sqlx::{Connection, PgConnection};

#[tokio::test]
async fn postgres_starts_quickly_and_enforces_passwords() {
    let pg = edumind_tests::postgres().await;
    if pg.data_dir.is_some() {
        eprintln!("harness PostgreSQL start-up: {:?}", pg.startup);
        assert!(
            pg.startup < Duration::from_secs(3),
            "start-up took {:?}",
            pg.startup
        );
    }
    let db = pg.database().await;
    let mut conn = db.connect().await;
    let one: i32 = sqlx::query_scalar("SELECT 1")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(one, 1);

    // TCP logins need the right password: the harness does not run with `trust`.
    let wrong = format!(
        "postgres://{}:not-the-password@{}:{}/{}",
        pg.superuser, pg.host, pg.port, db.name
    );
    let err = PgConnection::connect(&wrong)
        .await
        .expect_err("wrong password must be refused");
    assert!(
        err.to_string().contains("password authentication failed"),
        "{err}"
    );
}

#[tokio::test]
async fn every_test_gets_its_own_database() {
    let pg = edumind_tests::postgres().await;
    let a = pg.database().await;
    let b = pg.database().await;
    assert_ne!(a.name, b.name);
    let mut ca = a.connect().await;
    sqlx::query("CREATE TABLE only_in_a (x int)")
        .execute(&mut ca)
        .await
        .unwrap();
    let mut cb = b.connect().await;
    let seen: Option<String> = sqlx::query_scalar("SELECT to_regclass('only_in_a')::text")
        .fetch_one(&mut cb)
        .await
        .unwrap();
    assert_eq!(seen, None);
}

#[tokio::test]
async fn migrated_databases_are_at_the_latest_schema_version() {
    let pg = edumind_tests::postgres().await;
    let db = pg.migrated_database().await;
    let mut conn = db.connect().await;
    let version = edumind_schema::applied_version(&mut conn).await.unwrap();
    assert_eq!(version, Some(edumind_schema::latest_version()));
    let empty = pg.database().await;
    let mut conn = empty.connect().await;
    assert_eq!(
        edumind_schema::applied_version(&mut conn).await.unwrap(),
        None
    );
}

#[test]
fn shared_redis_answers_and_private_redis_stops_and_restarts() {
    let shared = edumind_tests::redis_blocking();
    assert!(shared.is_up());
    if std::env::var_os("EDUMIND_TEST_REDIS_URL").is_none() {
        eprintln!("harness Redis start-up: {:?}", shared.startup);
        assert!(shared.startup < Duration::from_secs(3));
    }

    let mut private = edumind_tests::RedisServer::start().unwrap();
    assert_ne!(private.port, shared.port);
    assert!(private.is_up());
    private.stop();
    assert!(!private.is_up(), "a stopped Redis must refuse connections");
    private.restart().unwrap();
    assert!(private.is_up(), "restart brings it back on the same port");
    assert!(
        shared.is_up(),
        "stopping a private server leaves the shared one alone"
    );
}

// ---- nothing left behind -------------------------------------------------------------

/// Runs in a child copy of this test binary (see `servers_vanish_*`): starts both shared
/// servers, reports their directories and ports, then ends the way the parent asks.
#[test]
#[ignore = "helper run by the cleanup tests in a child process"]
fn child_starts_servers() {
    let Ok(mode) = std::env::var("EDUMIND_HARNESS_CHILD") else {
        return;
    };
    let pg = edumind_tests::postgres_blocking();
    let redis = edumind_tests::redis_blocking();
    let pg_dir = pg.data_dir.as_ref().and_then(|d| d.parent()).unwrap();
    println!("PG_DIR {}", pg_dir.display());
    println!("PG_PORT {}", pg.port);
    println!("REDIS_PORT {}", redis.port);
    println!("READY");
    match mode.as_str() {
        "panic" => panic!("the child test fails on purpose"),
        "hang" => std::thread::sleep(Duration::from_secs(600)),
        _ => {}
    }
}

struct ChildServers {
    pg_dir: PathBuf,
    pg_port: u16,
    redis_port: u16,
}

fn run_child(mode: &str) -> (std::process::Child, ChildServers) {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_starts_servers",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("EDUMIND_HARNESS_CHILD", mode)
        .env_remove("EDUMIND_TEST_POSTGRES_URL")
        .env_remove("EDUMIND_TEST_REDIS_URL")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let (mut pg_dir, mut pg_port, mut redis_port) = (None, None, None);
    for line in lines.by_ref() {
        let line = line.unwrap();
        // libtest may print "test child_starts_servers ... " before our first line.
        let field = |marker: &str| line.split_once(marker).map(|(_, v)| v.trim().to_string());
        if let Some(v) = field("PG_DIR ") {
            pg_dir = Some(PathBuf::from(v));
        }
        if let Some(v) = field("PG_PORT ") {
            pg_port = v.parse().ok();
        }
        if let Some(v) = field("REDIS_PORT ") {
            redis_port = v.parse().ok();
        }
        if line.ends_with("READY") {
            break;
        }
    }
    // Keep draining so the child never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    let servers = ChildServers {
        pg_dir: pg_dir.expect("child reported its PostgreSQL directory"),
        pg_port: pg_port.expect("child reported its PostgreSQL port"),
        redis_port: redis_port.expect("child reported its Redis port"),
    };
    assert!(
        servers.pg_dir.exists(),
        "the child's cluster directory exists while it runs"
    );
    assert!(port_open(servers.pg_port) && port_open(servers.redis_port));
    (child, servers)
}

fn port_open(port: u16) -> bool {
    std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
}

fn all_gone(s: &ChildServers) -> bool {
    !s.pg_dir.exists() && !port_open(s.pg_port) && !port_open(s.redis_port)
}

#[test]
fn servers_vanish_when_the_test_process_exits_normally() {
    let (mut child, servers) = run_child("exit");
    assert!(child.wait().unwrap().success());
    // The at-exit hook waits for the cleanup: gone the moment the process is.
    assert!(
        all_gone(&servers),
        "directory or ports left behind after a normal exit"
    );
}

#[test]
fn servers_vanish_when_a_test_panics() {
    let (mut child, servers) = run_child("panic");
    assert!(
        !child.wait().unwrap().success(),
        "the child test was meant to fail"
    );
    assert!(
        all_gone(&servers),
        "directory or ports left behind after a failing test"
    );
}

#[test]
fn servers_vanish_when_the_test_process_is_killed() {
    let (mut child, servers) = run_child("hang");
    child.kill().unwrap(); // SIGKILL: no at-exit hook runs, only the closed pipes remain
    child.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while !all_gone(&servers) {
        assert!(
            Instant::now() < deadline,
            "servers survived a killed test process"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
