#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report
//! The migrated schema against the storage spec (`data-storage.md` section 2).
//!
//! The expectation below is transcribed from the spec's tables, column by column, not
//! from the migrations, and compared with the live catalog of a freshly migrated
//! database. Any drift — a type, a length, nullability, a missing or extra index, a
//! lost uniqueness — fails with the differences listed. Bookkeeping tables that are not
//! the spec's (`_sqlx_migrations`, the data plane's `cache_invalidations` outbox) are left
//! out of the comparison.

use std::collections::BTreeSet;

use sqlx::PgConnection;

const UUID: &str = "uuid";
const INT: &str = "integer";
const BOOL: &str = "boolean";
const TSTZ: &str = "timestamp with time zone";
const TEXT: &str = "text";
const DATE: &str = "date";
const JSONB: &str = "jsonb";
const DOUBLE: &str = "double precision";
const V20: &str = "character varying(20)";
const V50: &str = "character varying(50)";
const V64: &str = "character varying(64)";
const V100: &str = "character varying(100)";
const V200: &str = "character varying(200)";
const V255: &str = "character varying(255)";
const V500: &str = "character varying(500)";
const V2000: &str = "character varying(2000)"; // spec: TEXT(2000)
const V4000: &str = "character varying(4000)"; // spec: TEXT(4000)

const NULL: bool = true;
const NOT_NULL: bool = false;

