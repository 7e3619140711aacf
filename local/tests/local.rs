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
