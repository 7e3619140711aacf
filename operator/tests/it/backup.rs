#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report
//! Backups and restores against a real PostgreSQL with the real pg_dump/pg_restore, into
//! a directory, into an S3-compatible bucket (moto's server) and into Azure Blob Storage
//! (Azurite, the Azure Storage emulator).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use chrono::{DateTime, SubsecRound, Utc};
use edumind_operator::backup::{
    self, AzureCredentials, AzureLocation, BackupError, BackupJob, BackupStore, ConnectionInfo,
    PgTools, S3Credentials, S3Location,
};
use edumind_tests::random_token;
use sqlx::{AssertSqlSafe, Connection, PgConnection};

/// The thirteen tables of the storage spec.
const TABLES: [&str; 13] = [
    "users",
    "schools",
    "classes",
    "students",
    "courses",
    "assessments",
    "questions",
    "student_assessments",
    "student_responses",
    "workflow_executions",
    "circuit_breaker_states",
    "routing_decisions",
    "routing_statistics",
];

struct School {
    conn: ConnectionInfo,
    password: String,
    id: String,
}

/// A school database as the operator lays it out: a login role owning its database and,
/// because it ran the migrations, every table in it.
async fn school() -> School {
    let pg = edumind_tests::postgres().await;
    let role = format!("school_{}", random_token(8));
    let db = format!("edumind_school_{}", random_token(8));
    let password = format!("pw:{}\\", random_token(16)); // ':' and '\' exercise .pgpass escaping
    let mut admin = pg.admin().await;
    sqlx::query(AssertSqlSafe(format!(
        "CREATE ROLE \"{role}\" LOGIN PASSWORD '{}'",
        password.replace('\'', "''")
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
    let conn = ConnectionInfo::new(&pg.host, pg.port, &db, &role, &password);
    let mut as_school = connect(&conn, &password).await;
    edumind_schema::migrate(&mut as_school).await.unwrap();
    School {
        conn,
        password,
        id: uuid::Uuid::new_v4().to_string(),
    }
}

async fn connect(c: &ConnectionInfo, password: &str) -> PgConnection {
    let opts = sqlx::postgres::PgConnectOptions::new()
        .host(&c.host)
        .port(c.port)
        .database(&c.dbname)
        .username(&c.username)
        .password(password);
    PgConnection::connect_with(&opts).await.unwrap()
}

async fn school_conn(s: &School) -> PgConnection {
    let pg = edumind_tests::postgres().await;
    PgConnection::connect(&pg.url(&s.conn.dbname))
        .await
        .unwrap()
}

/// Puts `rows` rows into every one of the 13 tables, with NULLs, JSON, unicode and quotes.
async fn fill(conn: &mut PgConnection, rows: i32) {
    let statements = [
        "INSERT INTO users (id, email, full_name, role, school_id, external_id)
         SELECT md5('u'||i)::uuid, 'user'||i||'@school.example', 'Zoë O''Brien '||i, i % 6,
                md5('school')::uuid, CASE WHEN i % 2 = 0 THEN 'ext-'||i END
         FROM generate_series(1, $1) i",
        "INSERT INTO schools (id, name, code, address, contact_email, contact_phone)
         VALUES (md5('school')::uuid, 'Springfield High', 'SPR', '742 Evergreen Tce', 'a@b.c', NULL)",
        "INSERT INTO classes (id, school_id, name, code, grade_level, subject, teacher_ids,
                              student_ids, academic_year)
         SELECT md5('c'||i)::uuid, md5('school')::uuid, 'Class '||i, 'C'||i, 6 + i % 7, i % 5,
                '[\"'||md5('u1')::uuid||'\"]', '[]', '2025-2026'
         FROM generate_series(1, $1) i",
        "INSERT INTO students (id, user_id, school_id, class_ids, grade_level, date_of_birth,
                               parental_consent_granted, subscription_tier, level, xp_points)
         SELECT md5('s'||i)::uuid, md5('u'||i)::uuid, md5('school')::uuid, '[]', 6 + i % 7,
                DATE '2012-01-01' + i, i % 2 = 0, i % 3, 1 + i / 10, i * 10
         FROM generate_series(1, $1) i",
        "INSERT INTO courses (id, name, code, subject, grade_level, description, learning_objectives,
                              topics, board_name, metadata)
         SELECT md5('co'||i)::uuid, 'Course '||i, 'CO'||i, i % 5, 6 + i % 7, 'Δ description '||i,
                '[\"obj\"]', '[\"t1\",\"t2\"]', 'CBSE', jsonb_build_object('n', i)
         FROM generate_series(1, $1) i",
        "INSERT INTO assessments (id, course_id, title, description, assessment_type, subject,
                                  grade_level, question_ids, total_points, time_limit_minutes)
         SELECT md5('a'||i)::uuid, md5('co'||i)::uuid, 'Quiz '||i, 'd', 0, 1, 8, '[]', 10,
                NULLIF(i % 3, 0) * 15
         FROM generate_series(1, $1) i",
        "INSERT INTO questions (id, course_id, question_text, question_type, subject, grade_level,
                                difficulty_level, correct_answer, points, irt_difficulty, metadata)
         SELECT md5('q'||i)::uuid, md5('co'||i)::uuid, 'What is '||i||'²?', 0, 1, 8, i % 4,
                '\"'||(i*i)||'\"', 2, i / 7.0, '{}'
         FROM generate_series(1, $1) i",
        "INSERT INTO student_assessments (id, student_id, assessment_id, school_id, status,
                                          started_at, score, max_score, passed, recommendations)
         SELECT md5('sa'||i)::uuid, md5('s'||i)::uuid, md5('a'||i)::uuid, md5('school')::uuid, 2,
                TIMESTAMPTZ '2026-01-01 08:00+00' + i * INTERVAL '1 hour', i % 11, 10, i % 11 >= 7, '[]'
         FROM generate_series(1, $1) i",
        "INSERT INTO student_responses (id, student_assessment_id, student_id, question_id,
                                        student_answer, is_correct, points_earned, max_points,
                                        time_spent_seconds, question_order)
         SELECT md5('r'||i)::uuid, md5('sa'||i)::uuid, md5('s'||i)::uuid, md5('q'||i)::uuid,
                '\"'||i||'\"', i % 2 = 0, (i % 2) * 2, 2, 30 + i, 0
         FROM generate_series(1, $1) i",
        "INSERT INTO workflow_executions (execution_id, tenant_id, workflow_name, status,
                                          workflow_definition_json, initiated_by)
         SELECT 'wf-'||i, 'school-spr', 'grading', 'Completed', '{}', 'agent' FROM generate_series(1, $1) i",
        "INSERT INTO circuit_breaker_states (agent_key, tenant_id, state, failure_count)
         SELECT 'agent-'||i, 'school-spr', 'Closed', i % 3 FROM generate_series(1, $1) i",
        "INSERT INTO routing_decisions (id, tenant_id, task_id, task_type, required_capability,
                                        selected_agent, reason, routing_score)
         SELECT md5('rd'||i)::uuid, 'school-spr', 't'||i, 'grade', 'math', 'agent-'||i, 'best', i * 0.5
         FROM generate_series(1, $1) i",
        "INSERT INTO routing_statistics (agent_key, tenant_id, total_tasks, successful_tasks,
                                         success_rate)
         SELECT 'agent-'||i, 'school-spr', i, i, 1.0 FROM generate_series(1, $1) i",
    ];
    for sql in statements {
        sqlx::query(sql)
            .bind(rows)
            .execute(&mut *conn)
            .await
            .unwrap();
    }
}