/// (table, column, type, nullable) for every column the spec lists.
#[rustfmt::skip]
const SPEC_COLUMNS: &[(&str, &str, &str, bool)] = &[
    ("users", "id", UUID, NOT_NULL),
    ("users", "email", V255, NOT_NULL),
    ("users", "full_name", V255, NOT_NULL),
    ("users", "role", INT, NOT_NULL),
    ("users", "school_id", UUID, NULL),
    ("users", "is_active", BOOL, NOT_NULL),
    ("users", "external_id", V255, NULL),
    ("users", "created_at", TSTZ, NOT_NULL),
    ("users", "updated_at", TSTZ, NOT_NULL),

    ("schools", "id", UUID, NOT_NULL),
    ("schools", "name", V255, NOT_NULL),
    ("schools", "code", V50, NOT_NULL),
    ("schools", "address", V500, NOT_NULL),
    ("schools", "contact_email", V255, NOT_NULL),
    ("schools", "contact_phone", V50, NULL),
    ("schools", "is_active", BOOL, NOT_NULL),
    ("schools", "created_at", TSTZ, NOT_NULL),
    ("schools", "updated_at", TSTZ, NOT_NULL),

    ("classes", "id", UUID, NOT_NULL),
    ("classes", "school_id", UUID, NOT_NULL),
    ("classes", "name", V255, NOT_NULL),
    ("classes", "code", V50, NOT_NULL),
    ("classes", "grade_level", INT, NOT_NULL),
    ("classes", "subject", INT, NOT_NULL),
    ("classes", "teacher_ids", TEXT, NOT_NULL),
    ("classes", "student_ids", TEXT, NOT_NULL),
    ("classes", "academic_year", V20, NOT_NULL),
    ("classes", "is_active", BOOL, NOT_NULL),
    ("classes", "created_at", TSTZ, NOT_NULL),
    ("classes", "updated_at", TSTZ, NOT_NULL),

    ("students", "id", UUID, NOT_NULL),
    ("students", "user_id", UUID, NOT_NULL),
    ("students", "school_id", UUID, NULL),
    ("students", "class_ids", TEXT, NOT_NULL),
    ("students", "grade_level", INT, NOT_NULL),
    ("students", "date_of_birth", DATE, NULL),
    ("students", "parental_consent_granted", BOOL, NOT_NULL),
    ("students", "parent_email", V255, NULL),
    ("students", "subscription_tier", INT, NOT_NULL),
    ("students", "subscription_expires_at", TSTZ, NULL),
    ("students", "level", INT, NOT_NULL),
    ("students", "xp_points", INT, NOT_NULL),
    ("students", "daily_streak", INT, NOT_NULL),
    ("students", "last_activity_date", DATE, NULL),
    ("students", "created_at", TSTZ, NOT_NULL),
    ("students", "updated_at", TSTZ, NOT_NULL),

    ("courses", "id", UUID, NOT_NULL),
    ("courses", "name", V255, NOT_NULL),
    ("courses", "code", V50, NOT_NULL),
    ("courses", "subject", INT, NOT_NULL),
    ("courses", "grade_level", INT, NOT_NULL),
    ("courses", "description", V2000, NOT_NULL),
    ("courses", "learning_objectives", TEXT, NOT_NULL),
    ("courses", "topics", TEXT, NOT_NULL),
    ("courses", "board_name", V100, NULL),
    ("courses", "module_name", V200, NULL),
    ("courses", "metadata", JSONB, NOT_NULL),
    ("courses", "is_active", BOOL, NOT_NULL),
    ("courses", "course_admin_id", UUID, NULL),
    ("courses", "created_at", TSTZ, NOT_NULL),
    ("courses", "updated_at", TSTZ, NOT_NULL),

    ("assessments", "id", UUID, NOT_NULL),
    ("assessments", "course_id", UUID, NOT_NULL),
    ("assessments", "school_id", UUID, NULL),
    ("assessments", "title", V255, NOT_NULL),
    ("assessments", "description", V2000, NOT_NULL),
    ("assessments", "assessment_type", INT, NOT_NULL),
    ("assessments", "subject", INT, NOT_NULL),
    ("assessments", "grade_level", INT, NOT_NULL),
    ("assessments", "topics", TEXT, NOT_NULL),
    ("assessments", "question_ids", TEXT, NOT_NULL),
    ("assessments", "total_points", INT, NOT_NULL),
    ("assessments", "time_limit_minutes", INT, NULL),
    ("assessments", "passing_score_percentage", INT, NOT_NULL),
    ("assessments", "is_active", BOOL, NOT_NULL),
    ("assessments", "created_at", TSTZ, NOT_NULL),
    ("assessments", "updated_at", TSTZ, NOT_NULL),

    ("questions", "id", UUID, NOT_NULL),
    ("questions", "course_id", UUID, NOT_NULL),
    ("questions", "question_text", V4000, NOT_NULL),
    ("questions", "question_type", INT, NOT_NULL),
    ("questions", "subject", INT, NOT_NULL),
    ("questions", "grade_level", INT, NOT_NULL),
    ("questions", "difficulty_level", INT, NOT_NULL),
    ("questions", "topics", TEXT, NOT_NULL),
    ("questions", "learning_objectives", TEXT, NOT_NULL),
    ("questions", "answer_options", V4000, NULL),
    ("questions", "correct_answer", V4000, NOT_NULL),
    ("questions", "explanation", V4000, NULL),
    ("questions", "points", INT, NOT_NULL),
    ("questions", "irt_discrimination", DOUBLE, NULL),
    ("questions", "irt_difficulty", DOUBLE, NULL),
    ("questions", "irt_guessing", DOUBLE, NULL),
    ("questions", "board_name", V100, NULL),
    ("questions", "module_name", V200, NULL),
    ("questions", "metadata", JSONB, NOT_NULL),
    ("questions", "is_active", BOOL, NOT_NULL),
    ("questions", "times_answered", INT, NOT_NULL),
    ("questions", "times_correct", INT, NOT_NULL),
    ("questions", "is_ai_generated", BOOL, NOT_NULL),
    ("questions", "content_hash", V64, NULL),
    ("questions", "created_at", TSTZ, NOT_NULL),
    ("questions", "updated_at", TSTZ, NOT_NULL),

    ("student_assessments", "id", UUID, NOT_NULL),
    ("student_assessments", "student_id", UUID, NOT_NULL),
    ("student_assessments", "assessment_id", UUID, NOT_NULL),
    ("student_assessments", "school_id", UUID, NULL),
    ("student_assessments", "class_id", UUID, NULL),
    ("student_assessments", "status", INT, NOT_NULL),
    ("student_assessments", "started_at", TSTZ, NULL),
    ("student_assessments", "completed_at", TSTZ, NULL),
    ("student_assessments", "score", INT, NULL),
    ("student_assessments", "max_score", INT, NOT_NULL),
    ("student_assessments", "passed", BOOL, NULL),
    ("student_assessments", "current_question_index", INT, NOT_NULL),
    ("student_assessments", "estimated_ability", DOUBLE, NULL),
    ("student_assessments", "time_spent_seconds", INT, NULL),
    ("student_assessments", "correct_answers", INT, NOT_NULL),
    ("student_assessments", "incorrect_answers", INT, NOT_NULL),
    ("student_assessments", "skipped_questions", INT, NOT_NULL),
    ("student_assessments", "feedback", V4000, NULL),
    ("student_assessments", "recommendations", TEXT, NOT_NULL),
    ("student_assessments", "xp_earned", INT, NOT_NULL),
    ("student_assessments", "created_at", TSTZ, NOT_NULL),
    ("student_assessments", "updated_at", TSTZ, NOT_NULL),

    ("student_responses", "id", UUID, NOT_NULL),
    ("student_responses", "student_assessment_id", UUID, NOT_NULL),
    ("student_responses", "student_id", UUID, NOT_NULL),
    ("student_responses", "question_id", UUID, NOT_NULL),
    ("student_responses", "school_id", UUID, NULL),
    ("student_responses", "student_answer", V4000, NOT_NULL),
    ("student_responses", "is_correct", BOOL, NOT_NULL),
    ("student_responses", "points_earned", INT, NOT_NULL),
    ("student_responses", "max_points", INT, NOT_NULL),
    ("student_responses", "time_spent_seconds", INT, NOT_NULL),
    ("student_responses", "question_order", INT, NOT_NULL),
    ("student_responses", "ability_at_time", DOUBLE, NULL),
    ("student_responses", "feedback", V4000, NULL),
    ("student_responses", "ai_explanation", V4000, NULL),
    ("student_responses", "submitted_at", TSTZ, NOT_NULL),
    ("student_responses", "created_at", TSTZ, NOT_NULL),

    // Orchestration tables: the spec gives types and keys only; nullability is ours
    // (docs/schema.md): identity, tenant and state columns are required, end times and
    // optional links are not.
    ("workflow_executions", "execution_id", V100, NOT_NULL),
    ("workflow_executions", "tenant_id", V100, NOT_NULL),
    ("workflow_executions", "workflow_name", V200, NOT_NULL),
    ("workflow_executions", "status", V50, NOT_NULL),
    ("workflow_executions", "workflow_definition_json", TEXT, NOT_NULL),
    ("workflow_executions", "started_at", TSTZ, NOT_NULL),
    ("workflow_executions", "completed_at", TSTZ, NULL),
    ("workflow_executions", "initiated_by", V100, NOT_NULL),
    ("workflow_executions", "tags", V500, NULL),

    ("circuit_breaker_states", "agent_key", V200, NOT_NULL),
    ("circuit_breaker_states", "tenant_id", V100, NOT_NULL),
    ("circuit_breaker_states", "state", V20, NOT_NULL),
    ("circuit_breaker_states", "failure_count", INT, NOT_NULL),
    ("circuit_breaker_states", "last_failure_at", TSTZ, NULL),
    ("circuit_breaker_states", "last_updated", TSTZ, NOT_NULL),

    ("routing_decisions", "id", UUID, NOT_NULL),
    ("routing_decisions", "tenant_id", V100, NOT_NULL),
    ("routing_decisions", "task_id", V100, NOT_NULL),
    ("routing_decisions", "task_type", V100, NOT_NULL),
    ("routing_decisions", "required_capability", V100, NOT_NULL),
    ("routing_decisions", "selected_agent", V200, NOT_NULL),
    ("routing_decisions", "reason", TEXT, NOT_NULL),
    ("routing_decisions", "routing_score", DOUBLE, NOT_NULL),
    ("routing_decisions", "workflow_execution_id", V100, NULL),
    ("routing_decisions", "workflow_step_id", V100, NULL),
    ("routing_decisions", "routed_at", TSTZ, NOT_NULL),

    ("routing_statistics", "agent_key", V200, NOT_NULL),
    ("routing_statistics", "tenant_id", V100, NOT_NULL),
    ("routing_statistics", "total_tasks", INT, NOT_NULL),
    ("routing_statistics", "successful_tasks", INT, NOT_NULL),
    ("routing_statistics", "failed_tasks", INT, NOT_NULL),
    ("routing_statistics", "average_duration_ms", INT, NOT_NULL),
    ("routing_statistics", "success_rate", DOUBLE, NOT_NULL),
    ("routing_statistics", "last_updated", TSTZ, NOT_NULL),
];

