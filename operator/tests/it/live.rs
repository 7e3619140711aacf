//! The real `edumind-operator run` process against the stand-in API server
//! (`edumind_tests::kubeapi`) and the harness PostgreSQL: everything it does is driven by
//! its watches (Schools, owned Secrets and CronJobs, Jobs, SchoolBackups, SchoolRestores),
//! never by a test calling a reconcile function. The resync period is 10 minutes, so a
//! reaction within seconds proves the watch that carried it.
//!
//! The test plays the user (creating and deleting objects through the API) and the Job
//! controller and kubelet (a Job's Pod with the runner's termination message, then the
//! Job's status), as `backupops.rs` does against the in-memory fake.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::future::Future;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use edumind_crds::{School, SchoolBackup, SchoolRestore};
use edumind_operator::backup::RunResult;
use edumind_operator::backupjobs;
use edumind_operator::naming::secret_name;
use edumind_tests::kubeapi::{KubeApi, Options, Recorded};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;

use crate::support::{ADMIN_SECRET, OPERATOR_NS, admin_secret, postgres, stand_in};

/// Polls `check` every 100 ms until it returns `Some`, or panics after `limit`.
pub async fn eventually<T, F, Fut>(limit: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One operator process: killed when dropped.
pub struct Operator {
    pub child: tokio::process::Child,
    pub identity: String,
    pub log: PathBuf,
}

impl Operator {
    /// SIGKILL: no Lease release, no clean shutdown.
    pub async fn kill(&mut self) {
        self.child.start_kill().unwrap();
        let _ = self.child.wait().await;
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// A stand-in API server holding the admin Secret, the harness PostgreSQL as target
/// server `main`, and the operator processes started against them.
pub struct Live {
    pub api: KubeApi,
    pub client: Client,
    pub dir: tempfile::TempDir,
    pub ns: String,
    pub tag: String,
    pub operators: Vec<Operator>,
}

impl Live {
    pub async fn start(options: Options) -> Live {
        let pg = postgres().await;
        Self::start_at(options, pg.port).await
    }

    /// [`Live::start`] with the target server `main` at `port` of the harness host (a
    /// closed port, or a forwarder to the harness PostgreSQL).
    pub async fn start_at(options: Options, port: u16) -> Live {
        let pg = postgres().await;
        let (api, client) = stand_in(options).await;
        Api::<Secret>::namespaced(client.clone(), OPERATOR_NS)
            .create(&PostParams::default(), &admin_secret(pg).await)
            .await
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("servers.yaml"),
            format!(
                "servers:\n- {{name: main, host: '{}', port: {}, adminSecret: {ADMIN_SECRET}, default: true}}\n",
                pg.host, port
            ),
        )
        .unwrap();
        api.write_kubeconfig(dir.path(), OPERATOR_NS).unwrap();
        let tag = edumind_tests::random_token(6);
        Live {
            api,
            client,
            dir,
            ns: format!("live-{tag}"),
            tag,
            operators: Vec::new(),
        }
    }

    /// Starts `edumind-operator run` as `identity` with `extra` arguments.
    pub fn spawn(&mut self, identity: &str, extra: &[&str]) -> &mut Operator {
        let log = self.dir.path().join(format!("{identity}.log"));
        let out = std::fs::File::create(&log).unwrap();
        let err = out.try_clone().unwrap();
        let config = self.dir.path().join("servers.yaml");
        let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_edumind-operator"))
            .arg("run")
            .arg("--config")
            .arg(&config)
            .args(["--namespace", OPERATOR_NS, "--identity", identity])
            .args(if extra.contains(&"--http-addr") {
                &[][..]
            } else {
                &["--http-addr", "127.0.0.1:0"][..]
            })
            .args(extra)
            .env("KUBECONFIG", self.dir.path().join("kubeconfig"))
            .env("RUST_LOG", "info,kube=warn")
            .stdout(out)
            .stderr(err)
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        self.operators.push(Operator {
            child,
            identity: identity.into(),
            log,
        });
        self.operators.last_mut().unwrap()
    }

    pub fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
    {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    /// Creates a School `name` with a unique code and `extra` spec fields.
    pub async fn create_school(&self, name: &str, extra: serde_json::Value) -> School {
        let mut spec = json!({"code": format!("{name}-{}", self.tag), "name": name,
            "address": "1 Main St", "contactEmail": "office@school.example"});
        spec.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        let school: School = serde_json::from_value(json!({"apiVersion": "edumind.ai/v1alpha1",
            "kind": "School", "metadata": {"name": name, "namespace": self.ns}, "spec": spec}))
        .unwrap();
        self.api::<School>()
            .create(&PostParams::default(), &school)
            .await
            .unwrap()
    }

    /// Waits until the School is `Ready=True`.
    pub async fn ready(&self, name: &str, limit: Duration) -> School {
        let schools = self.api::<School>();
        eventually(limit, &format!("School {name} Ready"), || {
            let schools = schools.clone();
            async move {
                let s = schools.get_opt(name).await.ok()??;
                let ready = s
                    .status
                    .as_ref()?
                    .conditions
                    .iter()
                    .any(|c| c.type_ == "Ready" && c.status == "True");
                ready.then_some(s)
            }
        })
        .await
    }

    /// Plays the Job controller and kubelet: the Job's Pod terminated with `result` as
    /// termination message, then the Job's `Complete` (or `Failed`) condition.
    pub async fn finish_job(&self, job: &str, ok: bool, result: &RunResult) {
        let jobs = self.api::<Job>();
        let created = jobs.get(job).await.unwrap();
        let school_id = created
            .labels()
            .get(edumind_crds::connection::LABEL_SCHOOL_ID)
            .cloned()
            .unwrap_or_default();
        let pods = self.api::<Pod>();
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": format!("{job}-pod"), "namespace": self.ns,
                "labels": {backupjobs::LABEL_JOB_NAME: job,
                    edumind_crds::connection::LABEL_SCHOOL_ID: school_id}},
            "spec": {"containers": [{"name": backupjobs::CONTAINER, "image": "x"}]}}))
        .unwrap();
        pods.create(&PostParams::default(), &pod).await.unwrap();
        let now = k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            k8s_openapi::jiff::Timestamp::now(),
        );
        pods.patch_status(
            &format!("{job}-pod"),
            &PatchParams::default(),
            &Patch::Merge(
                json!({"status": {"containerStatuses": [{"name": backupjobs::CONTAINER,
                "image": "x", "imageID": "", "ready": false, "restartCount": 0,
                "state": {"terminated": {"exitCode": if ok { 0 } else { 1 },
                    "message": result.to_json(), "finishedAt": now}}}]}}),
            ),
        )
        .await
        .unwrap();
        let condition = if ok { "Complete" } else { "Failed" };
        jobs.patch_status(
            job,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {
                "completionTime": if ok { Some(&now) } else { None },
                "conditions": [{"type": condition, "status": "True", "lastTransitionTime": now,
                    "reason": if ok { "Completed" } else { "BackoffLimitExceeded" }}]}})),
        )
        .await
        .unwrap();
    }

    /// Waits until the operator has sent no request but watches and Lease renewals for
    /// 1.5 s: the reconciles that the last changes caused are over, so whatever happens
    /// next is caused by what the test does next.
    pub async fn settle(&self) {
        let busy = |r: &Recorded| r.verb != "watch" && r.resource != "leases";
        let mut last = (usize::MAX, Instant::now());
        eventually(Duration::from_secs(30), "the operator settles", || {
            let count = self.operator_requests().iter().filter(|r| busy(r)).count();
            if count != last.0 {
                last = (count, Instant::now());
            }
            let quiet = last.1.elapsed() >= Duration::from_millis(1500);
            async move { quiet.then_some(()) }
        })
        .await;
    }

    /// The identity holding the leader Lease, if any.
    pub async fn leader(&self) -> Option<String> {
        let leases: Api<Lease> = Api::namespaced(self.client.clone(), OPERATOR_NS);
        leases
            .get_opt(edumind_operator::leader::LEASE_NAME)
            .await
            .ok()??
            .spec?
            .holder_identity
    }

    /// The requests of the operator processes (by their user agent) since the start.
    pub fn operator_requests(&self) -> Vec<Recorded> {
        let mut requests = self.api.requests();
        requests.retain(|r| r.user_agent == edumind_operator::run::USER_AGENT);
        requests
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for o in &self.operators {
                eprintln!("--- {} log ---\n{}", o.identity, o.logs());
            }
        }
    }
}