/// Every row of every table, as canonical JSON text, sorted.
async fn snapshot(conn: &mut PgConnection) -> Vec<(String, Vec<String>)> {
    let mut all = Vec::new();
    for table in TABLES {
        // `table` comes from the constant list above, never from input.
        let rows: Vec<String> = sqlx::query_scalar(AssertSqlSafe(format!(
            "SELECT row_to_json(t)::text FROM \"{table}\" t ORDER BY 1"
        )))
        .fetch_all(&mut *conn)
        .await
        .unwrap();
        all.push((table.to_string(), rows));
    }
    all
}

fn job(school: &School, retention_days: u32) -> BackupJob {
    BackupJob {
        school_id: school.id.clone(),
        retention_days,
        work_dir: None,
    }
}

#[tokio::test]
async fn restore_brings_back_every_row_of_all_13_tables() {
    let school = school().await;
    let mut conn = school_conn(&school).await;
    fill(&mut conn, 25).await;
    let original = snapshot(&mut conn).await;
    assert!(
        original.iter().all(|(_, rows)| !rows.is_empty()),
        "every table has data"
    );

    let dir = tempfile::tempdir().unwrap();
    let store = BackupStore::directory(dir.path()).unwrap();
    let tools = PgTools::discover().unwrap();
    let report = backup::run_backup(&tools, &school.conn, &store, &job(&school, 7), Utc::now())
        .await
        .unwrap();
    assert_eq!(
        report.tables, 15,
        "13 tables plus _sqlx_migrations and cache_invalidations carry data"
    );
    assert!(
        report.object.starts_with(&format!("{0}/{0}_", school.id)),
        "{}",
        report.object
    );
    assert!(dir.path().join(&report.object).is_file());

    // Change, delete and add rows across tables, then restore.
    for sql in [
        "UPDATE students SET xp_points = xp_points + 1000",
        "UPDATE courses SET metadata = '{\"changed\": true}'",
        "DELETE FROM student_responses WHERE question_order = 0",
        "DELETE FROM routing_statistics",
        "INSERT INTO circuit_breaker_states (agent_key, tenant_id, state) VALUES ('new', 't', 'Open')",
    ] {
        sqlx::query(sql).execute(&mut conn).await.unwrap();
    }
    assert_ne!(snapshot(&mut conn).await, original);
    drop(conn); // the restore replaces tables; it must not wait on our session

    backup::run_restore(&tools, &school.conn, &store, &report.object, None)
        .await
        .unwrap();
    let mut conn = school_conn(&school).await;
    assert_eq!(
        snapshot(&mut conn).await,
        original,
        "every row back exactly"
    );
    // The role still owns what it restored, so it can migrate and restore again later.
    let foreign_owned: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_tables WHERE schemaname = 'public' AND tableowner <> $1",
    )
    .bind(&school.conn.username)
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert_eq!(foreign_owned, 0);
}

