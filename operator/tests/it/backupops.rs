//! Backups and restores as Kubernetes objects: the School's CronJob, results read back
//! from finished Jobs, SchoolBackup, SchoolRestore and `reclaimPolicy: snapshot`.
//!
//! PostgreSQL, pg_dump and pg_restore are real (the harness); the Kubernetes API is the
//! in-memory fake, which has no Job controller: tests play its part by setting Job status
//! and creating the Pod with the termination message the runner writes — and where the
//! data matters, by running the runner in-process exactly as the Job would.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::sync::Arc;

use edumind_crds::{
    BackupStorage, ReclaimPolicy, School, SchoolBackup, SchoolBackupSpec, SchoolRestore,
    SchoolRestoreSpec,
};
use edumind_operator::backup::{self, BackupJob, BackupStore, PgTools, RunResult};
use edumind_operator::backupjobs::{self, BackupConfig};
use edumind_operator::controllers as ops;
use edumind_operator::school as reconcile;
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use serde_json::json;
use sqlx::{Connection, PgConnection};

use crate::support::TestEnv;

/// A fresh namespace with the backup kinds registered; the operator's backup settings
/// with a test image and `default_storage`.
async fn env(default_storage: Option<BackupStorage>) -> TestEnv {
    let config = BackupConfig {
        image: "registry.example/edumind-operator:test".into(),
        default_storage,
        ..Default::default()
    };
    TestEnv::builder().with_backup(config).build().await
}

fn pvc() -> BackupStorage {
    BackupStorage {
        persistent_volume_claim: Some("school-backups".into()),
        ..Default::default()
    }
}

fn condition(school: &School, type_: &str) -> (String, String, String) {
    let c = school
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == type_))
        .unwrap_or_else(|| panic!("{type_} condition"));
    (c.status.clone(), c.reason.clone(), c.message.clone())
}

fn uri(secret: &Secret) -> String {
    String::from_utf8(secret.data.as_ref().unwrap()["uri"].0.clone()).unwrap()
}

#[tokio::test]
async fn the_cron_job_follows_the_spec_by_reference_and_a_second_reconcile_is_a_no_op() {
    let env = env(None).await;
    let spec = env.spec(
        "Cron",
        json!({"backup": {"schedule": "15 3 * * *", "retentionDays": 14, "storage": {"s3": {
            "bucket": "edumind-backups", "prefix": "prod", "endpoint": "http://minio:9000",
            "credentials": {"secretName": "s3-creds"}}}}}),
    );
    env.create("cron", spec).await;
    let school = env.reconcile("cron").await;
    assert_eq!(condition(&school, "Ready").0, "True");
    let cron_jobs = env.api::<CronJob>();
    let name = backupjobs::cron_job_name("cron");
    let cj = cron_jobs.get(&name).await.unwrap();
    let owner = &cj.owner_references()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.uid.as_str()),
        ("School", school.uid().unwrap().as_str())
    );
    let spec = cj.spec.clone().unwrap();
    assert_eq!(spec.schedule, "15 3 * * *");
    assert_eq!(spec.suspend, Some(false));
    assert_eq!(spec.concurrency_policy.as_deref(), Some("Forbid"));
    assert_eq!(spec.successful_jobs_history_limit, Some(3));
    assert_eq!(spec.failed_jobs_history_limit, Some(3));
    let pod = spec.job_template.spec.unwrap().template.spec.unwrap();
    let c = &pod.containers[0];
    assert_eq!(
        c.image.as_deref(),
        Some("registry.example/edumind-operator:test")
    );
    let env_vars: BTreeMap<_, _> = c
        .env
        .iter()
        .flatten()
        .map(|e| (e.name.clone(), e.clone()))
        .collect();
    assert_eq!(
        env_vars["EDUMIND_BACKUP_STORAGE"].value.as_deref(),
        Some("s3://edumind-backups/prod")
    );
    assert_eq!(
        env_vars["EDUMIND_BACKUP_RETENTION_DAYS"].value.as_deref(),
        Some("14")
    );
    let key_ref = env_vars["AWS_SECRET_ACCESS_KEY"]
        .value_from
        .clone()
        .unwrap()
        .secret_key_ref
        .unwrap();
    assert_eq!(
        (key_ref.name.as_str(), key_ref.key.as_str()),
        ("s3-creds", "AWS_SECRET_ACCESS_KEY")
    );
    let secret_name = school.status.clone().unwrap().secret_name.unwrap();
    assert!(pod.volumes.unwrap().iter().any(|v| {
        v.secret.as_ref().and_then(|s| s.secret_name.clone()) == Some(secret_name.clone())
    }));
    // No credential value anywhere in the object.
    let text = serde_json::to_string(&cj).unwrap();
    let password = String::from_utf8(
        env.secret(&secret_name).await.data.unwrap()["password"]
            .0
            .clone(),
    )
    .unwrap();
    assert!(!text.contains(&password));
    assert!(!text.contains(&edumind_tests::postgres().await.password));
    assert_eq!(condition(&school, "BackupHealthy").1, "NoBackupYet");

    // A second reconcile writes nothing.
    let (cj_rv, school_rv) = (cj.resource_version(), school.resource_version());
    let again = env.reconcile("cron").await;
    assert_eq!(
        cron_jobs.get(&name).await.unwrap().resource_version(),
        cj_rv
    );
    assert_eq!(again.resource_version(), school_rv);

    // Spec changes reach the CronJob; suspend and inactive stop it.
    env.api::<School>()
        .patch(
            "cron",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"backup": {"schedule": "0 4 * * 1", "suspend": true}}})),
        )
        .await
        .unwrap();
    env.reconcile("cron").await;
    let spec = cron_jobs.get(&name).await.unwrap().spec.unwrap();
    assert_eq!(
        (spec.schedule.as_str(), spec.suspend),
        ("0 4 * * 1", Some(true))
    );
    env.api::<School>()
        .patch(
            "cron",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"backup": {"suspend": false}, "active": false}})),
        )
        .await
        .unwrap();
    env.reconcile("cron").await;
    assert_eq!(
        cron_jobs.get(&name).await.unwrap().spec.unwrap().suspend,
        Some(true),
        "an inactive school cannot log in to be backed up"
    );

    // A CronJob of the same name that is not the School's is never taken over.
    let foreign: CronJob =
        serde_json::from_value(json!({"apiVersion": "batch/v1", "kind": "CronJob",
        "metadata": {"name": backupjobs::cron_job_name("other"), "namespace": env.ns},
        "spec": {"schedule": "1 1 * * *", "jobTemplate": {"spec": {"template": {"spec": {
            "containers": [{"name": "c", "image": "mine"}], "restartPolicy": "Never"}}}}}}))
        .unwrap();
    let foreign = cron_jobs
        .create(&PostParams::default(), &foreign)
        .await
        .unwrap();
    env.create(
        "other",
        env.spec(
            "Other",
            json!({"backup": {"storage": {"persistentVolumeClaim": "b"}}}),
        ),
    )
    .await;
    let other = env.reconcile("other").await;
    assert_eq!(condition(&other, "BackupHealthy").1, "CronJobConflict");
    let after = cron_jobs.get(&foreign.name_any()).await.unwrap();
    assert_eq!(
        after.resource_version(),
        foreign.resource_version(),
        "left untouched"
    );

    // Both storages at once is refused with a readable condition.
    env.api::<School>()
        .patch(
            "cron",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"backup": {"storage": {"persistentVolumeClaim": "x"}}}})),
        )
        .await
        .unwrap();
    let bad = env.reconcile("cron").await;
    let (_, reason, message) = condition(&bad, "Ready");
    assert_eq!(reason, "InvalidSpec");
    assert!(
        message.contains("exactly one of persistentVolumeClaim, s3 or azure"),
        "{message}"
    );
}

