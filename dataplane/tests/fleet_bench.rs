//! Fleet benchmark (issue 15 §3), ignored by default: `cargo test -p edumind-dataplane
//! --release --test fleet_bench -- --ignored --nocapture`.
//!
//! 1,000 tenants on one PostgreSQL server (one login role and Secret file each, spread over
//! a few migrated databases), connection budget 40, 50 concurrent clients on the uncached
//! `GET /v1/tenants/{id}/students`. Prints `BENCH` lines (docs/benchmarks format):
//! * `fleet-zipf`: Zipf s = 1.1 over the 1,000 tenants vs the same load over 2 tenants;
//! * `fleet-uniform`: round-robin over the 1,000 tenants vs `pgbench -C` (a new
//!   connection per transaction) running the same statement, 50 clients;
//! * `fleet-idle-cpu`: the process's CPU per second (utime + stime from /proc) with 1,000
//!   tenants and no traffic, over 20 s, vs the 5 ms/s target.
//!
//! Every pair is measured alternately (A B A B A B). The load generator shares the
//! process (and the 2 cores) with the data plane and PostgreSQL, like every figure in the
//! same run, so the ratios are what to compare.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use edumind_dataplane::secret::Secret;
use edumind_dataplane::startup::Application;
use edumind_dataplane::tenants::{Tenant, TenantId};
use support::*;
use uuid::Uuid;

const TENANTS: usize = 1000;
const DATABASES: usize = 4;
const BUDGET: usize = 40;
const CLIENTS: usize = 50;
const ROUND: Duration = Duration::from_secs(4);
const ROUNDS: usize = 3;
const IDLE: Duration = Duration::from_secs(20);

/// The statement the data plane runs for the list (see `api/students.rs`), with the
/// values it binds written in, for pgbench.
const PGBENCH_SQL: &str = "SELECT q.doc FROM (SELECT set_config('edumind.user_id', \
    '00000000-0000-0000-0000-000000000001', true) AS uid, set_config('edumind.admin', 'on', true) AS adm) ctx \
    CROSS JOIN LATERAL (SELECT i.doc FROM (SELECT coalesce(jsonb_agg(to_jsonb(t) ORDER BY t.id), '[]'::jsonb) AS doc FROM ( \
    SELECT * FROM students s WHERE (NULL::uuid IS NULL OR s.id > NULL::uuid) \
    AND (NULL::int IS NULL OR s.grade_level = NULL::int) \
    AND (NULL::int IS NULL OR s.subscription_tier = NULL::int) \
    AND (NULL::uuid IS NULL OR s.user_id = NULL::uuid) \
    ORDER BY s.id LIMIT 50) t) i WHERE ctx.uid IS NOT NULL AND ctx.adm IS NOT NULL OFFSET 0) q;\n";

/// A small deterministic generator (xorshift64*), one per client.
struct Rng(u64);

impl Rng {
    fn next_f64(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let x = self.0.wrapping_mul(0x2545_f491_4f6c_dd1d);
        (x >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Cumulative Zipf(s) weights over `n` ranks.
fn zipf_cdf(n: usize, s: f64) -> Vec<f64> {
    let w: Vec<f64> = (1..=n).map(|k| 1.0 / (k as f64).powf(s)).collect();
    let total: f64 = w.iter().sum();
    let mut acc = 0.0;
    w.iter()
        .map(|x| {
            acc += x / total;
            acc
        })
        .collect()
}

#[derive(Clone)]
enum Pick {
    Zipf(Arc<Vec<f64>>),
    RoundRobin(Arc<AtomicUsize>, usize),
}

struct Round {
    rate: f64,
    p99_ms: f64,
    failed: usize,
}

/// `CLIENTS` clients for `ROUND`, each request on the tenant `pick` chooses.
async fn run(http: &reqwest::Client, base: &str, ids: &Arc<Vec<Uuid>>, pick: Pick) -> Round {
    let tok = token(Uuid::new_v4(), 5, None);
    let start = Instant::now();
    let until = start + ROUND;
    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        let (http, base, ids, pick, tok) = (
            http.clone(),
            base.to_owned(),
            ids.clone(),
            pick.clone(),
            tok.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ ((c as u64 + 1) * 0x1000_0001));
            let mut lat = Vec::new();
            let mut failed = 0usize;
            while Instant::now() < until {
                let i = match &pick {
                    Pick::Zipf(cdf) => {
                        let u = rng.next_f64();
                        cdf.partition_point(|x| *x < u).min(cdf.len() - 1)
                    }
                    Pick::RoundRobin(next, n) => next.fetch_add(1, Ordering::Relaxed) % n,
                };
                let t = Instant::now();
                let ok = match http
                    .get(format!("{base}/v1/tenants/{}/students", ids[i]))
                    .bearer_auth(&tok)
                    .send()
                    .await
                {
                    Ok(r) => r.status().is_success() && r.bytes().await.is_ok(),
                    Err(_) => false,
                };
                if ok {
                    lat.push(t.elapsed());
                } else {
                    failed += 1;
                }
            }
            (lat, failed)
        }));
    }
    let mut lat = Vec::new();
    let mut failed = 0;
    for t in tasks {
        let (l, f) = t.await.unwrap();
        lat.extend(l);
        failed += f;
    }
    let elapsed = start.elapsed().as_secs_f64();
    lat.sort();
    let p99 = lat
        .get((lat.len() * 99 / 100).min(lat.len().saturating_sub(1)))
        .map(|d| d.as_secs_f64() * 1000.0)
        .unwrap_or(f64::NAN);
    Round {
        rate: lat.len() as f64 / elapsed,
        p99_ms: p99,
        failed,
    }
}