const UNIQUE: bool = true;
const PLAIN: bool = false;

/// (table, indexed columns in order, unique) for every index the spec lists.
#[rustfmt::skip]
const SPEC_INDEXES: &[(&str, &[&str], bool)] = &[
    ("users", &["email"], UNIQUE),
    ("users", &["external_id"], UNIQUE),
    ("users", &["school_id"], PLAIN),
    ("users", &["role"], PLAIN),
    ("schools", &["code"], UNIQUE),
    ("schools", &["is_active"], PLAIN),
    ("classes", &["school_id"], PLAIN),
    ("classes", &["school_id", "code"], UNIQUE),
    ("classes", &["grade_level"], PLAIN),
    ("classes", &["subject"], PLAIN),
    ("students", &["user_id"], UNIQUE),
    ("students", &["school_id"], PLAIN),
    ("students", &["grade_level"], PLAIN),
    ("students", &["subscription_tier"], PLAIN),
    ("courses", &["code"], UNIQUE),
    ("courses", &["subject"], PLAIN),
    ("courses", &["grade_level"], PLAIN),
    ("courses", &["board_name"], PLAIN),
    ("courses", &["module_name"], PLAIN),
    ("assessments", &["course_id"], PLAIN),
    ("assessments", &["school_id"], PLAIN),
    ("assessments", &["assessment_type"], PLAIN),
    ("assessments", &["subject"], PLAIN),
    ("assessments", &["grade_level"], PLAIN),
    ("questions", &["course_id"], PLAIN),
    ("questions", &["subject"], PLAIN),
    ("questions", &["grade_level"], PLAIN),
    ("questions", &["difficulty_level"], PLAIN),
    ("questions", &["content_hash"], PLAIN),
    ("questions", &["is_ai_generated"], PLAIN),
    ("questions", &["board_name"], PLAIN),
    ("questions", &["module_name"], PLAIN),
    ("student_assessments", &["student_id"], PLAIN),
    ("student_assessments", &["assessment_id"], PLAIN),
    ("student_assessments", &["student_id", "assessment_id"], PLAIN),
    ("student_assessments", &["school_id"], PLAIN),
    ("student_assessments", &["class_id"], PLAIN),
    ("student_assessments", &["status"], PLAIN),
    ("student_assessments", &["completed_at"], PLAIN),
    ("student_responses", &["student_assessment_id"], PLAIN),
    ("student_responses", &["student_id"], PLAIN),
    ("student_responses", &["question_id"], PLAIN),
    ("student_responses", &["student_assessment_id", "question_id"], UNIQUE),
    ("student_responses", &["school_id"], PLAIN),
];