#[tokio::test]
async fn finished_jobs_fill_the_status_and_failures_raise_a_condition_and_one_event() {
    let env = env(Some(pvc())).await;
    env.create("stat", env.spec("Stat", json!({}))).await;
    let school = env.reconcile("stat").await;
    let status = school.status.clone().unwrap();
    assert_eq!(
        status.backup.as_ref().unwrap().cron_job.as_deref(),
        Some(backupjobs::cron_job_name("stat").as_str()),
        "the operator default storage applies"
    );
    // A scheduled Job (as the CronJob would create it) succeeds.
    let cj = env
        .api::<CronJob>()
        .get(&backupjobs::cron_job_name("stat"))
        .await
        .unwrap();
    let template = cj.spec.unwrap().job_template;
    let job = |name: &str| Job {
        metadata: kube::api::ObjectMeta {
            name: Some(name.into()),
            namespace: Some(env.ns.clone()),
            labels: template.metadata.clone().unwrap().labels,
            annotations: template.metadata.clone().unwrap().annotations,
            ..Default::default()
        },
        spec: template.spec.clone(),
        status: None,
    };
    env.api::<Job>()
        .create(&PostParams::default(), &job("stat-backup-1"))
        .await
        .unwrap();
    let running = env.reconcile("stat").await;
    assert!(
        running
            .status
            .unwrap()
            .backup
            .unwrap()
            .last_success
            .is_none()
    );
    let object = format!(
        "{0}/{0}_20261125T020000.000Z.dump",
        status.school_id.clone().unwrap()
    );
    env.finish_job(
        "stat-backup-1",
        true,
        &RunResult::success("backup", &object, 4242).to_json(),
    )
    .await;
    let ok = env.reconcile("stat").await;
    let st = ok.status.clone().unwrap();
    let last = st.backup.clone().unwrap().last_success.unwrap();
    assert_eq!((last.object.as_str(), last.size), (object.as_str(), 4242));
    assert_eq!(st.last_backup, Some(last.time.clone()));
    assert_eq!(condition(&ok, "BackupHealthy").0, "True");

    // A later one fails: condition, failure details, one Warning event.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    env.api::<Job>()
        .create(&PostParams::default(), &job("stat-backup-2"))
        .await
        .unwrap();
    let err = backup::BackupError::Storage("volume full".into());
    env.finish_job(
        "stat-backup-2",
        false,
        &RunResult::failure("backup", &err).to_json(),
    )
    .await;
    let failed = env.reconcile("stat").await;
    let (status, reason, message) = condition(&failed, "BackupHealthy");
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "BackupFailed")
    );
    assert!(message.contains("volume full"), "{message}");
    let failure = failed
        .status
        .clone()
        .unwrap()
        .backup
        .unwrap()
        .last_failure
        .unwrap();
    assert_eq!(failure.reason, "StorageFailed");
    assert_eq!(failure.job.as_deref(), Some("stat-backup-2"));
    assert_eq!(
        failed
            .status
            .unwrap()
            .backup
            .unwrap()
            .last_success
            .unwrap()
            .object,
        object,
        "the last good backup stays"
    );
    env.reconcile("stat").await;
    let warnings: Vec<_> = env
        .events()
        .await
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some("BackupFailed"))
        .collect();
    assert_eq!(warnings.len(), 1, "one event per failure");
    assert_eq!(warnings[0].type_.as_deref(), Some("Warning"));
}

