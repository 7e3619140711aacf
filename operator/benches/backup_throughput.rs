#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark: a panic is the report
//! Backup and restore throughput of the runner against plain `pg_dump` / `pg_restore` on
//! the same school database (at least 100 MB) in the same run.
//!
//! `cargo bench -p edumind-operator --bench backup_throughput` (env `BENCH_MB`, default
//! 120, sets the database size; `BENCH_ROUNDS`, default 3, the rounds; medians are shown).

use std::process::Command;
use std::time::{Duration, Instant};

use edumind_operator::backup::{self, BackupJob, BackupStore, ConnectionInfo, PgTools};
use sqlx::{AssertSqlSafe, Connection, PgConnection};

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[tokio::main]
async fn main() {
    let target_mb = env_or("BENCH_MB", 120);
    let rounds = env_or("BENCH_ROUNDS", 3) as usize;
    let pg = edumind_tests::postgres().await;
    let role = format!("bench_{}", edumind_tests::random_token(6));
    let db = format!("edumind_school_bench_{}", edumind_tests::random_token(6));
    let password = edumind_tests::random_token(20);
    let mut admin = pg.admin().await;
    sqlx::query(AssertSqlSafe(format!(
        "CREATE ROLE \"{role}\" LOGIN PASSWORD '{password}'"
    )))
    .execute(&mut admin)
    .await
    .unwrap();
    sqlx::query(AssertSqlSafe(format!(
        "CREATE DATABASE \"{db}\" OWNER \"{role}\""
    )))
    .execute(&mut admin)
    .await
    .unwrap();
    let conn_info = ConnectionInfo::new(&pg.host, pg.port, &db, &role, &password);
    let url = format!("postgres://{role}:{password}@{}:{}/{db}", pg.host, pg.port);
    let mut conn = PgConnection::connect(&url).await.unwrap();
    edumind_schema::migrate(&mut conn).await.unwrap();

    // Fill: one course, a question bank, students and their answers until the target size.
    eprintln!("filling the school database to {target_mb} MB…");
    let setup = [
        "INSERT INTO courses (id, name, code, subject, grade_level, description)
         VALUES (md5('c')::uuid, 'Physics', 'PHY', 2, 10, 'Mechanics')",
        "INSERT INTO questions (id, course_id, question_text, question_type, subject, grade_level,
                                difficulty_level, correct_answer, explanation)
         SELECT md5('q'||i)::uuid, md5('c')::uuid, repeat(md5(random()::text), 20), 0, 2, 10, i % 4,
                '\"a\"', repeat(md5(random()::text), 10)
         FROM generate_series(1, 5000) i",
        "INSERT INTO assessments (id, course_id, title, description, assessment_type, subject, grade_level)
         VALUES (md5('a')::uuid, md5('c')::uuid, 'Final', 'All questions', 1, 2, 10)",
        "INSERT INTO users (id, email, full_name, role)
         SELECT md5('u'||i)::uuid, 'u'||i||'@x.example', 'Student '||i, 4 FROM generate_series(1, 4000) i",
        "INSERT INTO students (id, user_id, grade_level) SELECT md5('s'||i)::uuid, md5('u'||i)::uuid, 10
         FROM generate_series(1, 4000) i",
        "INSERT INTO student_assessments (id, student_id, assessment_id, max_score)
         SELECT md5('sa'||i)::uuid, md5('s'||i)::uuid, md5('a')::uuid, 100 FROM generate_series(1, 4000) i",
    ];
    for sql in setup {
        sqlx::query(sql).execute(&mut conn).await.unwrap();
    }
    let mut batch = 0;
    loop {
        let size: i64 = sqlx::query_scalar("SELECT pg_database_size(current_database())")
            .fetch_one(&mut conn)
            .await
            .unwrap();
        if size as u64 >= target_mb * 1024 * 1024 {
            break;
        }
        sqlx::query(
            "INSERT INTO student_responses (id, student_assessment_id, student_id, question_id,
                 student_answer, is_correct, points_earned, max_points, time_spent_seconds,
                 question_order, feedback)
             SELECT gen_random_uuid(), md5('sa'||s)::uuid, md5('s'||s)::uuid, md5('q'||q)::uuid,
                    '\"'||md5(random()::text)||'\"', random() < 0.6, 1, 1, (random() * 90)::int, q,
                    repeat(md5(random()::text), 4)
             FROM generate_series($1 * 100 + 1, $1 * 100 + 100) s, generate_series(1, 200) q",
        )
        .bind(batch)
        .execute(&mut conn)
        .await
        .unwrap();
        batch += 1;
    }
    sqlx::query("VACUUM ANALYZE")
        .execute(&mut conn)
        .await
        .unwrap();
    let db_bytes: i64 = sqlx::query_scalar("SELECT pg_database_size(current_database())")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    drop(conn);
    let mb = db_bytes as f64 / 1024.0 / 1024.0;

    let tools = PgTools::discover().unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let store = BackupStore::directory(&scratch.path().join("store")).unwrap();
    let plain_file = scratch.path().join("plain.dump");
    let job = BackupJob {
        school_id: uuid::Uuid::new_v4().to_string(),
        retention_days: 7,
        work_dir: Some(scratch.path().to_path_buf()),
    };
    let pgpass = scratch.path().join("pgpass");
    std::fs::write(&pgpass, format!("*:*:*:{role}:{password}\n")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&pgpass, std::fs::Permissions::from_mode(0o600)).unwrap();
    let plain = |tool: &str, args: &[&str]| {
        let started = Instant::now();
        // Like the runner (backup/pgtools.rs): the password file only, whatever the
        // caller's environment holds (scripts/bench.sh exports its admin's PGPASSWORD,
        // which libpq would prefer and which failed every baseline dump).
        let status = Command::new(tools.bindir.join(tool))
            .env_remove("PGPASSWORD")
            .env_remove("PGSERVICE")
            .env("PGPASSFILE", &pgpass)
            .args([
                "-h",
                &pg.host,
                "-p",
                &pg.port.to_string(),
                "-U",
                &role,
                "-w",
            ])
            .args(args)
            .status()
            .unwrap();
        assert!(status.success(), "{tool} failed");
        started.elapsed()
    };

    let (mut plain_dump, mut plain_restore, mut ours_dump, mut ours_restore) =
        (vec![], vec![], vec![], vec![]);
    let mut dump_size = 0;
    let plain_path = plain_file.to_str().unwrap();
    for round in 0..rounds {
        eprintln!("round {}/{rounds}", round + 1);
        // A B in even rounds, B A in odd ones: neither side always runs on a warm cache.
        for ours_first in [round % 2 == 1, round % 2 == 0] {
            if ours_first {
                let now = chrono::Utc::now();
                let report = backup::run_backup(&tools, &conn_info, &store, &job, now)
                    .await
                    .unwrap();
                dump_size = report.size;
                ours_dump.push(report.duration);
                let restored = backup::run_restore(
                    &tools,
                    &conn_info,
                    &store,
                    &report.object,
                    Some(scratch.path()),
                )
                .await
                .unwrap();
                ours_restore.push(restored.duration);
            } else {
                plain_dump.push(plain(
                    "pg_dump",
                    &[
                        "-Fc",
                        "--no-sync",
                        "--no-owner",
                        "--no-privileges",
                        "-d",
                        &db,
                        "-f",
                        plain_path,
                    ],
                ));
                plain_restore.push(plain(
                    "pg_restore",
                    &[
                        "--clean",
                        "--if-exists",
                        "--no-owner",
                        "--single-transaction",
                        "-d",
                        &db,
                        plain_path,
                    ],
                ));
            }
        }
    }

    let bench = |name: &str, baseline_name: &str, ours: &[Duration], plain: &[Duration]| {
        let (value, baseline) = (median(ours.to_vec()), median(plain.to_vec()));
        let pairs: Vec<[f64; 2]> = ours
            .iter()
            .zip(plain)
            .map(|(a, b)| [a.as_secs_f64(), b.as_secs_f64()])
            .collect();
        let line = serde_json::json!({
            "name": name,
            "value": value.as_secs_f64(),
            "unit": "s",
            "baseline_name": baseline_name,
            "baseline": baseline.as_secs_f64(),
            "ratio": value.as_secs_f64() / baseline.as_secs_f64(),
            "target": "<= 1.1",
            "rounds": pairs,
            "notes": format!(
                "ratio = value/baseline (times, lower is better), medians of {rounds} alternated rounds; \
                 school database {mb:.0} MB on disk, custom-format dump {:.1} MB; \
                 directory store on the same disk; the baseline takes the runner's pg_dump \
                 options and skips the fsync of its file (the runner's pipe has none to do)",
                dump_size as f64 / 1024.0 / 1024.0
            ),
        });
        println!("BENCH {line}");
    };
    bench(
        "backup",
        "pg_dump -Fc --no-sync --no-owner --no-privileges (to a file)",
        &ours_dump,
        &plain_dump,
    );
    bench(
        "restore",
        "pg_restore --single-transaction",
        &ours_restore,
        &plain_restore,
    );

    let rate = |d: Duration| mb / d.as_secs_f64();
    let row = |name: &str, plain: Duration, ours: Duration| {
        println!(
            "| {name} | {:.2} s ({:.1} MB/s) | {:.2} s ({:.1} MB/s) | {:.2}× |",
            plain.as_secs_f64(),
            rate(plain),
            ours.as_secs_f64(),
            rate(ours),
            ours.as_secs_f64() / plain.as_secs_f64()
        )
    };
    println!(
        "\nschool database {mb:.0} MB on disk, custom-format dump {:.1} MB; median of {rounds} rounds",
        dump_size as f64 / 1024.0 / 1024.0
    );
    println!("| operation | plain pg_dump/pg_restore | edumind-operator runner | time ratio |");
    println!("| --- | --- | --- | --- |");
    row("backup", median(plain_dump), median(ours_dump));
    row("restore", median(plain_restore), median(ours_restore));
    println!(
        "(the runner also verifies every dump with a full read and uploads it, both fed from \
         pg_dump's output while it runs; restores verify while downloading, before pg_restore)"
    );
}