fn days_ago(now: DateTime<Utc>, days: i64) -> DateTime<Utc> {
    now - chrono::Duration::days(days)
}

/// Retention against any store, with a controlled clock.
async fn check_retention(store: &BackupStore, prefix: &str) {
    let school = school().await;
    let mut conn = school_conn(&school).await;
    fill(&mut conn, 3).await;
    let tools = PgTools::discover().unwrap();
    // Dump names carry milliseconds: a clock at that precision makes boundaries exact.
    let now = Utc::now().trunc_subsecs(3);
    let j = job(&school, 7);

    // Someone else's file in the school's folder, and another school's dump: never touched.
    let foreign = format!("{prefix}/{}/notes.txt", school.id);
    let foreign = foreign.trim_start_matches('/').to_string();
    store
        .put_bytes(&foreign, b"keep me".to_vec())
        .await
        .unwrap();
    let other_school = uuid::Uuid::new_v4().to_string();
    let other = store.object_name(&other_school, days_ago(now, 300));
    store.put_bytes(&other, b"not ours".to_vec()).await.unwrap();

    // A school whose backups stopped 30 days ago: the newest dump survives retention.
    let r40 = backup::run_backup(&tools, &school.conn, store, &j, days_ago(now, 40))
        .await
        .unwrap();
    let r30 = backup::run_backup(&tools, &school.conn, store, &j, days_ago(now, 30))
        .await
        .unwrap();
    assert_eq!(
        r30.pruned,
        vec![r40.object.clone()],
        "40 days old at day -30: pruned"
    );
    let pruned = backup::prune(store, &school.id, 7, now).await.unwrap();
    assert!(
        pruned.is_empty(),
        "the only dump is kept although 30 days old: {pruned:?}"
    );

    // Daily backups resume: the old one goes once newer ones exist.
    let r8 = backup::run_backup(&tools, &school.conn, store, &j, days_ago(now, 8))
        .await
        .unwrap();
    let r1 = backup::run_backup(&tools, &school.conn, store, &j, days_ago(now, 1))
        .await
        .unwrap();
    let r0 = backup::run_backup(&tools, &school.conn, store, &j, now)
        .await
        .unwrap();
    assert_eq!(r8.pruned, vec![r30.object.clone()]);
    assert!(
        r1.pruned.is_empty(),
        "exactly 7 days old is still kept: {:?}",
        r1.pruned
    );
    assert_eq!(
        r0.pruned,
        vec![r8.object.clone()],
        "8 days old is past a 7-day retention"
    );
    let left: Vec<String> = store
        .list(&school.id)
        .await
        .unwrap()
        .into_iter()
        .map(|d| d.object)
        .collect();
    // Manifests went with their dumps; the kept dumps keep theirs.
    for gone in [&r40.object, &r30.object, &r8.object] {
        assert_eq!(store.read_checksum(gone).await.unwrap(), None, "{gone}");
    }
    assert_eq!(
        store.read_checksum(&r0.object).await.unwrap(),
        Some(r0.sha256.clone())
    );
    assert_eq!(left, vec![r1.object, r0.object]);
    assert_eq!(
        store.list(&other_school).await.unwrap().len(),
        1,
        "another school's dump stays"
    );
    let mut tmp = tempfile::NamedTempFile::new().unwrap();
    store.download(&foreign, tmp.path()).await.unwrap();
    use std::io::Read;
    let mut text = String::new();
    tmp.read_to_string(&mut text).unwrap();
    assert_eq!(text, "keep me");
}

#[tokio::test]
async fn retention_in_a_directory_prunes_old_dumps_and_keeps_the_newest() {
    let dir = tempfile::tempdir().unwrap();
    check_retention(&BackupStore::directory(dir.path()).unwrap(), "").await;
}

#[tokio::test]
async fn retention_in_s3_prunes_old_dumps_and_keeps_the_newest() {
    let s3 = MotoServer::start();
    let store = s3.store("edumind-backups", "prod/schools").await;
    check_retention(&store, "prod/schools").await;
}