async fn exists_db(name: &str) -> bool {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
        .bind(name)
        .fetch_one(&mut postgres().await.admin().await)
        .await
        .unwrap()
}

const PVC: &str = r#"{"storage": {"persistentVolumeClaim": "backups"}}"#;

fn with_storage() -> serde_json::Value {
    json!({"backup": serde_json::from_str::<serde_json::Value>(PVC).unwrap()})
}

#[tokio::test]
async fn a_school_becomes_ready_with_secret_cron_job_status_and_events() {
    let mut live = Live::start(Options::default()).await;
    live.spawn("op-a", &[]);
    live.create_school("lincoln", with_storage()).await;
    let school = live.ready("lincoln", Duration::from_secs(60)).await;
    let status = school.status.clone().unwrap();
    assert_eq!(status.phase.as_deref(), Some("Ready"));
    assert_eq!(status.observed_generation, Some(1));
    let database = status.database.clone().unwrap();
    assert!(exists_db(&database).await, "{database}");
    let secret = live
        .api::<Secret>()
        .get(&secret_name("lincoln"))
        .await
        .unwrap();
    assert!(secret.data.unwrap().contains_key("uri"));
    // Owned: the School's garbage collection and the Secret watch depend on it.
    let owner = &secret.metadata.owner_references.unwrap()[0];
    assert_eq!(owner.uid, school.uid().unwrap());
    let cron = live
        .api::<CronJob>()
        .get(&backupjobs::cron_job_name("lincoln"))
        .await
        .unwrap();
    assert_eq!(cron.spec.unwrap().schedule, "0 2 * * *");
    let events: Vec<Event> = eventually(Duration::from_secs(10), "an event", || async {
        let list = live
            .api::<Event>()
            .list(&ListParams::default())
            .await
            .ok()?;
        (!list.items.is_empty()).then_some(list.items)
    })
    .await;
    assert!(
        events
            .iter()
            .any(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("lincoln")),
        "{events:?}"
    );
    // The controllers listed and watched every kind they follow.
    let requests = live.operator_requests();
    for resource in [
        "schools",
        "secrets",
        "cronjobs",
        "jobs",
        "schoolbackups",
        "schoolrestores",
    ] {
        for verb in ["list", "watch"] {
            assert!(
                requests
                    .iter()
                    .any(|r| r.resource == resource && r.verb == verb),
                "no {verb} of {resource}"
            );
        }
    }
}

