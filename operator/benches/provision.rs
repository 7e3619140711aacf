//! Provisioning benchmark: median time from a new School to Ready (role, database, 13
//! tables, Secret, status) over 20 Schools, and of re-reconciling an unchanged School,
//! against the harness PostgreSQL and the in-memory API fake. Baseline from the same
//! run: plain `CREATE DATABASE` + the embedded migrations, i.e. the unavoidable work.
//!
//! Run: `cargo bench -p edumind-operator --bench provision`
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use edumind_crds::{School, SchoolSpec};
use edumind_operator::school as reconcile;
use kube::api::PostParams;
use sqlx::{AssertSqlSafe, Connection, Executor};

// The integration tests' set-up: fake API, harness PostgreSQL, operator context.
#[path = "../tests/it/support/mod.rs"]
mod support;
use support::TestEnv;

const N: usize = 20;
const REPEATS: usize = 5;

fn stats(name: &str, mut samples: Vec<Duration>) {
    samples.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "{name:<42} n={:<3} median {:>8.2} ms   p90 {:>8.2} ms   min {:>8.2} ms   max {:>8.2} ms",
        samples.len(),
        ms(samples[samples.len() / 2]),
        ms(samples[samples.len() * 9 / 10]),
        ms(samples[0]),
        ms(samples[samples.len() - 1])
    );
}

#[tokio::main]
async fn main() {
    let env = TestEnv::builder().namespace("bench").build().await;
    let (pg, tag, ctx) = (env.pg, env.tag.clone(), env.ctx.clone());
    let api = env.schools();

    // Interleaved with the provisioning runs so both see the same server state.
    let mut admin = pg.admin().await;
    let mut baseline = Vec::new();
    let mut provision = Vec::new();
    for i in 0..N {
        let name = format!("bench_base_{tag}_{i}");
        let t = Instant::now();
        admin
            .execute(AssertSqlSafe(format!(
                "CREATE DATABASE \"{name}\" TEMPLATE template0"
            )))
            .await
            .unwrap();
        let mut conn = sqlx::PgConnection::connect(&pg.url(&name)).await.unwrap();
        edumind_schema::migrate(&mut conn).await.unwrap();
        conn.close().await.unwrap();
        baseline.push(t.elapsed());

        let spec: SchoolSpec = serde_json::from_value(serde_json::json!({"code": format!("Bench {tag} {i}"), "name": "Bench", "contactEmail": "a@b.example"})).unwrap();
        let mut s = School::new(&format!("s{i}"), spec);
        s.metadata.namespace = Some("bench".into());
        let s = api.create(&PostParams::default(), &s).await.unwrap();
        let t = Instant::now();
        reconcile::reconcile(Arc::new(s), ctx.clone())
            .await
            .unwrap();
        provision.push(t.elapsed());
    }
    let mut steady = Vec::new();
    for _ in 0..REPEATS {
        for i in 0..N {
            let s = api.get(&format!("s{i}")).await.unwrap();
            assert!(
                s.status
                    .as_ref()
                    .unwrap()
                    .conditions
                    .iter()
                    .any(|c| c.type_ == "Ready" && c.status == "True")
            );
            let t = Instant::now();
            reconcile::reconcile(Arc::new(s), ctx.clone())
                .await
                .unwrap();
            steady.push(t.elapsed());
        }
    }
    println!("PostgreSQL {}:{} (harness), {N} schools", pg.host, pg.port);
    stats("baseline: CREATE DATABASE + migrations", baseline);
    stats("provision new School -> Ready", provision);
    stats("re-reconcile unchanged School", steady);
}