/// (table, primary-key column) for all 13 tables.
#[rustfmt::skip]
const SPEC_PRIMARY_KEYS: &[(&str, &str)] = &[
    ("users", "id"), ("schools", "id"), ("classes", "id"), ("students", "id"),
    ("courses", "id"), ("assessments", "id"), ("questions", "id"),
    ("student_assessments", "id"), ("student_responses", "id"),
    ("workflow_executions", "execution_id"), ("circuit_breaker_states", "agent_key"),
    ("routing_decisions", "id"), ("routing_statistics", "agent_key"),
];

/// Foreign keys we chose to add (docs/schema.md): (table, column, referenced table, on delete).
#[rustfmt::skip]
const FOREIGN_KEYS: &[(&str, &str, &str, &str)] = &[
    ("students", "user_id", "users", "RESTRICT"),
    ("assessments", "course_id", "courses", "RESTRICT"),
    ("questions", "course_id", "courses", "RESTRICT"),
    ("student_assessments", "student_id", "students", "RESTRICT"),
    ("student_assessments", "assessment_id", "assessments", "RESTRICT"),
    ("student_responses", "student_assessment_id", "student_assessments", "CASCADE"),
    ("student_responses", "student_id", "students", "RESTRICT"),
    ("student_responses", "question_id", "questions", "RESTRICT"),
];