/// `pgbench -C` with `CLIENTS` clients for `ROUND` on one tenant's role and database:
/// (tps, p99 latency is not reported by pgbench without a log, so the average).
fn pgbench_c(pg: &edumind_tests::PgServer, user: &str, password: &str, db: &str) -> f64 {
    let script = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(script.path(), PGBENCH_SQL).unwrap();
    let out = std::process::Command::new("pgbench")
        .env("PGPASSWORD", password)
        .args([
            "-h",
            &pg.host,
            "-p",
            &pg.port.to_string(),
            "-U",
            user,
            "-n",
            "-C",
            "-c",
            &CLIENTS.to_string(),
            "-j",
            "2",
            "-T",
            &ROUND.as_secs().to_string(),
            "-f",
            script.path().to_str().unwrap(),
            db,
        ])
        .output()
        .expect("pgbench runs");
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| {
            let l = l.trim();
            l.strip_prefix("tps = ")
                .and_then(|r| r.split_whitespace().next())
                .and_then(|v| v.parse::<f64>().ok())
        })
        .unwrap_or_else(|| {
            panic!(
                "pgbench printed no tps: {text} {}",
                String::from_utf8_lossy(&out.stderr)
            )
        })
}

/// This process's CPU time (user + system), from /proc/self/stat.
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    // Fields after the command name (which is in parentheses and may hold spaces).
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 12 and 13 here.
    let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
    // Clock ticks: Linux reports them in USER_HZ, 100 per second.
    Duration::from_millis(ticks * 10)
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

