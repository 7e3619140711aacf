//! `edumind-local`: the real binary against the harness's PostgreSQL. School
//! manifests in, Secret files out (mode 0600), idempotent, passwords kept unless the
//! file is missing, invalid manifests refused before anything is written.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Output;

use base64::Engine;
use sqlx::Connection;

fn operator(args: &[&str], admin_url: Option<&str>) -> Output {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_edumind-local"));
    cmd.args(args).env_remove("EDUMIND_ADMIN_URL");
    if let Some(url) = admin_url {
        cmd.env("EDUMIND_ADMIN_URL", url);
    }
    cmd.output().unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn school(name: &str, code: &str, email: &str) -> String {
    format!(
        "apiVersion: edumind.ai/v1alpha1\nkind: School\nmetadata: {{name: {name}, namespace: local-test}}\n\
         spec: {{code: {code}, name: School {code}, address: 1 Main St, contactEmail: {email}}}\n"
    )
}

/// The decoded `data` of a Secret file.
fn secret_data(path: &Path) -> BTreeMap<String, String> {
    let v: serde_json::Value =
        serde_yaml_ng::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    assert_eq!(v["kind"], "Secret");
    v["data"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(v.as_str().unwrap())
                .unwrap();
            (k.clone(), String::from_utf8(bytes).unwrap())
        })
        .collect()
}

fn files(dir: &Path) -> BTreeMap<String, String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let p = e.unwrap().path();
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read_to_string(&p).unwrap(),
            )
        })
        .collect()
}

#[tokio::test]
async fn local_mode_writes_secret_files_idempotently_through_the_reconciler() {
    let pg = edumind_tests::postgres().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("servers.yaml");
    std::fs::write(
        &config,
        format!(
            "servers:\n- {{name: main, host: {}, port: {}, adminSecret: pg-admin}}\n",
            pg.host, pg.port
        ),
    )
    .unwrap();
    let schools = dir.path().join("schools");
    std::fs::create_dir(&schools).unwrap();
    std::fs::write(
        schools.join("a.yaml"),
        school("alpha", "ALPHA", "a@alpha.example"),
    )
    .unwrap();
    // As `kubectl get -o yaml` prints it: server-populated fields and status are ignored.
    std::fs::write(
        schools.join("b.yaml"),
        school("beta", "BETA", "b@beta.example").replace(
            "namespace: local-test}",
            "namespace: local-test, uid: 4f6d2c1e-0000-4000-8000-000000000001, resourceVersion: \"42\", finalizers: [edumind.ai/database]}",
        ) + "status: {phase: Ready, database: edumind_school_other_x}\n",
    )
    .unwrap();
    let out = dir.path().join("out");
    let (c, s, o) = (
        config.to_str().unwrap(),
        schools.to_str().unwrap(),
        out.to_str().unwrap(),
    );
    let args = ["--config", c, "--schools", s, "--out", o, "--self-service"];
    let admin = pg.admin_url();

    // Without admin credentials: a clear error, nothing written.
    let first = operator(&args, None);
    assert!(!first.status.success());
    assert!(
        text(&first).contains("EDUMIND_ADMIN_URL"),
        "{}",
        text(&first)
    );
    assert!(!out.exists());

    let first = operator(&args, Some(&admin));
    let shown = text(&first);
    assert!(first.status.success(), "{shown}");
    assert!(
        !shown.contains(&pg.password),
        "the admin password was printed"
    );
    assert_eq!(shown.matches(": Ready (Provisioned)").count(), 2, "{shown}");
    assert!(shown.contains("Self-service tenant: database edumind_selfservice"));
    let written = files(&out);
    assert_eq!(
        written.keys().collect::<Vec<_>>(),
        [
            "edumind-system_edumind-selfservice.yaml",
            "local-test_alpha-connection.yaml",
            "local-test_beta-connection.yaml"
        ]
    );
    for name in written.keys() {
        let mode = std::fs::metadata(out.join(name))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{name}");
        let data = secret_data(&out.join(name));
        assert!(
            !shown.contains(&data["password"]),
            "a tenant password was printed"
        );
    }
    // The published credentials work and the schema is there.
    let alpha = secret_data(&out.join("local-test_alpha-connection.yaml"));
    let mut conn = sqlx::PgConnection::connect(&alpha["uri"]).await.unwrap();
    assert_eq!(
        edumind_schema::applied_version(&mut conn).await.unwrap(),
        Some(edumind_schema::latest_version())
    );
    conn.close().await.unwrap();
    let text_a = &written["local-test_alpha-connection.yaml"];
    assert!(text_a.contains("edumind.ai/school-code: ALPHA"), "{text_a}");
    assert!(!text_a.contains("ownerReferences") && !text_a.contains("uid"));

    // Second run: nothing changes, byte for byte.
    let second = operator(&args, Some(&admin));
    assert!(second.status.success(), "{}", text(&second));
    assert_eq!(
        text(&second).matches("(unchanged)").count(),
        3,
        "{}",
        text(&second)
    );
    assert_eq!(files(&out), written);
    let json_args = [&args[..], &["--json"]].concat();
    let report = operator(&json_args, Some(&admin));
    assert!(report.status.success(), "{}", text(&report));
    let report: serde_json::Value = serde_json::from_slice(&report.stdout).unwrap();
    let schools = report["schools"].as_array().unwrap();
    assert_eq!(schools.len(), 2);
    for s in schools {
        assert_eq!(s["ready"], true, "{s}");
        assert_eq!(s["secret_written"], false, "{s}");
        assert_eq!(s["schema_version"], edumind_schema::latest_version());
    }
    assert_eq!(report["self_service"]["changes"], serde_json::json!([]));
    assert_eq!(files(&out), written);

    // A missing Secret file: a new password, and the role follows.
    std::fs::remove_file(out.join("local-test_beta-connection.yaml")).unwrap();
    let third = operator(&args, Some(&admin));
    assert!(third.status.success(), "{}", text(&third));
    let beta = secret_data(&out.join("local-test_beta-connection.yaml"));
    let beta_before = {
        let v: serde_json::Value =
            serde_yaml_ng::from_str(&written["local-test_beta-connection.yaml"]).unwrap();
        String::from_utf8(
            base64::engine::general_purpose::STANDARD
                .decode(v["data"]["password"].as_str().unwrap())
                .unwrap(),
        )
        .unwrap()
    };
    assert_ne!(beta["password"], beta_before);
    let conn = sqlx::PgConnection::connect(&beta["uri"]).await.unwrap();
    conn.close().await.unwrap();
}

