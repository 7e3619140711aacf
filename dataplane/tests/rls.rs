//! Row-level security in the self-service database, proven with raw SQL as the
//! application role, and through HTTP.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use sqlx::{Connection, PgConnection};
use support::*;
use uuid::Uuid;

async fn app_conn(s: &Seeded) -> PgConnection {
    let t = &s.tenant;
    let url = format!(
        "postgres://{}:{}@{}:{}/{}",
        t.username,
        t.password.expose(),
        t.host,
        t.port,
        t.dbname
    );
    PgConnection::connect(&url).await.unwrap()
}

#[tokio::test]
async fn app_role_sees_only_the_callers_rows() {
    let pg = edumind_tests::postgres().await;
    let ss = provision(pg, edumind_dataplane::tenants::TenantId::SelfService).await;
    let (user_a, student_a) = ss.students[0];
    let (_, student_b) = ss.students[1];
    let mut c = app_conn(&ss).await;

    // The application role does not own the tables.
    let owns: bool = sqlx::query_scalar(
        "SELECT bool_or(tableowner = current_user) FROM pg_tables WHERE schemaname = 'public'",
    )
    .fetch_one(&mut c)
    .await
    .unwrap();
    assert!(!owns);

    // Nobody said who is asking: no student rows at all (fail closed).
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM students")
        .fetch_one(&mut c)
        .await
        .unwrap();
    assert_eq!(n, 0);

    // As student A: exactly A's row, whatever the query asks for.
    let mut tx = c.begin().await.unwrap();
    sqlx::query("SELECT set_config('edumind.user_id', $1, true)")
        .bind(user_a.to_string())
        .execute(&mut *tx)
        .await
        .unwrap();
    let ids: Vec<Uuid> = sqlx::query_scalar("SELECT id FROM students")
        .fetch_all(&mut *tx)
        .await
        .unwrap();
    assert_eq!(ids, vec![student_a]);
    let b: Option<Uuid> = sqlx::query_scalar("SELECT id FROM students WHERE id = $1")
        .bind(student_b)
        .fetch_optional(&mut *tx)
        .await
        .unwrap();
    assert_eq!(b, None);
    // Writing B's data is refused too: zero rows updated, and inserting for B fails.
    let updated = sqlx::query("UPDATE students SET xp_points = 999 WHERE id = $1")
        .bind(student_b)
        .execute(&mut *tx)
        .await
        .unwrap()
        .rows_affected();
    assert_eq!(updated, 0);
    let insert = sqlx::query(
        "INSERT INTO student_assessments (id, student_id, assessment_id, max_score) VALUES ($1, $2, $3, 1)",
    )
    .bind(Uuid::new_v4())
    .bind(student_b)
    .bind(ASSESSMENT)
    .execute(&mut *tx)
    .await;
    assert!(
        insert.is_err(),
        "WITH CHECK must refuse rows of another student"
    );
    tx.rollback().await.unwrap();

    // The setting is per transaction: gone afterwards.
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM students")
        .fetch_one(&mut c)
        .await
        .unwrap();
    assert_eq!(n, 0);

    // The data plane's one-statement form (set_config in the same statement).
    let doc: Option<serde_json::Value> = sqlx::query_scalar(edumind_dataplane::scoped!(
        "SELECT coalesce(jsonb_agg(s.id), '[]'::jsonb) AS doc FROM students s"
    ))
    .bind(user_a.to_string())
    .bind("off")
    .fetch_optional(&mut c)
    .await
    .unwrap();
    assert_eq!(doc.unwrap(), serde_json::json!([student_a]));
    // Platform admin flag lets all rows through.
    let doc: Option<serde_json::Value> = sqlx::query_scalar(edumind_dataplane::scoped!(
        "SELECT to_jsonb(count(*)) AS doc FROM students s"
    ))
    .bind(Uuid::new_v4().to_string())
    .bind("on")
    .fetch_optional(&mut c)
    .await
    .unwrap();
    assert_eq!(doc.unwrap(), serde_json::json!(2));
}

#[tokio::test]
async fn self_service_students_through_http() {
    let f = Fixture::start(edumind_tests::redis().await.url()).await;
    let (user_a, student_a) = f.ss.students[0];
    let (user_b, student_b) = f.ss.students[1];
    let ta = token(user_a, 0, None);
    let tb = token(user_b, 0, None);
    let (s, v, _) = f
        .call("GET", "/v1/tenants/selfservice/students", Some(&ta), None)
        .await;
    assert_eq!(s, 200);
    assert_eq!(v["items"].as_array().unwrap().len(), 1);
    assert_eq!(v["items"][0]["id"], student_a.to_string());
    let own = f
        .call(
            "GET",
            &format!("/v1/tenants/selfservice/students/{student_a}/progress"),
            Some(&ta),
            None,
        )
        .await;
    assert_eq!(own.0, 200);
    // B asks for A's progress right after it was cached: still 404.
    let other = f
        .call(
            "GET",
            &format!("/v1/tenants/selfservice/students/{student_a}/progress"),
            Some(&tb),
            None,
        )
        .await;
    assert_eq!(other.0, 404);
    // A full attempt in the self-service database under RLS.
    let (s, att, _) = f
        .call(
            "POST",
            "/v1/tenants/selfservice/attempts",
            Some(&tb),
            Some(serde_json::json!({"assessment_id": ASSESSMENT})),
        )
        .await;
    assert_eq!(s, 201, "{att}");
    let id = att["id"].as_str().unwrap();
    for (q, a) in [(Q1, "B"), (Q2, "42"), (Q3, "x")] {
        let (s, r, _) = f
            .call(
                "POST",
                &format!("/v1/tenants/selfservice/attempts/{id}/responses"),
                Some(&tb),
                Some(serde_json::json!({"question_id": q, "answer": a})),
            )
            .await;
        assert_eq!(s, 200, "{r}");
    }
    // A cannot submit B's attempt.
    assert_eq!(
        f.call(
            "POST",
            &format!("/v1/tenants/selfservice/attempts/{id}/submit"),
            Some(&ta),
            None
        )
        .await
        .0,
        404
    );
    let (s, v, _) = f
        .call(
            "POST",
            &format!("/v1/tenants/selfservice/attempts/{id}/submit"),
            Some(&tb),
            None,
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["attempt"]["passed"], true);
    assert_eq!(v["attempt"]["xp_earned"], 80);
    assert_eq!(v["student"]["xp_points"], 80);
    let _ = student_b;
}