#[tokio::test]
async fn a_deleted_secret_comes_back_through_the_owned_object_watch() {
    let mut live = Live::start(Options::default()).await;
    live.spawn("op-a", &[]);
    live.create_school("hoover", json!({})).await;
    live.ready("hoover", Duration::from_secs(60)).await;
    live.settle().await;
    let secrets = live.api::<Secret>();
    let name = secret_name("hoover");
    let before = secrets.get(&name).await.unwrap();
    secrets
        .delete(&name, &DeleteParams::default())
        .await
        .unwrap();
    // No resync within 10 minutes: only the Secret watch can bring it back this soon.
    let after = eventually(Duration::from_secs(15), "Secret recreated", || {
        let secrets = secrets.clone();
        let name = name.clone();
        async move { secrets.get_opt(&name).await.ok()? }
    })
    .await;
    assert_ne!(after.uid(), before.uid());
    // The password cannot be read back from the database: a new one was set.
    assert!(after.data.unwrap().contains_key("uri"));
    assert!(before.data.unwrap().contains_key("uri"));
}

#[tokio::test]
async fn a_finished_backup_job_reaches_school_status_through_the_job_watch() {
    let mut live = Live::start(Options::default()).await;
    live.spawn("op-a", &[]);
    live.create_school("bk", with_storage()).await;
    live.ready("bk", Duration::from_secs(60)).await;
    live.settle().await;
    // The CronJob fires: its Job, from the template, as the CronJob controller makes it.
    let cron = live
        .api::<CronJob>()
        .get(&backupjobs::cron_job_name("bk"))
        .await
        .unwrap();
    let template = cron.spec.unwrap().job_template;
    let job: Job = serde_json::from_value(json!({
        "metadata": {"name": "bk-backup-1", "namespace": live.ns,
            "labels": template.metadata.clone().unwrap().labels,
            "annotations": template.metadata.clone().unwrap().annotations,
            "ownerReferences": [{"apiVersion": "batch/v1", "kind": "CronJob",
                "name": cron.metadata.name, "uid": cron.metadata.uid, "controller": true}]},
        "spec": template.spec}))
    .unwrap();
    live.api::<Job>()
        .create(&PostParams::default(), &job)
        .await
        .unwrap();
    live.finish_job(
        "bk-backup-1",
        true,
        &RunResult::success("backup", "bk/scheduled.dump", 10),
    )
    .await;
    let schools = live.api::<School>();
    eventually(Duration::from_secs(15), "status.backup.lastSuccess", || {
        let schools = schools.clone();
        async move {
            let s = schools.get("bk").await.ok()?;
            let last = s.status?.backup?.last_success?;
            (last.object == "bk/scheduled.dump").then_some(())
        }
    })
    .await;
}