#[tokio::test]
async fn s3_round_trip_restores_the_data() {
    let s3 = MotoServer::start();
    let store = s3.store("roundtrip", "").await;
    let school = school().await;
    let mut conn = school_conn(&school).await;
    fill(&mut conn, 5).await;
    let original = snapshot(&mut conn).await;
    let tools = PgTools::discover().unwrap();
    let report = backup::run_backup(&tools, &school.conn, &store, &job(&school, 35), Utc::now())
        .await
        .unwrap();
    sqlx::query("DELETE FROM routing_decisions")
        .execute(&mut conn)
        .await
        .unwrap();
    drop(conn);
    backup::run_restore(&tools, &school.conn, &store, &report.object, None)
        .await
        .unwrap();
    let mut conn = school_conn(&school).await;
    assert_eq!(snapshot(&mut conn).await, original);
}

#[tokio::test]
async fn retention_in_azure_blob_prunes_old_dumps_and_keeps_the_newest() {
    let azure = Azurite::start();
    let store = azure.store("retention", "prod/schools").await;
    check_retention(&store, "prod/schools").await;
}

#[tokio::test]
async fn azure_blob_round_trip_restores_the_data() {
    let azure = Azurite::start();
    let store = azure.store("roundtrip", "").await;
    let school = school().await;
    let mut conn = school_conn(&school).await;
    fill(&mut conn, 5).await;
    let original = snapshot(&mut conn).await;
    let tools = PgTools::discover().unwrap();
    let report = backup::run_backup(&tools, &school.conn, &store, &job(&school, 35), Utc::now())
        .await
        .unwrap();
    let listed = store.list(&school.id).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].object, report.object);
    assert_eq!(
        store.read_checksum(&report.object).await.unwrap(),
        Some(store.hash(&report.object).await.unwrap().sha256),
        "the manifest was stored next to the dump"
    );
    sqlx::query("DELETE FROM routing_decisions")
        .execute(&mut conn)
        .await
        .unwrap();
    drop(conn);
    backup::run_restore(&tools, &school.conn, &store, &report.object, None)
        .await
        .unwrap();
    let mut conn = school_conn(&school).await;
    assert_eq!(snapshot(&mut conn).await, original);
    // A wrong account key is refused by the service, and the error names neither key.
    let wrong = azure
        .store_with_key("roundtrip", "", "d3Jvbmcta2V5")
        .unwrap();
    let err = wrong.list(&school.id).await.unwrap_err().to_string();
    assert!(
        !err.contains(AZURITE_KEY) && !err.contains("d3Jvbmcta2V5"),
        "{err}"
    );
}

// ---- corrupt and truncated dumps --------------------------------------------------------

async fn good_dump(school: &School) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("good.dump");
    PgTools::discover()
        .unwrap()
        .dump(&school.conn, &path)
        .await
        .unwrap();
    (dir, path)
}

#[tokio::test]
async fn truncated_or_corrupted_dumps_fail_verification() {
    let school = school().await;
    let mut conn = school_conn(&school).await;
    fill(&mut conn, 200).await;
    let tools = PgTools::discover().unwrap();
    let (dir, good) = good_dump(&school).await;
    assert_eq!(tools.verify(&good).await.unwrap(), 15);
    let bytes = std::fs::read(&good).unwrap();

    for cut in [
        bytes.len() - 1,
        bytes.len() * 3 / 4,
        bytes.len() / 2,
        100,
        0,
    ] {
        let truncated = dir.path().join(format!("cut-{cut}.dump"));
        std::fs::write(&truncated, &bytes[..cut]).unwrap();
        let err = tools
            .verify(&truncated)
            .await
            .expect_err("truncated dump must fail");
        assert!(
            matches!(err, BackupError::Corrupt(_)),
            "cut at {cut}: {err}"
        );
    }
    // Flip bytes in the middle of the compressed data.
    let mut flipped = bytes.clone();
    let mid = flipped.len() / 2;
    for b in &mut flipped[mid..mid + 64] {
        *b ^= 0x5a;
    }
    let path = dir.path().join("flipped.dump");
    std::fs::write(&path, &flipped).unwrap();
    let err = tools
        .verify(&path)
        .await
        .expect_err("corrupted dump must fail");
    assert!(matches!(err, BackupError::Corrupt(_)), "{err}");
}

#[tokio::test]
async fn a_corrupt_stored_dump_is_never_restored() {
    let school = school().await;
    let mut conn = school_conn(&school).await;
    fill(&mut conn, 50).await;
    let before = snapshot(&mut conn).await;
    let (_dir, good) = good_dump(&school).await;
    let bytes = std::fs::read(&good).unwrap();
    let store_dir = tempfile::tempdir().unwrap();
    let store = BackupStore::directory(store_dir.path()).unwrap();
    let object = store.object_name(&school.id, Utc::now());
    store
        .put_bytes(&object, bytes[..bytes.len() * 2 / 3].to_vec())
        .await
        .unwrap();
    drop(conn);

    let tools = PgTools::discover().unwrap();
    // Planted without a checksum manifest: refused as unverifiable.
    let err = backup::run_restore(&tools, &school.conn, &store, &object, None)
        .await
        .expect_err("restoring a dump without a manifest must fail");
    assert!(matches!(err, BackupError::Unverified(_)), "{err}");
    // Forced past the checksum, pg_restore's own verification still refuses it.
    let forced = backup::RestoreOptions {
        allow_unverified: true,
        ..Default::default()
    };
    let err = backup::run_restore_with(&tools, &school.conn, &store, &object, forced)
        .await
        .expect_err("restoring a truncated dump must fail");
    assert!(matches!(err, BackupError::Corrupt(_)), "{err}");
    let mut conn = school_conn(&school).await;
    assert_eq!(
        snapshot(&mut conn).await,
        before,
        "the database is untouched"
    );

    let err = backup::run_restore(&tools, &school.conn, &store, "no/such.dump", None)
        .await
        .expect_err("missing object");
    assert!(matches!(err, BackupError::NotFound(_)), "{err}");
}