#[test]
fn invalid_manifests_are_refused_naming_file_and_field_before_anything_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("servers.yaml");
    std::fs::write(
        &config,
        "servers:\n- {name: main, host: 127.0.0.1, port: 1, adminSecret: pg-admin}\n",
    )
    .unwrap();
    let out = dir.path().join("out");
    let cases = [
        (
            "missing.yaml",
            "apiVersion: edumind.ai/v1alpha1\nkind: School\nmetadata: {name: x}\nspec: {code: X, name: X, address: a}\n",
            "contactEmail",
        ),
        (
            "retention.yaml",
            "apiVersion: edumind.ai/v1alpha1\nkind: School\nmetadata: {name: x}\nspec: {code: X, name: X, address: a, contactEmail: a@b.c, backup: {retentionDays: 99}}\n",
            "spec.backup.retentionDays",
        ),
        (
            "kind.yaml",
            "apiVersion: v1\nkind: Secret\nmetadata: {name: x}\n",
            "kind School",
        ),
        ("broken.yaml", "spec: [unclosed\n", "not valid YAML"),
    ];
    for (file, body, field) in cases {
        let path = dir.path().join(file);
        std::fs::write(&path, body).unwrap();
        // A valid School beside it must not be provisioned either.
        let good = dir.path().join("good.yaml");
        std::fs::write(&good, school("good", "GOOD", "g@good.example")).unwrap();
        let result = operator(
            &[
                "--config",
                config.to_str().unwrap(),
                "--schools",
                good.to_str().unwrap(),
                path.to_str().unwrap(),
                "--out",
                out.to_str().unwrap(),
            ],
            Some("postgres://admin:pw@127.0.0.1:1/postgres"),
        );
        let shown = text(&result);
        assert!(!result.status.success(), "{file}: {shown}");
        assert!(
            shown.contains(file),
            "{file}: error does not name the file: {shown}"
        );
        assert!(
            shown.contains(field),
            "{file}: error does not name {field}: {shown}"
        );
        assert!(!out.exists(), "{file}: something was written");
    }
}

/// A config with the harness's server as `main` and, as `down`, a port nothing listens on.
fn config_with_a_dead_server(dir: &Path, pg: &edumind_tests::PgServer) -> std::path::PathBuf {
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = dir.join("servers.yaml");
    std::fs::write(
        &config,
        format!(
            "servers:\n- {{name: main, host: {}, port: {}, adminSecret: pg-admin, default: true}}\n\
             - {{name: down, host: 127.0.0.1, port: {dead}, adminSecret: pg-admin}}\n",
            pg.host, pg.port
        ),
    )
    .unwrap();
    config
}