#[tokio::test]
async fn school_backup_and_school_restore_run_through_their_controllers() {
    let mut live = Live::start(Options::default()).await;
    live.spawn("op-a", &[]);
    live.create_school("br", with_storage()).await;
    live.ready("br", Duration::from_secs(60)).await;

    let backups = live.api::<SchoolBackup>();
    let sb: SchoolBackup = serde_json::from_value(json!({"apiVersion": "edumind.ai/v1alpha1",
        "kind": "SchoolBackup", "metadata": {"name": "now", "namespace": live.ns},
        "spec": {"school": "br"}}))
    .unwrap();
    backups.create(&PostParams::default(), &sb).await.unwrap();
    let job = eventually(Duration::from_secs(15), "backup Job", || {
        let backups = backups.clone();
        async move { backups.get("now").await.ok()?.status?.job }
    })
    .await;
    // The controllers poll a running Job every 15 s (counted from their last reconcile,
    // before `settle`'s 1.5 s): within 10 s only the Job watch can have carried its end.
    live.settle().await;
    live.finish_job(&job, true, &RunResult::success("backup", "br/now.dump", 10))
        .await;
    eventually(Duration::from_secs(10), "SchoolBackup Succeeded", || {
        let backups = backups.clone();
        async move {
            let phase = backups.get("now").await.ok()?.status?.phase?;
            (phase == "Succeeded").then_some(())
        }
    })
    .await;

    let restores = live.api::<SchoolRestore>();
    let sr: SchoolRestore = serde_json::from_value(json!({"apiVersion": "edumind.ai/v1alpha1",
        "kind": "SchoolRestore", "metadata": {"name": "undo", "namespace": live.ns},
        "spec": {"school": "br", "backup": "latest"}}))
    .unwrap();
    restores.create(&PostParams::default(), &sr).await.unwrap();
    let job = eventually(Duration::from_secs(15), "restore Job", || {
        let restores = restores.clone();
        async move {
            let st = restores.get("undo").await.ok()?.status?;
            (st.phase.as_deref() == Some("Restoring")).then_some(st.job?)
        }
    })
    .await;
    live.finish_job(
        &job,
        true,
        &RunResult::success("restore", "br/now.dump", 10),
    )
    .await;
    // Succeeded, and the restore finalizer released (a second write).
    eventually(Duration::from_secs(10), "SchoolRestore Succeeded", || {
        let restores = restores.clone();
        async move {
            let r = restores.get("undo").await.ok()?;
            let done = r.status.as_ref()?.phase.as_deref() == Some("Succeeded");
            (done && r.finalizers().is_empty()).then_some(())
        }
    })
    .await;
}

#[tokio::test]
async fn deletion_runs_each_reclaim_policy_through_the_finalizer() {
    let mut live = Live::start(Options::default()).await;
    live.spawn("op-a", &[]);
    let schools = live.api::<School>();
    let mut databases = Vec::new();
    for (name, policy) in [("keep", "retain"), ("drop", "delete"), ("snap", "snapshot")] {
        let mut extra = with_storage();
        extra["reclaimPolicy"] = json!(policy);
        live.create_school(name, extra).await;
    }
    for name in ["keep", "drop", "snap"] {
        let s = live.ready(name, Duration::from_secs(90)).await;
        assert!(
            s.finalizers()
                .iter()
                .any(|f| f == edumind_operator::school::FINALIZER)
        );
        databases.push(s.status.unwrap().database.unwrap());
        schools
            .delete(name, &DeleteParams::default())
            .await
            .unwrap();
    }
    let gone = |name: &'static str| {
        let schools = schools.clone();
        async move { schools.get_opt(name).await.ok()?.is_none().then_some(()) }
    };
    eventually(Duration::from_secs(15), "keep deleted", || gone("keep")).await;
    eventually(Duration::from_secs(15), "drop deleted", || gone("drop")).await;
    assert!(exists_db(&databases[0]).await, "retain keeps the database");
    assert!(!exists_db(&databases[1]).await, "delete drops the database");
    // Snapshot: the final backup Job first; the School stays until it succeeded.
    let final_job = backupjobs::final_job_name("snap");
    let jobs = live.api::<Job>();
    eventually(Duration::from_secs(15), "final backup Job", || {
        let jobs = jobs.clone();
        let final_job = final_job.clone();
        async move { jobs.get_opt(&final_job).await.ok()? }
    })
    .await;
    assert!(schools.get_opt("snap").await.unwrap().is_some());
    assert!(exists_db(&databases[2]).await);
    live.finish_job(
        &final_job,
        true,
        &RunResult::success("backup", "snap/final.dump", 10),
    )
    .await;
    eventually(Duration::from_secs(15), "snap deleted", || gone("snap")).await;
    assert!(
        !exists_db(&databases[2]).await,
        "snapshot drops after the final backup"
    );
    // The Secrets went with their owners (garbage collection).
    for name in ["keep", "drop", "snap"] {
        assert!(
            live.api::<Secret>()
                .get_opt(&secret_name(name))
                .await
                .unwrap()
                .is_none()
        );
    }
}