fn table_names() -> BTreeSet<String> {
    SPEC_PRIMARY_KEYS
        .iter()
        .map(|(t, _)| t.to_string())
        .collect()
}

async fn live_tables(conn: &mut PgConnection) -> BTreeSet<String> {
    sqlx::query_scalar::<_, String>(
        "SELECT tablename::text FROM pg_tables WHERE schemaname = 'public' \
         AND tablename NOT IN ('_sqlx_migrations', 'cache_invalidations')",
    )
    .fetch_all(conn)
    .await
    .unwrap()
    .into_iter()
    .collect()
}

async fn live_columns(conn: &mut PgConnection) -> BTreeSet<(String, String, String, bool)> {
    sqlx::query_as::<_, (String, String, String, bool)>(
        "SELECT c.relname::text, a.attname::text, format_type(a.atttypid, a.atttypmod), \
                NOT a.attnotnull \
         FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid \
         JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE n.nspname = 'public' AND c.relkind = 'r' AND c.relname NOT IN ('_sqlx_migrations', 'cache_invalidations') \
           AND a.attnum > 0 AND NOT a.attisdropped",
    )
    .fetch_all(conn)
    .await
    .unwrap()
    .into_iter()
    .collect()
}

/// Every index that is not a primary key, as (table, columns, unique).
async fn live_indexes(conn: &mut PgConnection) -> BTreeSet<(String, Vec<String>, bool)> {
    sqlx::query_as::<_, (String, Vec<String>, bool)>(
        "SELECT t.relname::text, \
                array(SELECT a.attname::text FROM unnest(i.indkey) WITH ORDINALITY k(attnum, ord) \
                      JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = k.attnum \
                      ORDER BY k.ord), \
                i.indisunique \
         FROM pg_index i JOIN pg_class t ON t.oid = i.indrelid \
         JOIN pg_namespace n ON n.oid = t.relnamespace \
         WHERE n.nspname = 'public' AND t.relname NOT IN ('_sqlx_migrations', 'cache_invalidations') \
           AND NOT i.indisprimary",
    )
    .fetch_all(conn)
    .await
    .unwrap()
    .into_iter()
    .collect()
}

async fn live_primary_keys(conn: &mut PgConnection) -> BTreeSet<(String, Vec<String>)> {
    sqlx::query_as::<_, (String, Vec<String>)>(
        "SELECT t.relname::text, \
                array(SELECT a.attname::text FROM unnest(i.indkey) k(attnum) \
                      JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = k.attnum) \
         FROM pg_index i JOIN pg_class t ON t.oid = i.indrelid \
         JOIN pg_namespace n ON n.oid = t.relnamespace \
         WHERE n.nspname = 'public' AND t.relname NOT IN ('_sqlx_migrations', 'cache_invalidations') AND i.indisprimary",
    )
    .fetch_all(conn)
    .await
    .unwrap()
    .into_iter()
    .collect()
}