/// Column types and lengths, constraints and indexes of the school's tables: what an
/// edited schema statement in a dump would change.
async fn schema(conn: &mut PgConnection) -> Vec<String> {
    let mut out: Vec<String> = sqlx::query_scalar(
        "SELECT table_name || '.' || column_name || ' ' || data_type || ' ' ||
                coalesce(character_maximum_length::text, '-') || ' ' || is_nullable
         FROM information_schema.columns WHERE table_schema = 'public'",
    )
    .fetch_all(&mut *conn)
    .await
    .unwrap();
    out.extend(
        sqlx::query_scalar::<_, String>(
            "SELECT conrelid::regclass::text || ' ' || pg_get_constraintdef(oid)
             FROM pg_constraint WHERE connamespace = 'public'::regnamespace
             UNION ALL SELECT indexdef FROM pg_indexes WHERE schemaname = 'public'",
        )
        .fetch_all(&mut *conn)
        .await
        .unwrap(),
    );
    out.sort();
    out
}

/// Every offset of `needle` in `haystack`.
fn find_all(haystack: &[u8], needle: &[u8]) -> Vec<usize> {
    haystack
        .windows(needle.len())
        .enumerate()
        .filter(|(_, w)| *w == needle)
        .map(|(i, _)| i)
        .collect()
}