#[allow(clippy::too_many_arguments)]
fn bench_line(
    name: &str,
    value: f64,
    unit: &str,
    baseline_name: &str,
    baseline: f64,
    target: &str,
    p99_ms: Option<f64>,
    rounds: &[(f64, f64)],
    notes: &str,
) {
    let mut line = serde_json::json!({
        "name": name,
        "value": (value * 10.0).round() / 10.0,
        "unit": unit,
        "baseline_name": baseline_name,
        "baseline": (baseline * 10.0).round() / 10.0,
        "ratio": ((value / baseline) * 1000.0).round() / 1000.0,
        "target": target,
        "rounds": rounds.iter().map(|(a, b)| [(a * 10.0).round() / 10.0, (b * 10.0).round() / 10.0]).collect::<Vec<_>>(),
        "notes": notes,
    });
    if let Some(p) = p99_ms {
        line["p99_ms"] = serde_json::json!((p * 10.0).round() / 10.0);
    }
    println!("BENCH {line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn fleet() {
    let pg = edumind_tests::postgres().await;
    let mut dbs = Vec::new();
    for _ in 0..DATABASES {
        dbs.push(pg.migrated_database().await);
    }
    let password = edumind_tests::random_token(20);
    let mut admin = pg.admin().await;
    exec(&mut admin, "CREATE ROLE fleet_members NOLOGIN".into()).await;
    exec(&mut admin, format!(
        "DO $$ BEGIN FOR i IN 1..{TENANTS} LOOP \
         EXECUTE format('CREATE ROLE %I LOGIN PASSWORD %L IN ROLE fleet_members', 'ft_' || i, '{password}'); \
         END LOOP; END $$"
    )).await;
    for db in &dbs {
        let mut c = db.connect().await;
        exec(
            &mut c,
            "GRANT SELECT ON ALL TABLES IN SCHEMA public TO fleet_members".into(),
        )
        .await;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut ids = Vec::new();
    for i in 1..=TENANTS {
        let id = Uuid::new_v4();
        ids.push(id);
        write_tenant(
            dir.path(),
            &Tenant {
                tls: None,
                id: TenantId::School(id),
                code: None,
                host: pg.host.clone(),
                port: pg.port,
                dbname: dbs[i % DATABASES].name.clone(),
                username: format!("ft_{i}"),
                password: Secret::new(password.clone()),
            },
        );
    }
    let ids = Arc::new(ids);
    let mut s = settings(dir.path().to_owned(), edumind_tests::redis().await.url());
    s.pool.server_budget = BUDGET;
    s.pool.acquire_timeout_ms = 10_000;
    s.tenant_poll_ms = 2000; // the default, so the idle figure is the shipped behaviour
    let app = Application::build(s).await.unwrap();
    assert_eq!(app.state().directory.len(), TENANTS);
    let base = format!("http://127.0.0.1:{}", app.port());
    let state = app.state();
    tokio::spawn(app.run_until_stopped(std::future::pending()));
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(CLIENTS)
        .build()
        .unwrap();

    let zipf = Pick::Zipf(Arc::new(zipf_cdf(TENANTS, 1.1)));
    // The same load over 2 tenants: the same Zipf law over two ranks.
    let two = Pick::Zipf(Arc::new(zipf_cdf(2, 1.1)));
    let rr = Pick::RoundRobin(Arc::new(AtomicUsize::new(0)), TENANTS);

    // Warm-up: every tenant once, and each pattern briefly.
    let _ = run(&http, &base, &ids, rr.clone()).await;
    let _ = run(&http, &base, &ids, two.clone()).await;

    // (a) Zipf over 1,000 vs the same load over 2 tenants.
    let (mut za, mut zb, mut zp99, mut zfail) = (Vec::new(), Vec::new(), Vec::new(), 0);
    let mut two_p99 = Vec::new();
    for _ in 0..ROUNDS {
        let a = run(&http, &base, &ids, zipf.clone()).await;
        let b = run(&http, &base, &ids, two.clone()).await;
        za.push(a.rate);
        zb.push(b.rate);
        zp99.push(a.p99_ms);
        two_p99.push(b.p99_ms);
        zfail += a.failed + b.failed;
    }
    let pairs: Vec<(f64, f64)> = za.iter().copied().zip(zb.iter().copied()).collect();
    bench_line(
        "fleet-zipf",
        median(&za),
        "req/s",
        "same load over 2 tenants",
        median(&zb),
        ">= 0.5, p99 <= 50 ms",
        Some(median(&zp99)),
        &pairs,
        &format!(
            "ratio = value/baseline (higher is better); 1,000 tenants, Zipf s=1.1, budget {BUDGET}, {CLIENTS} clients, GET students (uncached); medians of {ROUNDS} rounds of {}s; 2-tenant p99 {:.1} ms; failed requests {zfail}; connections opened {}",
            ROUND.as_secs(),
            median(&two_p99),
            state.pools.opened_total()
        ),
    );

    // (b) Uniform rotation vs pgbench -C running the same statement.
    let opened_before = state.pools.opened_total();
    let (mut ua, mut ub, mut up99, mut ufail) = (Vec::new(), Vec::new(), Vec::new(), 0);
    for _ in 0..ROUNDS {
        let a = run(&http, &base, &ids, rr.clone()).await;
        let b = pgbench_c(pg, "ft_1", &password, &dbs[1].name);
        ua.push(a.rate);
        ub.push(b);
        up99.push(a.p99_ms);
        ufail += a.failed;
    }
    let pairs: Vec<(f64, f64)> = ua.iter().copied().zip(ub.iter().copied()).collect();
    bench_line(
        "fleet-uniform",
        median(&ua),
        "req/s",
        "pgbench -C (new connection per transaction), same statement",
        median(&ub),
        ">= 2x 119 req/s (238 req/s); ratio reported",
        Some(median(&up99)),
        &pairs,
        &format!(
            "ratio = value/baseline (higher is better); round-robin over 1,000 tenants, budget {BUDGET}, {CLIENTS} clients vs pgbench -C -c {CLIENTS} -j 2 on one tenant role; medians of {ROUNDS} rounds of {}s; failed requests {ufail}; connections opened {}",
            ROUND.as_secs(),
            state.pools.opened_total() - opened_before
        ),
    );

    // (c) Idle CPU with 1,000 tenants: nothing but the process's own background work.
    tokio::time::sleep(Duration::from_secs(3)).await; // closes and exits settle
    let mut idle = Vec::new();
    for _ in 0..ROUNDS {
        let (c0, t0) = (cpu_time(), Instant::now());
        tokio::time::sleep(IDLE / ROUNDS as u32).await;
        let ms = (cpu_time() - c0).as_secs_f64() * 1000.0 / t0.elapsed().as_secs_f64();
        idle.push(ms);
    }
    let total: f64 = idle.iter().sum::<f64>() / idle.len() as f64;
    let pairs: Vec<(f64, f64)> = idle.iter().map(|v| (*v, 5.0)).collect();
    bench_line(
        "fleet-idle-cpu",
        total,
        "ms CPU/s",
        "target",
        5.0,
        "<= 5 ms/s (ratio <= 1)",
        None,
        &pairs,
        &format!(
            "ratio = value/target (lower is better); /proc/self/stat utime+stime of the test process (data plane in-process, no traffic) over {}s with {TENANTS} tenant files, tenant poll 2 s; {} tenant pools cached",
            IDLE.as_secs(),
            state.pools.cached_tenants()
        ),
    );
}