async fn live_foreign_keys(conn: &mut PgConnection) -> BTreeSet<(String, String, String, String)> {
    sqlx::query_as::<_, (String, String, String, String)>(
        "SELECT c.conrelid::regclass::text, a.attname::text, c.confrelid::regclass::text, \
                CASE c.confdeltype WHEN 'r' THEN 'RESTRICT' WHEN 'c' THEN 'CASCADE' \
                     WHEN 'n' THEN 'SET NULL' WHEN 'a' THEN 'NO ACTION' ELSE 'SET DEFAULT' END \
         FROM pg_constraint c \
         JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = c.conkey[1] \
         WHERE c.contype = 'f' AND c.connamespace = 'public'::regnamespace",
    )
    .fetch_all(conn)
    .await
    .unwrap()
    .into_iter()
    .collect()
}

/// Lists what is expected but missing and what is there but unexpected.
fn assert_same<T: Ord + std::fmt::Debug>(what: &str, expected: BTreeSet<T>, live: BTreeSet<T>) {
    let missing: Vec<_> = expected.difference(&live).collect();
    let extra: Vec<_> = live.difference(&expected).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "{what} drifted from the spec\n  expected but missing: {missing:#?}\n  present but not expected: {extra:#?}"
    );
}

#[test]
fn the_expectation_covers_the_whole_spec() {
    assert_eq!(
        table_names().len(),
        13,
        "nine core and four orchestration tables"
    );
    assert_eq!(SPEC_COLUMNS.len(), 175, "spec columns");
    assert_eq!(SPEC_INDEXES.len(), 44, "spec indexes");
    let unique_columns: BTreeSet<_> = SPEC_COLUMNS.iter().map(|(t, c, _, _)| (t, c)).collect();
    assert_eq!(
        unique_columns.len(),
        SPEC_COLUMNS.len(),
        "no column listed twice"
    );
    for (t, c, _, _) in SPEC_COLUMNS {
        assert!(
            table_names().contains(*t),
            "{t}.{c} belongs to no spec table"
        );
    }
}

#[tokio::test]
async fn migrated_schema_matches_the_spec_exactly() {
    let db = edumind_tests::postgres().await.migrated_database().await;
    let mut conn = db.connect().await;

    assert_same("tables", table_names(), live_tables(&mut conn).await);

    let expected_columns = SPEC_COLUMNS
        .iter()
        .map(|(t, c, ty, null)| (t.to_string(), c.to_string(), ty.to_string(), *null))
        .collect();
    assert_same("columns", expected_columns, live_columns(&mut conn).await);

    let expected_indexes = SPEC_INDEXES
        .iter()
        .map(|(t, cols, unique)| {
            (
                t.to_string(),
                cols.iter().map(|c| c.to_string()).collect(),
                *unique,
            )
        })
        .collect();
    assert_same("indexes", expected_indexes, live_indexes(&mut conn).await);

    let expected_pks = SPEC_PRIMARY_KEYS
        .iter()
        .map(|(t, c)| (t.to_string(), vec![c.to_string()]))
        .collect();
    assert_same(
        "primary keys",
        expected_pks,
        live_primary_keys(&mut conn).await,
    );

    let expected_fks = FOREIGN_KEYS
        .iter()
        .map(|(t, c, r, d)| (t.to_string(), c.to_string(), r.to_string(), d.to_string()))
        .collect();
    assert_same(
        "foreign keys",
        expected_fks,
        live_foreign_keys(&mut conn).await,
    );
}