#[tokio::test]
async fn school_backup_runs_once_and_reports_and_a_missing_school_is_named() {
    let env = env(None).await;
    let store_dir = tempfile::tempdir().unwrap();
    env.create(
        "sb",
        env.spec(
            "SB",
            json!({"backup": {"storage": {"persistentVolumeClaim": "bk"}}}),
        ),
    )
    .await;
    let school = env.reconcile("sb").await;

    // Missing School.
    let mut missing = SchoolBackup::new(
        "nobody",
        SchoolBackupSpec {
            school: "ghost".into(),
        },
    );
    missing.metadata.namespace = Some(env.ns.clone());
    let missing = env
        .api::<SchoolBackup>()
        .create(&PostParams::default(), &missing)
        .await
        .unwrap();
    ops::reconcile_backup(Arc::new(missing), env.ctx.clone())
        .await
        .unwrap();
    let st = env
        .api::<SchoolBackup>()
        .get("nobody")
        .await
        .unwrap()
        .status
        .unwrap();
    assert_eq!(st.phase.as_deref(), Some("Failed"));
    assert_eq!(st.reason.as_deref(), Some("SchoolNotFound"));
    assert_eq!(
        st.message.as_deref(),
        Some(format!("School ghost not found in namespace {}", env.ns).as_str())
    );

    // Happy path: the Job starts, the runner (in-process, with the mounted Secret) stores
    // a backup, the result comes back through the termination message.
    let mut sb = SchoolBackup::new(
        "now",
        SchoolBackupSpec {
            school: "sb".into(),
        },
    );
    sb.metadata.namespace = Some(env.ns.clone());
    env.api::<SchoolBackup>()
        .create(&PostParams::default(), &sb)
        .await
        .unwrap();
    let get = || async { env.api::<SchoolBackup>().get("now").await.unwrap() };
    ops::reconcile_backup(Arc::new(get().await), env.ctx.clone())
        .await
        .unwrap();
    let st = get().await.status.unwrap();
    assert_eq!(st.phase.as_deref(), Some("Running"));
    let job_name = st.job.clone().unwrap();
    let job = env.api::<Job>().get(&job_name).await.unwrap();
    assert_eq!(job.owner_references()[0].kind, "SchoolBackup");
    assert_eq!(job.labels()[backupjobs::LABEL_KIND], "on-demand");
    // Reconciling again while it runs starts nothing new.
    ops::reconcile_backup(Arc::new(get().await), env.ctx.clone())
        .await
        .unwrap();
    assert_eq!(
        env.api::<Job>()
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .len(),
        1
    );

    let (conn, _dir) = env
        .connection(&school.status.clone().unwrap().secret_name.unwrap())
        .await;
    let store = BackupStore::directory(store_dir.path()).unwrap();
    let report = backup::run_backup(
        &PgTools::discover().unwrap(),
        &conn,
        &store,
        &BackupJob {
            school_id: conn.school_id.clone().unwrap(),
            retention_days: 7,
            work_dir: None,
        },
        chrono::Utc::now(),
    )
    .await
    .unwrap();
    env.finish_job(
        &job_name,
        true,
        &RunResult::success("backup", &report.object, report.size)
            .with_sha256(&report.sha256)
            .to_json(),
    )
    .await;
    ops::reconcile_backup(Arc::new(get().await), env.ctx.clone())
        .await
        .unwrap();
    let st = get().await.status.unwrap();
    assert_eq!(st.phase.as_deref(), Some("Succeeded"));
    assert_eq!(st.object.as_deref(), Some(report.object.as_str()));
    assert_eq!(st.size, Some(report.size as i64));
    assert_eq!(st.sha256.as_deref(), Some(report.sha256.as_str()));
    assert!(st.started.is_some() && st.completed.is_some());
    // The School's status counts on-demand backups too.
    let school = env.reconcile("sb").await;
    let last = school.status.unwrap().backup.unwrap().last_success.unwrap();
    assert_eq!(last.object, report.object);
    assert_eq!(last.sha256, Some(report.sha256));
}