/// Issue 11 §5: a stored dump edited after it was stored is refused, wherever the edit is.
/// The schema statements in a custom-format dump's table of contents are not compressed,
/// and `pg_restore --list` plus a full read accept an edited one (checked below): only the
/// checksum manifest catches it.
#[tokio::test]
async fn a_dump_altered_after_it_was_stored_is_refused_and_changes_nothing() {
    let school = school().await;
    let mut conn = school_conn(&school).await;
    fill(&mut conn, 40).await;
    let dir = tempfile::tempdir().unwrap();
    let store = BackupStore::directory(dir.path()).unwrap();
    let tools = PgTools::discover().unwrap();
    let report = backup::run_backup(&tools, &school.conn, &store, &job(&school, 7), Utc::now())
        .await
        .unwrap();
    let object = report.object.clone();
    assert_eq!(report.sha256.len(), 64);
    assert_eq!(
        backup::check_stored(&store, &object).await.unwrap(),
        backup::Checksum::Verified(report.sha256.clone())
    );
    let original = std::fs::read(dir.path().join(&object)).unwrap();
    let manifest = std::fs::read_to_string(dir.path().join(format!("{object}.sha256"))).unwrap();
    assert!(manifest.starts_with(&report.sha256), "{manifest}");

    // Data changes after the backup, so a restore of anything would be visible.
    sqlx::query("UPDATE students SET xp_points = xp_points + 7")
        .execute(&mut conn)
        .await
        .unwrap();
    let rows = snapshot(&mut conn).await;
    let types = schema(&mut conn).await;
    drop(conn);

    // The issue's edits, in the uncompressed schema text: varchar(255) -> (155), and a
    // CHECK bound. `pg_restore` itself accepts such a dump.
    let mut edits: Vec<Vec<u8>> = Vec::new();
    let varchar = find_all(&original, b"character varying(255)");
    assert!(!varchar.is_empty(), "the schema text is in the dump");
    for at in varchar.iter().take(3) {
        let mut edited = original.clone();
        edited[at + "character varying(".len()] = b'1';
        edits.push(edited);
    }
    let checks = find_all(&original, b"<= 5");
    assert!(!checks.is_empty(), "the CHECK on users.role is in the dump");
    for at in checks.iter().take(2) {
        let mut edited = original.clone();
        edited[at + 3] = b'9';
        edits.push(edited);
    }
    let edited_path = dir.path().join("edited.dump");
    std::fs::write(&edited_path, &edits[0]).unwrap();
    assert!(
        tools.verify(&edited_path).await.is_ok(),
        "pg_restore's verification alone accepts an edited schema"
    );
    // Single flipped bits at offsets across the whole file: header, TOC, data, tail.
    let n = original.len();
    let mut offsets: Vec<usize> = (0..64).map(|i| i * (n - 1) / 63).collect();
    offsets.extend([1, 2, 5, 11, n / 2 + 1, n - 2]);
    offsets.extend(varchar.iter().map(|at| at + 3));
    for at in offsets {
        let mut flipped = original.clone();
        flipped[at] ^= 0x01;
        edits.push(flipped);
    }

    let count = edits.len();
    for (i, edited) in edits.into_iter().enumerate() {
        assert_ne!(edited, original);
        store.put_bytes(&object, edited).await.unwrap();
        let err = backup::run_restore(&tools, &school.conn, &store, &object, None)
            .await
            .expect_err("an altered dump must be refused");
        assert!(matches!(err, BackupError::Corrupt(_)), "edit {i}: {err}");
        assert_eq!(err.reason(), "DumpCorrupt");
        assert!(
            err.to_string()
                .contains("does not match its checksum manifest"),
            "edit {i}: {err}"
        );
        assert!(matches!(
            backup::check_stored(&store, &object).await.unwrap(),
            backup::Checksum::Mismatch { .. }
        ));
    }
    let mut conn = school_conn(&school).await;
    assert_eq!(
        snapshot(&mut conn).await,
        rows,
        "no row changed ({count} edits)"
    );
    assert_eq!(schema(&mut conn).await, types, "no column type changed");
    drop(conn);

    // A manifest that is not one is refused the same way.
    store.put_bytes(&object, original.clone()).await.unwrap();
    store
        .put_bytes(&format!("{object}.sha256"), b"garbage".to_vec())
        .await
        .unwrap();
    let err = backup::run_restore(&tools, &school.conn, &store, &object, None)
        .await
        .expect_err("an unreadable manifest verifies nothing");
    assert!(matches!(err, BackupError::Corrupt(_)), "{err}");

    // No manifest at all: refused with its own reason, unless forced.
    store.delete(&format!("{object}.sha256")).await.unwrap();
    let err = backup::run_restore(&tools, &school.conn, &store, &object, None)
        .await
        .expect_err("a dump without a manifest must be refused");
    assert!(matches!(err, BackupError::Unverified(_)), "{err}");
    assert_eq!(err.reason(), "ChecksumMissing");
    assert!(err.to_string().contains("--allow-unverified"), "{err}");
    let mut conn = school_conn(&school).await;
    assert_eq!(snapshot(&mut conn).await, rows);
    drop(conn);
    let forced = backup::RestoreOptions {
        allow_unverified: true,
        ..Default::default()
    };
    let restored = backup::run_restore_with(&tools, &school.conn, &store, &object, forced)
        .await
        .unwrap();
    assert!(!restored.verified);
    assert_eq!(restored.sha256, report.sha256);
    let mut conn = school_conn(&school).await;
    assert_ne!(snapshot(&mut conn).await, rows, "the forced restore ran");
}

/// Retention deletes a dump's manifest with it, and manifests an interrupted prune left.
#[tokio::test]
async fn retention_deletes_manifests_with_their_dumps() {
    let school = school().await;
    let mut conn = school_conn(&school).await;
    fill(&mut conn, 2).await;
    drop(conn);
    let dir = tempfile::tempdir().unwrap();
    let store = BackupStore::directory(dir.path()).unwrap();
    let tools = PgTools::discover().unwrap();
    let now = Utc::now().trunc_subsecs(3);
    let j = job(&school, 7);
    let old = backup::run_backup(&tools, &school.conn, &store, &j, days_ago(now, 20))
        .await
        .unwrap();
    let older = backup::run_backup(&tools, &school.conn, &store, &j, days_ago(now, 30))
        .await
        .unwrap();
    // An interrupted prune: the dump went, its manifest stayed.
    std::fs::remove_file(dir.path().join(&older.object)).unwrap();
    let new = backup::run_backup(&tools, &school.conn, &store, &j, now)
        .await
        .unwrap();
    assert_eq!(new.pruned, vec![old.object.clone()]);
    let mut files: Vec<String> = std::fs::read_dir(dir.path().join(&school.id))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    files.sort();
    let name = new.object.rsplit('/').next().unwrap().to_string();
    assert_eq!(files, vec![name.clone(), format!("{name}.sha256")]);
}

/// A directory of PostgreSQL tools whose `pg_dump` is wrapped by `script` (the real one is
/// `$REAL`), to see what the runner does when pg_dump misbehaves or what it is given.
fn wrapped_tools(script: &str) -> (tempfile::TempDir, PgTools) {
    use std::os::unix::fs::PermissionsExt;
    let real = PgTools::discover().unwrap().bindir;
    let dir = tempfile::tempdir().unwrap();
    let wrapper = dir.path().join("pg_dump");
    std::fs::write(
        &wrapper,
        format!("#!/bin/sh\nREAL='{}/pg_dump'\n{script}\n", real.display()),
    )
    .unwrap();
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::os::unix::fs::symlink(real.join("pg_restore"), dir.path().join("pg_restore")).unwrap();
    let tools = PgTools {
        bindir: dir.path().to_path_buf(),
    };
    (dir, tools)
}