#[tokio::test]
async fn spec_defaults_and_limits_hold() {
    let db = edumind_tests::postgres().await.migrated_database().await;
    let mut conn = db.connect().await;
    let course = uuid::Uuid::new_v4();
    sqlx::query(
        "INSERT INTO courses (id, name, code, subject, grade_level, description) \
         VALUES ($1, 'Algebra I', 'ALG1', 1, 8, 'Linear equations')",
    )
    .bind(course)
    .execute(&mut conn)
    .await
    .unwrap();
    let assessment = uuid::Uuid::new_v4();
    sqlx::query(
        "INSERT INTO assessments (id, course_id, title, description, assessment_type, subject, \
         grade_level, total_points) VALUES ($1, $2, 'Quiz 1', 'Ten questions', 0, 1, 8, 10)",
    )
    .bind(assessment)
    .bind(course)
    .execute(&mut conn)
    .await
    .unwrap();
    let passing: i32 =
        sqlx::query_scalar("SELECT passing_score_percentage FROM assessments WHERE id = $1")
            .bind(assessment)
            .fetch_one(&mut conn)
            .await
            .unwrap();
    assert_eq!(passing, 70, "the spec's default passing score");

    // Lengths are enforced by the database, not only by the application.
    let too_long = "x".repeat(51);
    let err = sqlx::query(
        "INSERT INTO schools (id, name, code, address, contact_email) VALUES ($1, 'S', $2, 'A', 'e@x')",
    )
    .bind(uuid::Uuid::new_v4())
    .bind(&too_long)
    .execute(&mut conn)
    .await
    .expect_err("a 51-character school code must be refused");
    assert!(err.to_string().contains("too long"), "{err}");

    // Uniqueness the spec demands: one answer per question per attempt.
    let err = sqlx::query(
        "INSERT INTO courses (id, name, code, subject, grade_level, description) \
         VALUES ($1, 'Algebra again', 'ALG1', 1, 8, 'dup')",
    )
    .bind(uuid::Uuid::new_v4())
    .execute(&mut conn)
    .await
    .expect_err("course codes are unique");
    assert!(err.to_string().contains("ix_courses_code"), "{err}");
}

/// A cheap fingerprint of everything DDL would touch: every relation with its storage
/// file, and every recorded migration with its install time.
async fn catalog_fingerprint(conn: &mut PgConnection) -> Vec<String> {
    sqlx::query_scalar::<_, String>(
        "SELECT format('%s %s %s', c.relname, c.relfilenode, c.relkind) FROM pg_class c \
         WHERE c.relnamespace = 'public'::regnamespace \
         UNION ALL \
         SELECT format('migration %s %s %s', version, checksum, installed_on) FROM _sqlx_migrations \
         ORDER BY 1",
    )
    .fetch_all(conn)
    .await
    .unwrap()
}

#[tokio::test]
async fn applying_the_migrations_again_is_a_no_op() {
    let db = edumind_tests::postgres().await.database().await;
    let mut conn = db.connect().await;
    edumind_schema::migrate(&mut conn).await.unwrap();
    let before = catalog_fingerprint(&mut conn).await;
    edumind_schema::migrate(&mut conn).await.unwrap();
    let after = catalog_fingerprint(&mut conn).await;
    assert_eq!(before, after);
    let applied: i64 = sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(applied, 3);
}

#[tokio::test]
async fn concurrent_migrators_apply_each_migration_once() {
    let db = edumind_tests::postgres().await.database().await;
    let mut tasks = Vec::new();
    for _ in 0..6 {
        let db = db.clone();
        tasks.push(tokio::spawn(async move {
            let mut conn = db.connect().await;
            edumind_schema::migrate(&mut conn).await
        }));
    }
    for task in tasks {
        task.await.unwrap().expect("every racing migrator succeeds");
    }
    let mut conn = db.connect().await;
    let rows: Vec<(i64, bool)> =
        sqlx::query_as("SELECT version, success FROM _sqlx_migrations ORDER BY version")
            .fetch_all(&mut conn)
            .await
            .unwrap();
    assert_eq!(
        rows,
        vec![
            (20251015005710, true),
            (20251015212949, true),
            (20261202120000, true),
            (20261202130000, true)
        ]
    );
    assert_eq!(live_tables(&mut conn).await, table_names());
}