#[tokio::test]
async fn a_standby_takes_over_within_the_lease_duration_after_the_leader_is_killed() {
    let mut live = Live::start(Options::default()).await;
    live.spawn("op-a", &[]);
    live.spawn("op-b", &[]);
    let leader = eventually(Duration::from_secs(20), "a leader", || live.leader()).await;
    live.create_school("before", json!({})).await;
    live.ready("before", Duration::from_secs(60)).await;
    let index = live
        .operators
        .iter()
        .position(|o| o.identity == leader)
        .unwrap();
    let killed_at = Instant::now();
    live.operators[index].kill().await;
    // Created while nobody leads.
    live.create_school("meanwhile", json!({})).await;
    let other = eventually(Duration::from_secs(30), "a new leader", || async {
        live.leader().await.filter(|l| *l != leader)
    })
    .await;
    let takeover = killed_at.elapsed();
    // The Lease expires at most LEASE_DURATION after the last renewal; the standby
    // retries every RENEW_EVERY (5 s).
    assert!(
        takeover <= edumind_operator::leader::LEASE_DURATION + Duration::from_secs(5),
        "{other} took over after {takeover:?}"
    );
    live.ready("meanwhile", Duration::from_secs(60)).await;
    eprintln!("takeover after {takeover:?}");
}

#[tokio::test]
async fn broken_watches_and_410_gone_are_recovered_by_relisting() {
    let mut live = Live::start(Options::default()).await;
    live.spawn("op-a", &[]);
    live.create_school("first", json!({})).await;
    live.ready("first", Duration::from_secs(60)).await;
    let before = live.operator_requests().len();
    // Every stream closes and every resourceVersion handed out so far is gone: each
    // watcher's resume answers 410 and it must list again.
    live.api.compact();
    live.api.break_watches();
    // Changes while the watchers recover.
    live.api::<Secret>()
        .delete(&secret_name("first"), &DeleteParams::default())
        .await
        .unwrap();
    live.create_school("second", json!({})).await;
    live.ready("second", Duration::from_secs(60)).await;
    eventually(Duration::from_secs(15), "Secret recreated", || async {
        live.api::<Secret>()
            .get_opt(&secret_name("first"))
            .await
            .ok()?
    })
    .await;
    let after = &live.operator_requests()[before..];
    for resource in ["schools", "secrets"] {
        assert!(
            after
                .iter()
                .any(|r| r.resource == resource && r.verb == "list"),
            "{resource} relisted"
        );
    }
}