async fn login(uri: &str) -> Result<PgConnection, sqlx::Error> {
    PgConnection::connect(uri).await
}

async fn restore_phase(env: &TestEnv, name: &str) -> edumind_crds::SchoolRestoreStatus {
    env.api::<SchoolRestore>()
        .get(name)
        .await
        .unwrap()
        .status
        .unwrap_or_default()
}

async fn run_restore_reconcile(env: &TestEnv, name: &str) {
    let r = env.api::<SchoolRestore>().get(name).await.unwrap();
    ops::reconcile_restore(Arc::new(r), env.ctx.clone())
        .await
        .expect("restore reconcile");
}

#[tokio::test]
async fn restore_blocks_logins_while_it_runs_restores_the_data_and_gives_logins_back() {
    let env = env(Some(pvc())).await;
    env.create("rs", env.spec("RS", json!({}))).await;
    let school = env.reconcile("rs").await;
    let secret = env
        .secret(&school.status.clone().unwrap().secret_name.unwrap())
        .await;
    let school_uri = uri(&secret);
    let role = school.status.clone().unwrap().role.unwrap();

    // Data, a backup of it (the runner as the CronJob runs it), then a change to undo.
    let mut app = login(&school_uri).await.unwrap();
    sqlx::query("INSERT INTO schools (id, name, code, address, contact_email) VALUES (md5('x')::uuid, 'Before', 'B', 'a', 'a@b.c')")
        .execute(&mut app).await.unwrap();
    let store_dir = tempfile::tempdir().unwrap();
    let store = BackupStore::directory(store_dir.path()).unwrap();
    let (conn, _d) = env.connection(&secret.name_any()).await;
    let school_id = conn.school_id.clone().unwrap();
    let tools = PgTools::discover().unwrap();
    backup::run_backup(
        &tools,
        &conn,
        &store,
        &BackupJob {
            school_id: school_id.clone(),
            retention_days: 7,
            work_dir: None,
        },
        chrono::Utc::now(),
    )
    .await
    .unwrap();
    sqlx::query("UPDATE schools SET name = 'After' WHERE code = 'B'")
        .execute(&mut app)
        .await
        .unwrap();

    let mut sr = SchoolRestore::new(
        "undo",
        SchoolRestoreSpec {
            school: "rs".into(),
            backup: "latest".into(),
        },
    );
    sr.metadata.namespace = Some(env.ns.clone());
    env.api::<SchoolRestore>()
        .create(&PostParams::default(), &sr)
        .await
        .unwrap();
    run_restore_reconcile(&env, "undo").await;
    let st = restore_phase(&env, "undo").await;
    assert_eq!(st.phase.as_deref(), Some("Restoring"), "{st:?}");
    let job_name = st.job.clone().unwrap();
    let job = env.api::<Job>().get(&job_name).await.unwrap();
    let c = &job
        .spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .unwrap()
        .containers[0];
    assert_eq!(c.command.as_ref().unwrap()[1], "restore");

    // The open session was ended and the school role cannot log in.
    assert!(
        sqlx::query("SELECT 1").execute(&mut app).await.is_err(),
        "session ended"
    );
    let refused = login(&school_uri)
        .await
        .expect_err("the school role is blocked during the restore");
    assert!(
        refused.to_string().contains("not permitted to log in"),
        "{refused}"
    );
    // Logins re-enabled behind the restore's back (a School reconcile that raced it) are
    // blocked again on the next look at the running Job.
    sqlx::query(sqlx::AssertSqlSafe(format!("ALTER ROLE \"{role}\" LOGIN")))
        .execute(&mut edumind_tests::postgres().await.admin().await)
        .await
        .unwrap();
    run_restore_reconcile(&env, "undo").await;
    assert!(login(&school_uri).await.is_err(), "blocked again");
    // A School reconcile meanwhile keeps it so.
    let during = env.reconcile("rs").await;
    assert_eq!(condition(&during, "Ready").1, "Restoring");
    assert!(
        login(&school_uri).await.is_err(),
        "the School reconcile does not re-enable logins"
    );

    // What the Job does: the runner with the temporary Secret, as a member of the school role.
    let temp_secret = ops::restore_secret_name("undo");
    let (temp, _d2) = env.connection(&temp_secret).await;
    let labels = env
        .secret(&temp_secret)
        .await
        .metadata
        .labels
        .unwrap_or_default();
    assert!(
        !labels.contains_key("app.kubernetes.io/managed-by")
            && !labels.contains_key("edumind.ai/school-id"),
        "the data plane must not take the restore credentials for a tenant: {labels:?}"
    );
    assert_ne!(temp.username, role);
    let object = backup::resolve_object(&store, &school_id, "latest")
        .await
        .unwrap();
    let report = backup::run_restore_as(&tools, &temp, &store, &object, None, Some(&role))
        .await
        .expect("restore as the temporary role");
    let temp_password = String::from_utf8(
        env.secret(&temp_secret).await.data.unwrap()["password"]
            .0
            .clone(),
    )
    .unwrap();
    env.finish_job(
        &job_name,
        true,
        &RunResult::success("restore", &report.object, report.size).to_json(),
    )
    .await;
    run_restore_reconcile(&env, "undo").await;
    let st = restore_phase(&env, "undo").await;
    assert_eq!(st.phase.as_deref(), Some("Succeeded"), "{st:?}");
    assert_eq!(st.object.as_deref(), Some(object.as_str()));
    let visible = format!(
        "{}{}",
        serde_json::to_string(&st).unwrap(),
        serde_json::to_string(&env.events().await).unwrap()
    );
    assert!(
        !visible.contains(&temp_password),
        "no password in status or events"
    );

    // Logins are back, the data is as backed up, the tables still belong to the school,
    // the temporary role and Secret are gone.
    let mut app = login(&school_uri).await.expect("logins are back");
    let name: String = sqlx::query_scalar("SELECT name FROM schools WHERE code = 'B'")
        .fetch_one(&mut app)
        .await
        .unwrap();
    assert_eq!(name, "Before");
    let owner: String =
        sqlx::query_scalar("SELECT tableowner::text FROM pg_tables WHERE tablename = 'schools'")
            .fetch_one(&mut app)
            .await
            .unwrap();
    assert_eq!(owner, role);
    let mut admin = edumind_tests::postgres().await.admin().await;
    let temp_left: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)")
            .bind(&temp.username)
            .fetch_one(&mut admin)
            .await
            .unwrap();
    assert!(!temp_left, "restore role dropped");
    assert!(
        env.api::<Secret>()
            .get_opt(&temp_secret)
            .await
            .unwrap()
            .is_none(),
        "temporary Secret deleted"
    );
    let after = env.reconcile("rs").await;
    assert_eq!(condition(&after, "Ready").1, "Provisioned");

    // A failed restore gives logins back too.
    let mut bad = SchoolRestore::new(
        "bad",
        SchoolRestoreSpec {
            school: "rs".into(),
            backup: "no/such.dump".into(),
        },
    );
    bad.metadata.namespace = Some(env.ns.clone());
    env.api::<SchoolRestore>()
        .create(&PostParams::default(), &bad)
        .await
        .unwrap();
    run_restore_reconcile(&env, "bad").await;
    assert!(login(&school_uri).await.is_err());
    let job_name = restore_phase(&env, "bad").await.job.unwrap();
    let (temp, _d3) = env.connection(&ops::restore_secret_name("bad")).await;
    let err = backup::run_restore_as(&tools, &temp, &store, "no/such.dump", None, Some(&role))
        .await
        .unwrap_err();
    env.finish_job(
        &job_name,
        false,
        &RunResult::failure("restore", &err).to_json(),
    )
    .await;
    run_restore_reconcile(&env, "bad").await;
    let st = restore_phase(&env, "bad").await;
    assert_eq!(
        (st.phase.as_deref(), st.reason.as_deref()),
        (Some("Failed"), Some("BackupNotFound"))
    );
    let mut app = login(&school_uri)
        .await
        .expect("logins are back after a failed restore");
    let name: String = sqlx::query_scalar("SELECT name FROM schools WHERE code = 'B'")
        .fetch_one(&mut app)
        .await
        .unwrap();
    assert_eq!(name, "Before", "a failed restore changes nothing");
    assert!(
        env.events()
            .await
            .iter()
            .any(|e| e.reason.as_deref() == Some("RestoreFailed"))
    );

    assert!(
        env.api::<SchoolRestore>()
            .get("bad")
            .await
            .unwrap()
            .finalizers()
            .is_empty(),
        "a finished restore releases its finalizer"
    );

    // A restore deleted while it runs cleans up behind its finalizer and gives logins back.
    let mut gone = SchoolRestore::new(
        "gone",
        SchoolRestoreSpec {
            school: "rs".into(),
            backup: "latest".into(),
        },
    );
    gone.metadata.namespace = Some(env.ns.clone());
    env.api::<SchoolRestore>()
        .create(&PostParams::default(), &gone)
        .await
        .unwrap();
    run_restore_reconcile(&env, "gone").await;
    let mut running = env.api::<SchoolRestore>().get("gone").await.unwrap();
    assert_eq!(running.finalizers(), [ops::RESTORE_FINALIZER.to_string()]);
    assert!(login(&school_uri).await.is_err());
    let (temp, _d4) = env.connection(&ops::restore_secret_name("gone")).await;
    // The fake API server removes it at once whatever the finalizers; hand the reconciler
    // the object as a real server would show it (deletionTimestamp set, finalizer kept).
    env.api::<SchoolRestore>()
        .delete("gone", &Default::default())
        .await
        .unwrap();
    running.metadata.deletion_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::now()));
    ops::reconcile_restore(Arc::new(running), env.ctx.clone())
        .await
        .unwrap();
    login(&school_uri)
        .await
        .expect("logins are back after the restore was deleted");
    let temp_left: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)")
            .bind(&temp.username)
            .fetch_one(&mut admin)
            .await
            .unwrap();
    assert!(!temp_left, "restore role dropped on deletion");

    // A restore of a School that does not exist fails clearly and touches nothing.
    let mut ghost = SchoolRestore::new(
        "ghost",
        SchoolRestoreSpec {
            school: "ghost".into(),
            backup: "latest".into(),
        },
    );
    ghost.metadata.namespace = Some(env.ns.clone());
    env.api::<SchoolRestore>()
        .create(&PostParams::default(), &ghost)
        .await
        .unwrap();
    run_restore_reconcile(&env, "ghost").await;
    assert_eq!(
        restore_phase(&env, "ghost").await.reason.as_deref(),
        Some("SchoolNotFound")
    );
}