#[tokio::test]
async fn a_dump_truncated_behind_pg_dumps_back_is_not_a_success() {
    let school = school().await;
    let mut conn = school_conn(&school).await;
    fill(&mut conn, 200).await;
    // pg_dump "succeeds" but its output loses its tail (a full disk, a killed sidecar, …),
    // or 64 bytes in its middle are damaged on the way.
    let damages = [
        r#"out=$(mktemp); "$REAL" "$@" > "$out" || exit $?
size=$(wc -c < "$out"); head -c $((size / 2)) "$out"; rm -f "$out""#,
        r#"out=$(mktemp); "$REAL" "$@" > "$out" || exit $?
half=$(( $(wc -c < "$out") / 2 )); head -c $half "$out"; head -c 64 /dev/zero | tr '\0' 'Z'
tail -c +$((half + 65)) "$out"; rm -f "$out""#,
    ];
    for damage in damages {
        let (_tools_dir, tools) = wrapped_tools(damage);
        let store_dir = tempfile::tempdir().unwrap();
        let store = BackupStore::directory(store_dir.path()).unwrap();
        let err = backup::run_backup(&tools, &school.conn, &store, &job(&school, 7), Utc::now())
            .await
            .expect_err("a damaged dump must not count as a backup");
        assert!(matches!(err, BackupError::Corrupt(_)), "{err}");
        assert!(
            store.list(&school.id).await.unwrap().is_empty(),
            "nothing was stored"
        );
        let err = backup::resolve_object(&store, &school.id, backup::LATEST)
            .await
            .expect_err("no latest backup");
        assert!(matches!(err, BackupError::NotFound(_)), "{err}");
        // Not even an unfinished part or a manifest is left in the store.
        let mut left = Vec::new();
        let mut dirs = vec![store_dir.path().to_path_buf()];
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    dirs.push(path);
                } else {
                    left.push(path);
                }
            }
        }
        assert!(left.is_empty(), "{left:?}");
    }
}

#[tokio::test]
async fn the_password_never_reaches_arguments_or_environment() {
    let school = school().await;
    let mut conn = school_conn(&school).await;
    fill(&mut conn, 2).await;
    let spy = tempfile::tempdir().unwrap();
    let log = spy.path().join("seen");
    let (_tools_dir, tools) = wrapped_tools(&format!(
        r#"echo "ARGS $*" >> '{log}'; env >> '{log}'; cat "$PGPASSFILE" > '{log}.passfile'; exec "$REAL" "$@""#,
        log = log.display()
    ));
    let store_dir = tempfile::tempdir().unwrap();
    let store = BackupStore::directory(store_dir.path()).unwrap();
    backup::run_backup(&tools, &school.conn, &store, &job(&school, 7), Utc::now())
        .await
        .unwrap();
    let seen = std::fs::read_to_string(&log).unwrap();
    let password = school.password.clone();
    assert!(seen.contains("ARGS "), "the spy ran");
    assert!(
        !seen.contains(&password),
        "password leaked into argv or env:\n{seen}"
    );
    assert!(!seen.contains("PGPASSWORD="));
    // The password file did hold it (so the dump really authenticated with it)...
    let passfile = std::fs::read_to_string(format!("{}.passfile", log.display())).unwrap();
    assert!(passfile.contains(&password.replace('\\', "\\\\").replace(':', "\\:")));
    // ...and is gone after the run.
    let path = seen
        .lines()
        .find_map(|l| l.strip_prefix("PGPASSFILE="))
        .unwrap();
    assert!(!Path::new(path).exists());
}

// ---- moto: a local S3-compatible server -------------------------------------------------

struct MotoServer {
    child: Child,
    port: u16,
}