#[tokio::test]
async fn steady_state_is_watches_and_lease_renewals_only() {
    let n: usize = std::env::var("EDUMIND_STEADY_SCHOOLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    let window = Duration::from_secs(60);
    let mut live = Live::start(Options::default()).await;
    live.spawn("op-a", &["--concurrency", "8"]);
    for i in 0..n {
        live.create_school(&format!("s{i}"), json!({})).await;
    }
    for i in 0..n {
        live.ready(&format!("s{i}"), Duration::from_secs(300)).await;
    }
    // Let the last status writes and events settle, then watch for a minute.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let start = live.operator_requests().len();
    tokio::time::sleep(window).await;
    let during: Vec<Recorded> = live.operator_requests()[start..].to_vec();
    let unexpected: Vec<&Recorded> = during
        .iter()
        .filter(|r| {
            !(r.verb == "watch"
                || (r.resource == "leases" && matches!(r.verb.as_str(), "get" | "update")))
        })
        .collect();
    assert!(
        unexpected.is_empty(),
        "{n} Ready Schools, idle: {unexpected:#?}"
    );
    let renewals = during
        .iter()
        .filter(|r| r.resource == "leases" && r.verb == "update")
        .count();
    assert!(renewals >= 10, "the Lease is renewed every 5 s: {renewals}");
    eprintln!(
        "{n} Schools, {window:?} idle: {} requests ({renewals} Lease renewals)",
        during.len()
    );
}

/// A front for the harness PostgreSQL on a port of its own: while `up` is false it
/// accepts each connection and closes it at once (the server is down behind it: every
/// connection attempt fails immediately), then it forwards to PostgreSQL.
async fn flaky_front(to: u16, up: std::sync::Arc<std::sync::atomic::AtomicBool>) -> u16 {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
        .await
        .unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            if !up.load(std::sync::atomic::Ordering::SeqCst) {
                // Close cleanly (EOF, never a reset), so that every attempt fails alike.
                tokio::spawn(async move {
                    use tokio::io::{AsyncReadExt, AsyncWriteExt};
                    let _ = inbound.shutdown().await;
                    let mut sink = [0u8; 1024];
                    while matches!(inbound.read(&mut sink).await, Ok(n) if n > 0) {}
                });
                continue;
            }
            tokio::spawn(async move {
                if let Ok(mut outbound) = tokio::net::TcpStream::connect(("127.0.0.1", to)).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    });
    port
}

#[tokio::test]
async fn transient_errors_back_off_exponentially_and_recover_when_the_server_returns() {
    let pg = postgres().await;
    let up = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let port = flaky_front(pg.port, up.clone()).await;
    let mut live = Live::start_at(Options::default(), port).await;
    // 200 ms doubling to 6.4 s: the shape of the default 1 s → 5 min, in test time.
    live.spawn(
        "op-a",
        &["--retry-base-ms", "200", "--retry-max-ms", "6400"],
    );
    live.create_school("flaky", json!({})).await;
    // Each reconcile attempt lists the namespace's SchoolRestores once.
    let attempts = |live: &Live| -> Vec<Duration> {
        live.operator_requests()
            .iter()
            .filter(|r| {
                r.resource == "schoolrestores" && r.verb == "list" && r.namespace == live.ns
            })
            .map(|r| r.at)
            .collect()
    };
    let started = Instant::now();
    eventually(
        Duration::from_secs(40),
        "backoff reaches its cap",
        || async {
            let a = attempts(&live);
            let gaps: Vec<f64> = a.windows(2).map(|w| (w[1] - w[0]).as_secs_f64()).collect();
            gaps.iter().any(|g| *g > 5.0).then_some(())
        },
    )
    .await;
    let failing = live.api::<School>().get("flaky").await.unwrap();
    let ready = failing
        .status
        .unwrap()
        .conditions
        .into_iter()
        .find(|c| c.type_ == "Ready")
        .unwrap();
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", "DatabaseServerError")
    );
    let a = attempts(&live);
    let gaps: Vec<f64> = a.windows(2).map(|w| (w[1] - w[0]).as_secs_f64()).collect();
    eprintln!(
        "attempt intervals (s): {gaps:.2?} over {:?}",
        started.elapsed()
    );
    // Intervals of the backoff-driven attempts (those not woken by the School's own
    // writes) grow: each at least 1.3× the one before (2× nominal, ±20 % jitter).
    let timed: Vec<f64> = gaps.iter().copied().filter(|g| *g >= 0.15).collect();
    assert!(timed.len() >= 3, "{gaps:?}");
    for w in timed.windows(2) {
        assert!(
            w[1] >= w[0] * 1.3 || w[1] >= 3.2 * 0.8,
            "intervals grow: {gaps:?}"
        );
    }
    assert!(
        a.len() <= 12,
        "no tight retry loop: {} attempts in {:?}",
        a.len(),
        started.elapsed()
    );
    // The server comes back: Ready within one capped interval (6.4 s + 20 %) and margin.
    let back = Instant::now();
    up.store(true, std::sync::atomic::Ordering::SeqCst);
    live.ready("flaky", Duration::from_secs(12)).await;
    eprintln!("Ready {:?} after the server came back", back.elapsed());
}