async fn exists_db(name: &str) -> bool {
    let mut admin = edumind_tests::postgres().await.admin().await;
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
        .bind(name)
        .fetch_one(&mut admin)
        .await
        .unwrap()
}

async fn delete(env: &TestEnv, name: &str) -> School {
    // The fake API server has no deletion in progress: mark the object as a real one would.
    let mut school = env.school(name).await;
    school.metadata.deletion_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::now()));
    reconcile::reconcile(Arc::new(school), env.ctx.clone())
        .await
        .expect("reconcile");
    env.school(name).await
}

#[tokio::test]
async fn snapshot_deletion_drops_only_after_a_successful_final_backup() {
    let env = env(Some(pvc())).await;
    let mut spec = env.spec("Snap", json!({}));
    spec.reclaim_policy = ReclaimPolicy::Snapshot;
    env.create("snap", spec).await;
    let school = env.reconcile("snap").await;
    let db = school.status.clone().unwrap().database.unwrap();
    let job_name = backupjobs::final_job_name("snap");

    // Someone else's finished Job of that name is never taken for the final backup.
    let foreign: Job = serde_json::from_value(json!({"apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": job_name, "namespace": env.ns},
        "spec": {"template": {"spec": {"containers": [{"name": "c", "image": "mine"}],
            "restartPolicy": "Never"}}}}))
    .unwrap();
    env.api::<Job>()
        .create(&PostParams::default(), &foreign)
        .await
        .unwrap();
    env.finish_job(
        &job_name,
        true,
        &RunResult::success("backup", "fake", 1).to_json(),
    )
    .await;
    let refused = delete(&env, "snap").await;
    assert_eq!(condition(&refused, "Ready").1, "FinalBackupFailed");
    assert!(exists_db(&db).await, "no drop on a foreign Job's success");
    env.remove_job(&job_name).await;

    let first = delete(&env, "snap").await;
    assert!(
        first
            .finalizers()
            .contains(&reconcile::FINALIZER.to_string())
    );
    assert_eq!(condition(&first, "Ready").1, "FinalBackupRunning");
    let job = env.api::<Job>().get(&job_name).await.unwrap();
    assert_eq!(job.labels()[backupjobs::LABEL_KIND], "final");
    assert!(exists_db(&db).await);

    // The final backup fails: nothing dropped, finalizer kept, condition and event say why.
    let err = backup::BackupError::Storage("bucket unreachable".into());
    env.finish_job(
        &job_name,
        false,
        &RunResult::failure("backup", &err).to_json(),
    )
    .await;
    let failed = delete(&env, "snap").await;
    let (_, reason, message) = condition(&failed, "Ready");
    assert_eq!(reason, "FinalBackupFailed");
    assert!(
        message.contains("bucket unreachable") && message.contains("nothing was dropped"),
        "{message}"
    );
    assert!(
        failed
            .finalizers()
            .contains(&reconcile::FINALIZER.to_string())
    );
    assert!(exists_db(&db).await, "no drop after a failed final backup");
    assert!(
        env.events()
            .await
            .iter()
            .any(|e| e.reason.as_deref() == Some("FinalBackupFailed")
                && e.type_.as_deref() == Some("Warning"))
    );
    delete(&env, "snap").await;
    assert!(exists_db(&db).await, "still no drop on the next reconcile");

    // Deleting the failed Job retries; this time the backup succeeds and the drop follows.
    env.remove_job(&job_name).await;
    let retry = delete(&env, "snap").await;
    assert_eq!(condition(&retry, "Ready").1, "FinalBackupRunning");
    env.finish_job(
        &job_name,
        true,
        &RunResult::success("backup", "x/y.dump", 10).to_json(),
    )
    .await;
    let done = delete(&env, "snap").await;
    assert!(done.finalizers().is_empty(), "finalizer released");
    assert!(
        !exists_db(&db).await,
        "dropped after the final backup succeeded"
    );
    assert!(
        env.api::<Job>().get_opt(&job_name).await.unwrap().is_none(),
        "final Job cleaned up"
    );
}