impl MotoServer {
    fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("python3")
            .args([
                "-m",
                "moto.server",
                "-H",
                "127.0.0.1",
                "-p",
                &port.to_string(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 not found");
        let mut server = MotoServer { child, port };
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = server.child.try_wait() {
                panic!(
                    "moto's S3 server exited ({status}): install it with `pip install 'moto[server]'` \
                     (scripts/install-deps.sh does)"
                );
            }
            assert!(Instant::now() < deadline, "moto did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        server.port = port;
        server
    }

    async fn store(&self, bucket: &str, prefix: &str) -> BackupStore {
        // moto accepts unsigned requests: create the bucket with a bare PUT.
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", self.port))
            .await
            .unwrap();
        let request = format!(
            "PUT /{bucket} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            self.port
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        assert!(
            response.starts_with("HTTP/1.1 200"),
            "create bucket: {response}"
        );
        BackupStore::s3(&S3Location {
            bucket: bucket.into(),
            prefix: prefix.into(),
            endpoint: Some(format!("http://127.0.0.1:{}", self.port)),
            region: "us-east-1".into(),
            credentials: Some(S3Credentials {
                access_key_id: "testing".into(),
                secret_access_key: "testing".into(),
            }),
        })
        .unwrap()
    }
}

impl Drop for MotoServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A directory whose `pg_dump` only reports `version` (an older client, without
/// installing one).
fn fake_tools(version: &str) -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    for tool in ["pg_dump", "pg_restore"] {
        let path = dir.path().join(tool);
        std::fs::write(
            &path,
            format!("#!/bin/sh\necho '{tool} (PostgreSQL) {version}'\n"),
        )
        .unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    dir
}

#[tokio::test]
async fn client_tools_older_than_the_server_are_refused_and_new_enough_ones_chosen() {
    let pg = crate::support::postgres().await;
    let conn = ConnectionInfo::new(&pg.host, pg.port, "postgres", &pg.superuser, &pg.password);
    let real = PgTools::discover().unwrap();
    let major = real.major().await.unwrap();
    let mut admin = pg.admin().await;
    let server: String = sqlx::query_scalar("SHOW server_version_num")
        .fetch_one(&mut admin)
        .await
        .unwrap();
    let server = server.parse::<u32>().unwrap() / 10_000;
    assert!(major >= server, "the harness's own tools fit its server");

    let old = fake_tools(&format!("{}.3", server - 1));
    let err = PgTools::for_server_among(&conn, vec![old.path().to_path_buf()])
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&format!("pg_dump {} (", server - 1))
            && err.contains(&format!("older than the server (PostgreSQL {server})"))
            && err.contains("EDUMIND_PG_BINDIR"),
        "{err}"
    );
    // An older directory first, a new enough one after it: the new enough one is used.
    let chosen =
        PgTools::for_server_among(&conn, vec![old.path().to_path_buf(), real.bindir.clone()])
            .await
            .unwrap();
    assert_eq!(chosen.bindir, real.bindir);
}

// ---- Azurite: the Azure Storage emulator (npm `azurite`) ---------------------------------

/// Azurite's well-known development account and key (public, documented by Microsoft).
const AZURITE_ACCOUNT: &str = "devstoreaccount1";
const AZURITE_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

struct Azurite {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Azurite {
    fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = tempfile::tempdir().unwrap();
        let child = Command::new("azurite-blob")
            .args([
                "--blobHost",
                "127.0.0.1",
                "--blobPort",
                &port.to_string(),
                "--location",
            ])
            .arg(dir.path())
            .args(["--skipApiVersionCheck", "--silent", "--disableTelemetry"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect(
                "azurite-blob not found: install it with `npm install -g azurite` \
                 (scripts/install-deps.sh does)",
            );
        let mut server = Azurite {
            child,
            port,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = server.child.try_wait() {
                panic!("azurite-blob exited ({status})");
            }
            assert!(Instant::now() < deadline, "Azurite did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        server
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}/{AZURITE_ACCOUNT}", self.port)
    }

    fn store_with_key(
        &self,
        container: &str,
        prefix: &str,
        key: &str,
    ) -> Result<BackupStore, BackupError> {
        BackupStore::azure(&AzureLocation {
            account: AZURITE_ACCOUNT.into(),
            container: container.into(),
            prefix: prefix.into(),
            endpoint: Some(self.endpoint()),
            credentials: Some(AzureCredentials::AccountKey(key.into())),
        })
    }

    /// Creates `container` (a Shared Key signed `PUT ?restype=container`: `object_store`
    /// does not create containers) and returns a store in it.
    async fn store(&self, container: &str, prefix: &str) -> BackupStore {
        use base64::Engine;
        use hmac::{Hmac, Mac};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let date = Utc::now().format("%a, %d %b %Y %H:%M:%S GMT").to_string();
        let version = "2021-08-06";
        let to_sign = format!(
            "PUT\n\n\n\n\n\n\n\n\n\n\n\nx-ms-date:{date}\nx-ms-version:{version}\n\
             /{AZURITE_ACCOUNT}/{AZURITE_ACCOUNT}/{container}\nrestype:container"
        );
        let key = base64::engine::general_purpose::STANDARD
            .decode(AZURITE_KEY)
            .unwrap();
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(&key).unwrap();
        mac.update(to_sign.as_bytes());
        let signature =
            base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", self.port))
            .await
            .unwrap();
        let request = format!(
            "PUT /{AZURITE_ACCOUNT}/{container}?restype=container HTTP/1.1\r\n\
             Host: 127.0.0.1:{}\r\nx-ms-date: {date}\r\nx-ms-version: {version}\r\n\
             Authorization: SharedKey {AZURITE_ACCOUNT}:{signature}\r\n\
             Content-Length: 0\r\nConnection: close\r\n\r\n",
            self.port
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        assert!(
            response.starts_with("HTTP/1.1 201"),
            "create container: {response}"
        );
        self.store_with_key(container, prefix, AZURITE_KEY).unwrap()
    }
}

impl Drop for Azurite {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