/// A School whose name is the longest Kubernetes allows (253) gets a bounded, stable
/// Secret file name; a School whose server is down fails alone: the others are provisioned
/// and written, every outcome is reported, and the exit status is non-zero.
#[tokio::test]
async fn long_names_are_bounded_and_one_failing_school_does_not_stop_the_batch() {
    let pg = edumind_tests::postgres().await;
    let tag = edumind_tests::random_token(5);
    let dir = tempfile::tempdir().unwrap();
    let config = config_with_a_dead_server(dir.path(), pg);
    let schools = dir.path().join("schools");
    std::fs::create_dir(&schools).unwrap();
    let long = "l".repeat(253);
    // Sorted first, so the failing School comes before the others.
    std::fs::write(
        schools.join("a-down.yaml"),
        school("down", &format!("DOWN{tag}"), "d@down.example")
            .replace("contactEmail:", "targetServer: down, contactEmail:"),
    )
    .unwrap();
    std::fs::write(
        schools.join("b-long.yaml"),
        school(&long, &format!("LONG{tag}"), "l@long.example"),
    )
    .unwrap();
    std::fs::write(
        schools.join("c-ok.yaml"),
        school("okay", &format!("OK{tag}"), "o@ok.example"),
    )
    .unwrap();
    let out = dir.path().join("out");
    let (c, s, o) = (
        config.to_str().unwrap(),
        schools.to_str().unwrap(),
        out.to_str().unwrap(),
    );
    let args = ["--config", c, "--schools", s, "--out", o];
    let admin = pg.admin_url();
    for run in 0..2 {
        let result = operator(&args, Some(&admin));
        let shown = text(&result);
        assert!(!result.status.success(), "run {run}: {shown}");
        assert!(
            shown.contains("School local-test/down") && shown.contains("NOT ready"),
            "{shown}"
        );
        assert_eq!(shown.matches(": Ready (Provisioned)").count(), 2, "{shown}");
        let written = files(&out);
        assert_eq!(written.len(), 2, "{:?}", written.keys());
        assert!(written.contains_key("local-test_okay-connection.yaml"));
        let long_file = written
            .keys()
            .find(|k| k.starts_with("local-test_lll"))
            .expect("the long School's Secret file");
        assert!(long_file.len() <= 200, "{long_file}");
        if run == 1 {
            assert!(shown.contains("(unchanged)"), "second run rewrote: {shown}");
            assert!(!shown.contains("(written)"), "second run rewrote: {shown}");
        }
    }
}

/// Every database and role on the server whose name contains `fragment`.
async fn objects_named(fragment: &str) -> (Vec<String>, Vec<String>) {
    let pg = edumind_tests::postgres().await;
    let mut conn = pg.admin().await;
    let pattern = format!("%{fragment}%");
    let dbs = sqlx::query_scalar(
        "SELECT datname::text FROM pg_database WHERE datname LIKE $1 ORDER BY 1",
    )
    .bind(&pattern)
    .fetch_all(&mut conn)
    .await
    .unwrap();
    let roles =
        sqlx::query_scalar("SELECT rolname::text FROM pg_roles WHERE rolname LIKE $1 ORDER BY 1")
            .bind(&pattern)
            .fetch_all(&mut conn)
            .await
            .unwrap();
    (dbs, roles)
}