/// The runner binary as the Job runs it: configured by environment, the connection Secret
/// as a mounted directory, the outcome as JSON in the result file (the termination log).
#[tokio::test]
async fn the_runner_binary_writes_its_result_where_the_operator_reads_it() {
    let env = env(None).await;
    env.create("bin", env.spec("Bin", json!({}))).await;
    let school = env.reconcile("bin").await;
    let secret = env
        .secret(&school.status.unwrap().secret_name.unwrap())
        .await;
    let dir = tempfile::tempdir().unwrap();
    let mount = dir.path().join("connection");
    std::fs::create_dir(&mount).unwrap();
    for (k, v) in secret.data.clone().unwrap() {
        std::fs::write(mount.join(k), v.0).unwrap();
    }
    let school_id = secret.labels()["edumind.ai/school-id"].clone();
    let result = dir.path().join("termination-log");
    let run = |command: &str, extra: &[(&str, &str)]| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_edumind-operator"));
        cmd.arg(command)
            .env("EDUMIND_SECRET", &mount)
            .env("EDUMIND_SCHOOL_ID", &school_id)
            .env("EDUMIND_BACKUP_STORAGE", dir.path().join("store"))
            .env("EDUMIND_RESULT_FILE", &result);
        for (k, v) in extra {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        let parsed: RunResult =
            serde_json::from_str(&std::fs::read_to_string(&result).unwrap()).unwrap();
        (out.status.success(), parsed)
    };
    let (ok, backup) = run("backup", &[]);
    assert!(ok && backup.ok, "{backup:?}");
    assert!(backup.object.as_ref().unwrap().contains(&school_id));
    // The checksum travels in the result and is the one in the manifest beside the dump.
    let object = backup.object.clone().unwrap();
    let sha256 = backup
        .sha256
        .clone()
        .expect("the result carries the checksum");
    let manifest = dir.path().join("store").join(format!("{object}.sha256"));
    assert!(
        std::fs::read_to_string(&manifest)
            .unwrap()
            .starts_with(&sha256)
    );
    let list = |extra: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_edumind-operator"))
            .arg("list-backups")
            .args(extra)
            .env("EDUMIND_SECRET", &mount)
            .env("EDUMIND_SCHOOL_ID", &school_id)
            .env("EDUMIND_BACKUP_STORAGE", dir.path().join("store"))
            .output()
            .unwrap()
    };
    let out = list(&[]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains(&sha256) && text.contains("\tverified"),
        "{text}"
    );
    let (ok, restore) = run("restore", &[("EDUMIND_RESTORE_OBJECT", "latest")]);
    assert!(ok && restore.ok, "{restore:?}");
    assert_eq!(restore.object, backup.object, "latest is the newest backup");
    assert_eq!(restore.sha256, backup.sha256);

    // Without its manifest the dump is listed as unverified and refused, unless forced.
    std::fs::remove_file(&manifest).unwrap();
    let out = list(&[]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        !out.status.success() && text.contains("UNVERIFIED"),
        "{text}"
    );
    assert!(list(&["--allow-unverified"]).status.success());
    let (ok, refused) = run("restore", &[("EDUMIND_RESTORE_OBJECT", "latest")]);
    assert!(!ok && !refused.ok, "{refused:?}");
    assert_eq!(refused.reason.as_deref(), Some("ChecksumMissing"));
    let (ok, forced) = run(
        "restore",
        &[
            ("EDUMIND_RESTORE_OBJECT", "latest"),
            ("EDUMIND_RESTORE_ALLOW_UNVERIFIED", "true"),
        ],
    );
    assert!(ok && forced.ok, "{forced:?}");
    // An altered dump is listed as corrupt, refused even where a missing manifest is not.
    std::fs::write(
        &manifest,
        format!(
            "{}  {}\n",
            "0".repeat(64),
            object.rsplit('/').next().unwrap()
        ),
    )
    .unwrap();
    let out = list(&["--allow-unverified"]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(!out.status.success() && text.contains("CORRUPT"), "{text}");
    let (ok, refused) = run("restore", &[("EDUMIND_RESTORE_OBJECT", &object)]);
    assert!(!ok, "{refused:?}");
    assert_eq!(refused.reason.as_deref(), Some("DumpCorrupt"));
    let (ok, missing) = run("restore", &[("EDUMIND_RESTORE_OBJECT", "no/such.dump")]);
    assert!(!ok && !missing.ok);
    assert_eq!(missing.reason.as_deref(), Some("BackupNotFound"));
    let text = std::fs::read_to_string(&result).unwrap();
    let password = String::from_utf8(secret.data.unwrap()["password"].0.clone()).unwrap();
    assert!(!text.contains(&password));
}