/// Content in the self-service database: the application role may write it, but the
/// policies admit only platform admins; a student changes nothing (raw SQL as the role).
#[tokio::test]
async fn only_admins_write_content_in_self_service() {
    let pg = edumind_tests::postgres().await;
    let ss = provision(pg, edumind_dataplane::tenants::TenantId::SelfService).await;
    let (user_a, _) = ss.students[0];
    let mut c = app_conn(&ss).await;
    let as_caller = async |c: &mut PgConnection, user: Uuid, admin: &str, sql: &str| {
        let mut tx = c.begin().await.unwrap();
        sqlx::query(
            "SELECT set_config('edumind.user_id', $1, true), set_config('edumind.admin', $2, true)",
        )
        .bind(user.to_string())
        .bind(admin)
        .execute(&mut *tx)
        .await
        .unwrap();
        let r = sqlx::query(sqlx::AssertSqlSafe(sql.to_owned()))
            .execute(&mut *tx)
            .await
            .map(|r| r.rows_affected());
        tx.commit().await.unwrap_or(());
        r
    };
    let code = |r: Result<u64, sqlx::Error>| match r {
        Err(sqlx::Error::Database(e)) => e.code().map(|c| c.into_owned()),
        other => panic!("expected a database error, got {other:?}"),
    };
    let new_course = "INSERT INTO courses (id, name, code, subject, grade_level, description) VALUES (gen_random_uuid(), 'X', 'XSTU', 1, 8, 'd')";
    // Student: insert refused by the policy, updates touch nothing or are refused.
    assert_eq!(
        code(as_caller(&mut c, user_a, "off", new_course).await).as_deref(),
        Some("42501")
    );
    assert_eq!(
        as_caller(&mut c, user_a, "off", "UPDATE courses SET name = 'hacked'")
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        as_caller(
            &mut c,
            user_a,
            "off",
            "UPDATE assessments SET title = 'hacked'"
        )
        .await
        .unwrap(),
        0
    );
    assert_eq!(
        code(
            as_caller(
                &mut c,
                user_a,
                "off",
                "UPDATE questions SET correct_answer = '\"A\"'"
            )
            .await
        )
        .as_deref(),
        Some("42501")
    );
    // ...but a submission's counters still move.
    assert_eq!(
        as_caller(
            &mut c,
            user_a,
            "off",
            "UPDATE questions SET times_answered = times_answered + 1, updated_at = now()"
        )
        .await
        .unwrap(),
        3
    );
    // Platform admin: writes go through.
    assert_eq!(
        as_caller(&mut c, Uuid::new_v4(), "on", new_course)
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        as_caller(
            &mut c,
            Uuid::new_v4(),
            "on",
            "UPDATE questions SET question_text = 'q2?'"
        )
        .await
        .unwrap(),
        3
    );
    let names: Vec<String> = sqlx::query_scalar(edumind_dataplane::scoped!(
        "SELECT to_jsonb(c.name) AS doc FROM courses c ORDER BY c.code"
    ))
    .bind(user_a.to_string())
    .bind("off")
    .fetch_all(&mut c)
    .await
    .unwrap()
    .into_iter()
    .map(|v: serde_json::Value| v.as_str().unwrap().to_owned())
    .collect();
    assert_eq!(
        names,
        ["Algebra", "X"],
        "the student's update changed nothing"
    );
}

#[tokio::test]
async fn self_service_student_cannot_write_content_over_http() {
    let f = Fixture::start(edumind_tests::redis().await.url()).await;
    let student = token(f.ss.students[0].0, 0, None);
    let body = serde_json::json!({"name": "X", "code": "X1", "subject": 1, "grade_level": 8, "description": "d"});
    for (path, body) in [
        (
            format!("/v1/tenants/selfservice/courses/{COURSE}"),
            body.clone(),
        ),
        (
            format!("/v1/tenants/selfservice/courses/{}", Uuid::new_v4()),
            body,
        ),
    ] {
        let (s, v, h) = f.call("PUT", &path, Some(&student), Some(body)).await;
        assert_eq!(s, 403, "{v}");
        assert_eq!(h["content-type"], "application/problem+json");
    }
}