/// GET `path` from the operator's HTTP endpoint.
async fn http_get(port: u16, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

/// The `q` quantile of the reconcile duration histogram, as its bucket's upper bound.
fn quantile(metrics: &str, q: f64) -> String {
    let buckets: Vec<(String, f64)> = metrics
        .lines()
        .filter(|l| l.starts_with("edumind_operator_reconcile_duration_seconds_bucket"))
        .filter_map(|l| {
            let le = l.split("le=\"").nth(1)?.split('"').next()?.to_string();
            let count: f64 = l.rsplit(' ').next()?.parse().ok()?;
            Some((le, count))
        })
        .collect();
    let total = buckets.last().map(|b| b.1).unwrap_or(0.0);
    buckets
        .iter()
        .find(|(_, c)| *c >= q * total)
        .map(|(le, _)| format!("≤ {le} s"))
        .unwrap_or_default()
}

/// (user + system CPU seconds, peak RSS in MiB) of a process.
fn cpu_and_peak(pid: u32) -> (f64, f64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // After the command name: state is field 3, utime 14 and stime 15 (1-based).
    let cpu = (ticks(11) + ticks(12)) / 100.0;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let hwm_kb: f64 = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0.0);
    (cpu, hwm_kb / 1024.0)
}

/// The fleet benchmark (not a timed test; not in CI): `EDUMIND_FLEET_SCHOOLS` (default
/// 1,000) Schools created at once against the stand-in API and the harness PostgreSQL;
/// time until all are Ready, operator peak memory, API requests per School, reconcile
/// p50/p99, then a minute of steady state; then `edumind-local` provisioning the same
/// number on the same server (build it first, in the same profile: `cargo build -p
/// edumind-local`). Prints `BENCH` lines (see docs/testing.md).
/// `cargo test -p edumind-operator --test it -- --ignored fleet_benchmark --nocapture`
#[tokio::test]
#[ignore = "benchmark: minutes; run by hand"]
async fn fleet_benchmark() {
    let n: usize = std::env::var("EDUMIND_FLEET_SCHOOLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let pg = postgres().await;
    let mut live = Live::start(Options::default()).await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let pid = live
        .spawn("op-bench", &["--http-addr", &addr])
        .child
        .id()
        .unwrap();
    eventually(Duration::from_secs(20), "leader", || live.leader()).await;
    let start = Instant::now();
    for i in 0..n {
        live.create_school(&format!("f{i}"), json!({})).await;
    }
    let created = start.elapsed();
    let schools = live.api::<School>();
    eventually(Duration::from_secs(7200), "all Ready", || {
        let schools = schools.clone();
        async move {
            let list = schools.list(&ListParams::default()).await.ok()?;
            let ready = list
                .items
                .iter()
                .filter(|s| {
                    s.status.as_ref().is_some_and(|st| {
                        st.conditions
                            .iter()
                            .any(|c| c.type_ == "Ready" && c.status == "True")
                    })
                })
                .count();
            (ready == n).then_some(())
        }
    })
    .await;
    let to_ready = start.elapsed();
    live.settle().await;
    let provisioning = live.operator_requests();
    let metrics = http_get(port, "/metrics").await;
    let (cpu0, peak) = cpu_and_peak(pid);
    let before = provisioning.len();
    tokio::time::sleep(Duration::from_secs(60)).await;
    let steady: Vec<Recorded> = live.operator_requests()[before..].to_vec();
    let (cpu1, peak_after) = cpu_and_peak(pid);
    let mut by_verb = std::collections::BTreeMap::<String, usize>::new();
    for r in &steady {
        *by_verb
            .entry(format!("{} {}", r.verb, r.resource))
            .or_default() += 1;
    }
    let writes = steady
        .iter()
        .filter(|r| r.is_write() && r.resource != "leases")
        .count();
    eprintln!(
        "operator: {n} Schools created in {created:?}, all Ready after {to_ready:?}; peak RSS {peak:.1} MiB \
         ({peak_after:.1} after the steady minute); {:.1} API requests per School; reconcile p50 {} p99 {}",
        provisioning.len() as f64 / n as f64,
        quantile(&metrics, 0.5),
        quantile(&metrics, 0.99)
    );
    eprintln!(
        "steady minute: {} requests {by_verb:?}, {writes} reconcile writes, CPU {:.2} s",
        steady.len(),
        cpu1 - cpu0
    );
    live.operators.clear();
    let one_run = format!(
        "one run of {n} Schools (not alternated: each side takes minutes), debug build unless \
         built with --release, shared 2-core machine"
    );
    let bench = |name: &str, value: f64, unit: &str, target: &str, notes: String| {
        println!(
            "BENCH {}",
            json!({"name": name, "value": value, "unit": unit, "baseline_name": null,
                   "baseline": null, "ratio": null, "target": target, "rounds": [],
                   "notes": notes})
        );
    };
    bench(
        "fleet-operator-peak-rss",
        peak.max(peak_after),
        "MiB",
        "<= 100",
        format!("VmHWM of `edumind-operator run` over provisioning and the idle minute; {one_run}"),
    );
    bench(
        "fleet-api-requests-per-school",
        provisioning.len() as f64 / n as f64,
        "requests",
        "",
        format!("every request the operator made until settled, / {n}; {one_run}"),
    );
    bench(
        "fleet-reconcile-p50",
        quantile_seconds(&metrics, 0.5),
        "s",
        "",
        format!("upper bound of the histogram bucket holding the median reconcile; {one_run}"),
    );
    bench(
        "fleet-reconcile-p99",
        quantile_seconds(&metrics, 0.99),
        "s",
        "",
        format!("upper bound of the histogram bucket holding the 99th percentile; {one_run}"),
    );
    bench(
        "fleet-steady-requests-per-minute",
        steady.len() as f64,
        "requests",
        "watches and Lease renewals only",
        format!("{by_verb:?}; {one_run}"),
    );
    bench(
        "fleet-steady-reconcile-writes",
        writes as f64,
        "requests",
        "== 0",
        format!("writes other than Lease renewals in the idle minute; {one_run}"),
    );
    bench(
        "fleet-steady-cpu",
        cpu1 - cpu0,
        "s CPU per minute",
        "",
        format!("user + system CPU of the operator in the idle minute; {one_run}"),
    );

    // edumind-local on the same server, same number of Schools.
    // Beside the operator binary: the same profile (debug or release) as this run.
    let bin = std::env::var("EDUMIND_LOCAL_BIN").unwrap_or_else(|_| {
        std::path::Path::new(env!("CARGO_BIN_EXE_edumind-operator"))
            .with_file_name("edumind-local")
            .display()
            .to_string()
    });
    if !std::path::Path::new(&bin).is_file() {
        eprintln!("edumind-local not built ({bin}): cargo build -p edumind-local");
        return;
    }
    let manifests = live.dir.path().join("schools");
    std::fs::create_dir_all(&manifests).unwrap();
    for i in 0..n {
        std::fs::write(
            manifests.join(format!("l{i}.yaml")),
            format!(
                "apiVersion: edumind.ai/v1alpha1\nkind: School\nmetadata: {{name: l{i}, namespace: local-{tag}}}\n\
                 spec: {{code: l{i}-{tag}, name: L{i}, contactEmail: a@b.example}}\n",
                tag = live.tag
            ),
        )
        .unwrap();
    }
    let start = Instant::now();
    let out = tokio::process::Command::new(&bin)
        .arg("--config")
        .arg(live.dir.path().join("servers.yaml"))
        .arg("--schools")
        .arg(&manifests)
        .arg("--out")
        .arg(live.dir.path().join("secrets"))
        .env("EDUMIND_ADMIN_URL", pg.admin_url())
        .output()
        .await
        .unwrap();
    let local = start.elapsed();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!(
        "edumind-local: {n} Schools Ready after {local:?}; operator/local = {:.2}",
        to_ready.as_secs_f64() / local.as_secs_f64()
    );
    println!(
        "BENCH {}",
        json!({"name": "fleet-time-to-all-ready", "value": to_ready.as_secs_f64(), "unit": "s",
               "baseline_name": "edumind-local provisioning the same number",
               "baseline": local.as_secs_f64(),
               "ratio": to_ready.as_secs_f64() / local.as_secs_f64(), "target": "<= 1.5",
               "rounds": [[to_ready.as_secs_f64(), local.as_secs_f64()]],
               "notes": format!("ratio = value/baseline (times, lower is better); created in \
                   {:.1} s; {one_run}", created.as_secs_f64())})
    );
}

/// The upper bound (seconds) of the reconcile-duration bucket holding quantile `q`.
fn quantile_seconds(metrics: &str, q: f64) -> f64 {
    quantile(metrics, q)
        .trim_start_matches("≤ ")
        .trim_end_matches(" s")
        .parse()
        .unwrap_or(f64::NAN)
}