/// The provisioning process SIGKILLed at random moments, again and again, then run to the
/// end: every School is Ready with exactly one database and one role, no Conflict, and a
/// further run changes nothing. Each round adds two new Schools, so every run has real
/// work to be killed in; the kill delays are drawn below a measured provisioning time.
#[tokio::test]
async fn killed_at_random_moments_provisioning_converges() {
    use rand::Rng;
    const ROUNDS: usize = 8;
    let pg = edumind_tests::postgres().await;
    let tag = edumind_tests::random_token(5).to_lowercase();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("servers.yaml");
    std::fs::write(
        &config,
        format!(
            "servers:\n- {{name: main, host: {}, port: {}, adminSecret: pg-admin}}\n",
            pg.host, pg.port
        ),
    )
    .unwrap();
    let write_pair = |dir: &Path, round: &str| {
        for i in 0..2 {
            std::fs::write(
                dir.join(format!("s{round}{i}.yaml")),
                school(
                    &format!("kill{round}x{i}"),
                    &format!("K{tag}{round}x{i}"),
                    "k@kill.example",
                ),
            )
            .unwrap();
        }
    };
    let args_for = |schools: &Path, out: &Path| -> Vec<String> {
        [
            "--config",
            config.to_str().unwrap(),
            "--schools",
            schools.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ]
        .map(String::from)
        .to_vec()
    };

    // How long provisioning two new Schools takes on this machine, now.
    let calibration = dir.path().join("calibration");
    std::fs::create_dir(&calibration).unwrap();
    write_pair(&calibration, "c");
    let cal_args = args_for(&calibration, &dir.path().join("cal-out"));
    let cal_args: Vec<&str> = cal_args.iter().map(String::as_str).collect();
    let started = std::time::Instant::now();
    let cal = operator(&cal_args, Some(&pg.admin_url()));
    assert!(cal.status.success(), "{}", text(&cal));
    let full = started.elapsed();

    let schools = dir.path().join("schools");
    std::fs::create_dir(&schools).unwrap();
    let out = dir.path().join("out");
    let args = args_for(&schools, &out);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut rng = rand::rng();
    let mut killed = 0;
    for round in 0..ROUNDS {
        write_pair(&schools, &round.to_string());
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_edumind-local"))
            .args(&args)
            .env("EDUMIND_ADMIN_URL", pg.admin_url())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let delay = full.mul_f64(rng.random_range(0.05..0.95));
        tokio::select! {
            _ = child.wait() => {}
            _ = tokio::time::sleep(delay) => {
                child.start_kill().unwrap(); // SIGKILL
                child.wait().await.unwrap();
                killed += 1;
            }
        }
    }
    assert!(
        killed >= ROUNDS / 2,
        "only {killed} of {ROUNDS} runs were killed (provisioning took {full:?})"
    );
    let done = operator(&args, Some(&pg.admin_url()));
    let shown = text(&done);
    assert!(done.status.success(), "{shown}");
    assert_eq!(
        shown.matches(": Ready (Provisioned)").count(),
        2 * ROUNDS,
        "{shown}"
    );
    assert!(!shown.contains("Conflict"), "{shown}");
    for round in 0..ROUNDS {
        for i in 0..2 {
            let slug = format!("k{tag}{round}x{i}");
            let (dbs, roles) = objects_named(&format!("edumind_school_{slug}_")).await;
            assert_eq!(dbs.len(), 1, "{slug}: {dbs:?}");
            assert_eq!(roles, dbs, "{slug}: one role, named like its database");
        }
    }
    let again = operator(&args, Some(&pg.admin_url()));
    let shown = text(&again);
    assert!(again.status.success(), "{shown}");
    assert!(!shown.contains("(written)"), "{shown}");
}

/// Against a TLS-only server with `sslMode: require`: the self-service Secret file
/// carries the mode like the Schools' (`sslmode`, and in the URI), and it connects.
#[tokio::test]
async fn the_self_service_secret_file_carries_the_servers_tls_settings() {
    if !edumind_tests::PgServer::ssl_supported() {
        eprintln!("skipped: these PostgreSQL binaries were built without SSL");
        return;
    }
    let ca = edumind_tests::TestCa::new("edumind-local-test-ca").unwrap();
    let (pg, _supervised) = edumind_tests::PgServer::start_tls(&ca).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("servers.yaml");
    std::fs::write(
        &config,
        format!(
            "servers:\n- {{name: main, host: {}, port: {}, adminSecret: pg-admin, sslMode: require}}\n",
            pg.host, pg.port
        ),
    )
    .unwrap();
    let schools = dir.path().join("schools");
    std::fs::create_dir(&schools).unwrap();
    std::fs::write(
        schools.join("a.yaml"),
        school("gamma", "GAMMA", "g@gamma.example"),
    )
    .unwrap();
    let out = dir.path().join("out");
    let (c, s, o) = (
        config.to_str().unwrap(),
        schools.to_str().unwrap(),
        out.to_str().unwrap(),
    );
    let args = ["--config", c, "--schools", s, "--out", o, "--self-service"];
    let run = operator(&args, Some(&pg.admin_url()));
    assert!(run.status.success(), "{}", text(&run));
    for file in [
        "edumind-system_edumind-selfservice.yaml",
        "local-test_gamma-connection.yaml",
    ] {
        let data = secret_data(&out.join(file));
        assert_eq!(
            data.get("sslmode").map(String::as_str),
            Some("require"),
            "{file}: keys {:?}",
            data.keys().collect::<Vec<_>>()
        );
        assert!(data["uri"].contains("sslmode=require"), "{file}");
        let conn = sqlx::PgConnection::connect(&data["uri"]).await.unwrap();
        conn.close().await.unwrap();
    }
}