#[test]
fn crd_prints_every_crd() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_edumind-operator"))
        .arg("crd")
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    for name in [
        "schools.edumind.ai",
        "schoolbackups.edumind.ai",
        "schoolrestores.edumind.ai",
    ] {
        assert!(text.contains(&format!("name: {name}")), "{name}");
    }
}

async fn schema_version_of(database: &str) -> Option<i64> {
    let pg = edumind_tests::postgres().await;
    let mut conn = PgConnection::connect(&pg.url(database)).await.unwrap();
    edumind_schema::applied_version(&mut conn).await.unwrap()
}

/// Reconciles once, whatever the outcome (waiting for a Job is an `Err` to retry).
async fn reconcile_once(env: &TestEnv, name: &str) -> School {
    let school = env.school(name).await;
    let _ = reconcile::reconcile(Arc::new(school), env.ctx.clone()).await;
    env.school(name).await
}

/// A School that an older release provisioned at an older schema version: the new
/// migrations wait for a verified backup Job; a failed backup holds them back; a
/// successful one lets them run and is recorded in status. `beforeMigration: false`
/// migrates at once.
#[tokio::test]
async fn a_schema_change_waits_for_a_verified_backup_and_a_failed_backup_holds_it_back() {
    let env = env(Some(pvc())).await;
    let first = edumind_schema::MIGRATOR.iter().next().unwrap().version;
    let latest = edumind_schema::latest_version();
    assert!(first < latest, "needs two migrations");

    // Provision up to the first migration only, as an older release would have, and
    // record that version in status.
    let older = |name: &'static str, extra: serde_json::Value| {
        let env = &env;
        async move {
            env.create(name, env.spec(name, extra)).await;
            let school = env.school(name).await;
            let step = format!("apply migration {first}");
            edumind_operator::fault::with_fault(
                &step,
                reconcile::reconcile(Arc::new(school), env.ctx.clone()),
            )
            .await
            .expect_err("stopped after the first migration");
            env.api::<School>()
                .patch_status(
                    name,
                    &PatchParams::default(),
                    &Patch::Merge(json!({"status": {"schemaVersion": first}})),
                )
                .await
                .unwrap();
            let school = env.school(name).await;
            let id: uuid::Uuid = school
                .status
                .as_ref()
                .unwrap()
                .school_id
                .as_deref()
                .unwrap()
                .parse()
                .unwrap();
            let db = edumind_operator::naming::school_database(&school.spec.code, id);
            assert_eq!(schema_version_of(&db).await, Some(first));
            db
        }
    };
    let db = older("upgr", json!({})).await;
    let job = edumind_operator::premigration::job_name("upgr", latest);

    let school = reconcile_once(&env, "upgr").await;
    assert_eq!(condition(&school, "Ready").1, "BackupBeforeMigration");
    assert_eq!(
        schema_version_of(&db).await,
        Some(first),
        "waits for the backup"
    );
    let created = env.api::<Job>().get(&job).await.unwrap();
    assert_eq!(
        created
            .labels()
            .get(backupjobs::LABEL_KIND)
            .map(String::as_str),
        Some("premigration")
    );
    let secret = school.status.as_ref().unwrap().secret_name.clone();
    let secret = secret.unwrap_or_else(|| edumind_operator::naming::secret_name("upgr"));
    assert!(
        env.api::<Secret>()
            .get_opt(&secret)
            .await
            .unwrap()
            .is_some(),
        "the Secret the Job mounts is published first"
    );

    // The backup fails: the migration stays held back, the condition says why.
    let err = backup::BackupError::Storage("bucket unreachable".into());
    env.finish_job(&job, false, &RunResult::failure("backup", &err).to_json())
        .await;
    let school = reconcile_once(&env, "upgr").await;
    let (status, reason, message) = condition(&school, "Ready");
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "BackupBeforeMigrationFailed")
    );
    assert!(message.contains(&job), "{message}");
    let school = reconcile_once(&env, "upgr").await;
    assert_eq!(condition(&school, "Ready").1, "BackupBeforeMigrationFailed");
    assert_eq!(schema_version_of(&db).await, Some(first), "held back");

    // Deleting the failed Job retries; a success lets the migration run.
    env.remove_job(&job).await;
    let school = reconcile_once(&env, "upgr").await;
    assert_eq!(condition(&school, "Ready").1, "BackupBeforeMigration");
    env.finish_job(
        &job,
        true,
        &RunResult::success("backup", "upgr-before.dump", 4242).to_json(),
    )
    .await;
    let school = reconcile_once(&env, "upgr").await;
    assert_eq!(condition(&school, "Ready").0, "True");
    assert_eq!(schema_version_of(&db).await, Some(latest));
    let status = school.status.unwrap();
    assert_eq!(status.schema_version, Some(latest));
    let record = status.pre_migration_backup.expect("recorded in status");
    assert_eq!((record.from_version, record.to_version), (first, latest));
    assert_eq!(record.job, job);
    assert_eq!(record.object.as_deref(), Some("upgr-before.dump"));

    // Switched off for one School: no Job, migrated at once.
    let db = older("nogate", json!({"backup": {"beforeMigration": false}})).await;
    let school = reconcile_once(&env, "nogate").await;
    assert_eq!(condition(&school, "Ready").0, "True");
    assert_eq!(schema_version_of(&db).await, Some(latest));
    let no_job = edumind_operator::premigration::job_name("nogate", latest);
    assert!(env.api::<Job>().get_opt(&no_job).await.unwrap().is_none());
}
