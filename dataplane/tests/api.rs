//! Real HTTP against the bound port; real PostgreSQL and Redis from the harness.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use serde_json::{Value, json};
use support::*;
use uuid::Uuid;

const NEW_COURSE: Uuid = Uuid::from_u128(0xc0_0000_0000_0000_0000_0000_0000_0002);
const NEW_QUESTION: Uuid = Uuid::from_u128(0x01_0000_0000_0000_0000_0000_0000_0009);
const NEW_ASSESSMENT: Uuid = Uuid::from_u128(0xa5_0000_0000_0000_0000_0000_0000_0002);
const NEW_CLASS: Uuid = Uuid::from_u128(0xc1_0000_0000_0000_0000_0000_0000_0002);

fn course_body(code: &str) -> Value {
    json!({"name": "Geometry", "code": code, "subject": 1, "grade_level": 8,
           "description": "shapes", "topics": ["angles"], "metadata": {"source": "sync"}})
}

fn question_body(course: Uuid) -> Value {
    json!({"course_id": course, "question_text": "2+2?", "question_type": 0, "subject": 1,
           "grade_level": 8, "difficulty_level": 1, "correct_answer": "4", "points": 5})
}

fn assessment_body(course: Uuid) -> Value {
    json!({"course_id": course, "title": "Test", "assessment_type": 0, "subject": 1,
           "grade_level": 8, "question_ids": [], "total_points": 0})
}

fn class_body(code: &str) -> Value {
    json!({"name": "Nine B", "code": code, "grade_level": 9, "subject": 1,
           "academic_year": "2025-2026"})
}

fn decision_body(task: &str) -> Value {
    json!({"task_id": task, "task_type": "quiz", "required_capability": "grading",
           "selected_agent": "agent-1", "reason": "best score", "routing_score": 0.9,
           "workflow_execution_id": "wf-1"})
}

fn stats_body() -> Value {
    json!({"total_tasks": 10, "successful_tasks": 9, "failed_tasks": 1,
           "average_duration_ms": 120, "success_rate": 0.9})
}

async fn fixture() -> Fixture {
    Fixture::start(edumind_tests::redis().await.url()).await
}

#[tokio::test]
async fn every_role_against_every_endpoint() {
    let f = fixture().await;
    let (a, b) = (&f.a, &f.b);
    let sa = a.school_id.unwrap();
    let ta = sa.to_string();
    let (stu_user, stu_id) = a.students[0];
    let (_, other_stu) = a.students[1];
    let ss_user = f.ss.students[0].0;
    let tokens = [
        ("student", token(stu_user, 0, Some(sa))),
        ("teacher", token(a.teacher_user, 1, Some(sa))),
        ("school_admin", token(a.admin_user, 2, Some(sa))),
        ("course_admin", token(Uuid::new_v4(), 3, None)),
        ("business_admin", token(Uuid::new_v4(), 4, None)),
        ("system_admin", token(Uuid::new_v4(), 5, None)),
        ("selfservice", token(ss_user, 0, None)),
        ("teacher_of_b", token(b.teacher_user, 1, b.school_id)),
    ];
    let decision = Uuid::new_v4();
    sqlx::query("INSERT INTO routing_decisions (id, tenant_id, task_id, task_type, required_capability, selected_agent, reason, routing_score) VALUES ($1, $2, 't0', 'quiz', 'grading', 'agent-1', 'seeded', 0.5)")
        .bind(decision)
        .bind(&ta)
        .execute(&mut a.db.connect().await)
        .await
        .unwrap();
    let endpoints: Vec<(&str, String, Option<Value>)> = vec![
        ("GET", format!("/v1/tenants/{ta}/school"), None),
        ("GET", format!("/v1/tenants/{ta}/students"), None),
        (
            "GET",
            format!("/v1/tenants/{ta}/students/{stu_id}/progress"),
            None,
        ),
        (
            "GET",
            format!("/v1/tenants/{ta}/students/{other_stu}/progress"),
            None,
        ),
        (
            "GET",
            format!("/v1/tenants/{ta}/classes/{}/roster", a.class_id),
            None,
        ),
        (
            "PUT",
            format!("/v1/tenants/{ta}/classes/{}/roster", a.class_id),
            Some(json!({"student_ids": [stu_id, other_stu]})),
        ),
        (
            "GET",
            format!("/v1/tenants/{ta}/courses/{COURSE}/questions"),
            None,
        ),
        (
            "GET",
            format!("/v1/tenants/{ta}/assessments/{ASSESSMENT}"),
            None,
        ),
        (
            "POST",
            format!("/v1/tenants/{ta}/attempts"),
            Some(json!({"assessment_id": ASSESSMENT})),
        ),
        ("GET", format!("/v1/tenants/{ta}/workflow-executions"), None),
        ("GET", format!("/v1/tenants/{ta}/circuit-breakers"), None),
        (
            "PUT",
            format!("/v1/tenants/{ta}/circuit-breakers/agent-1"),
            Some(
                json!({"state": "Open", "failure_count": 3, "last_failure_at": "2025-10-15T10:00:00Z"}),
            ),
        ),
        (
            "GET",
            format!("/v1/tenants/{ta}/circuit-breakers/agent-1"),
            None,
        ),
        ("GET", format!("/v1/tenants/{ta}/routing-decisions"), None),
        (
            "POST",
            format!("/v1/tenants/{ta}/routing-decisions"),
            Some(decision_body("task-1")),
        ),
        (
            "GET",
            format!("/v1/tenants/{ta}/routing-decisions/{decision}"),
            None,
        ),
        ("GET", format!("/v1/tenants/{ta}/routing-statistics"), None),
        (
            "PUT",
            format!("/v1/tenants/{ta}/routing-statistics/agent-1"),
            Some(stats_body()),
        ),
        (
            "GET",
            format!("/v1/tenants/{ta}/routing-statistics/agent-1"),
            None,
        ),
        (
            "PUT",
            format!("/v1/tenants/{ta}/courses/{NEW_COURSE}"),
            Some(course_body("GEO8")),
        ),
        (
            "PUT",
            format!("/v1/tenants/{ta}/questions/{NEW_QUESTION}"),
            Some(question_body(NEW_COURSE)),
        ),
        (
            "PUT",
            format!("/v1/tenants/{ta}/assessments/{NEW_ASSESSMENT}"),
            Some(assessment_body(NEW_COURSE)),
        ),
        (
            "PUT",
            format!("/v1/tenants/{ta}/classes/{NEW_CLASS}"),
            Some(class_body("9B")),
        ),
    ];
    // Expected status per endpoint row, columns in `tokens` order.
    let expected: Vec<[u16; 8]> = vec![
        //st  te   sa   ca   ba   sy   ss   tb
        [200, 200, 200, 403, 200, 200, 404, 404], // school
        [200, 200, 200, 403, 200, 200, 404, 404], // students (student: only self)
        [200, 200, 200, 403, 200, 200, 404, 404], // own progress
        [404, 200, 200, 403, 200, 200, 404, 404], // another student's progress
        [403, 200, 200, 403, 200, 200, 404, 404], // roster
        [403, 200, 200, 403, 200, 200, 404, 404], // roster put
        [200, 200, 200, 200, 200, 200, 404, 404], // course questions
        [200, 200, 200, 200, 200, 200, 404, 404], // assessment meta
        [201, 403, 403, 403, 403, 403, 404, 404], // start attempt
        [403, 403, 403, 403, 200, 200, 404, 404], // workflow list
        [403, 403, 403, 403, 200, 200, 404, 404], // circuit breakers list
        [403, 403, 403, 403, 200, 200, 404, 404], // circuit breaker upsert
        [403, 403, 403, 403, 200, 200, 404, 404], // circuit breaker get
        [403, 403, 403, 403, 200, 200, 404, 404], // routing decisions list
        [403, 403, 403, 403, 201, 201, 404, 404], // routing decision create
        [403, 403, 403, 403, 200, 200, 404, 404], // routing decision get
        [403, 403, 403, 403, 200, 200, 404, 404], // routing statistics list
        [403, 403, 403, 403, 200, 200, 404, 404], // routing statistics upsert
        [403, 403, 403, 403, 200, 200, 404, 404], // routing statistics get
        [403, 403, 403, 200, 200, 200, 404, 404], // course upsert
        [403, 403, 403, 200, 200, 200, 404, 404], // question upsert
        [403, 403, 403, 200, 200, 200, 404, 404], // assessment upsert
        [403, 403, 200, 403, 200, 200, 404, 404], // class upsert
    ];
    assert_eq!(expected.len(), endpoints.len());
    let mut failures = Vec::new();
    for (row, (method, path, body)) in endpoints.iter().enumerate() {
        for (col, (name, tok)) in tokens.iter().enumerate() {
            let (status, v, headers) = f.call(method, path, Some(tok), body.clone()).await;
            if status != expected[row][col] {
                failures.push(format!("{name} {method} {path}: {status} {v}"));
            }
            if status >= 400 {
                assert_eq!(
                    headers["content-type"], "application/problem+json",
                    "{path}"
                );
            }
        }
        // No token at all: 401 everywhere.
        let (status, v, headers) = f.call(method, path, None, body.clone()).await;
        assert_eq!(status, 401, "{path}: {v}");
        assert_eq!(headers["www-authenticate"], "Bearer");
    }
    assert!(
        failures.is_empty(),
        "unexpected statuses:\n{}",
        failures.join("\n")
    );

    // A student listing students sees exactly themselves.
    let (_, v, _) = f
        .call(
            "GET",
            &format!("/v1/tenants/{ta}/students"),
            Some(&tokens[0].1),
            None,
        )
        .await;
    let ids: Vec<&str> = v["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec![stu_id.to_string()]);
    // Students never get answers.
    let (_, v, _) = f
        .call(
            "GET",
            &format!("/v1/tenants/{ta}/courses/{COURSE}/questions"),
            Some(&tokens[0].1),
            None,
        )
        .await;
    assert!(v["items"][0].get("correct_answer").is_none());
}

#[tokio::test]
async fn cross_tenant_requests_look_like_missing_tenants() {
    let f = fixture().await;
    let teacher_a = token(f.a.teacher_user, 1, f.a.school_id);
    let tb = f.b.school_id.unwrap();
    let existing = f
        .call(
            "GET",
            &format!("/v1/tenants/{tb}/classes/{}/roster", f.b.class_id),
            Some(&teacher_a),
            None,
        )
        .await;
    let missing = f
        .call(
            "GET",
            &format!(
                "/v1/tenants/{}/classes/{}/roster",
                Uuid::new_v4(),
                f.b.class_id
            ),
            Some(&teacher_a),
            None,
        )
        .await;
    assert_eq!(existing.0, 404);
    assert_eq!(
        existing.1, missing.1,
        "the bodies must not tell the two apart"
    );
    // An admin reaching B explicitly gets the real thing.
    let admin = token(Uuid::new_v4(), 5, None);
    let (status, v, _) = f
        .call(
            "GET",
            &format!("/v1/tenants/{tb}/classes/{}/roster", f.b.class_id),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["students"].as_array().unwrap().len(), 2);
    // A school user cannot read its own class id through another school.
    let ta = f.a.school_id.unwrap();
    let (status, _, _) = f
        .call(
            "GET",
            &format!("/v1/tenants/{ta}/classes/{}/roster", f.b.class_id),
            Some(&teacher_a),
            None,
        )
        .await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn token_checks() {
    let f = fixture().await;
    let ta = f.a.school_id.unwrap();
    let path = format!("/v1/tenants/{ta}/school");
    let ok = token(f.a.teacher_user, 1, Some(ta));
    assert_eq!(f.call("GET", &path, Some(&ok), None).await.0, 200);
    let base = json!({"sub": f.a.teacher_user.to_string(), "role": 1, "school_id": ta.to_string()});
    let mut expired = base.clone();
    expired["exp"] = json!(chrono::Utc::now().timestamp() - 3600);
    let mut not_yet = base.clone();
    not_yet["nbf"] = json!(chrono::Utc::now().timestamp() + 3600);
    let mut wrong_aud = base.clone();
    wrong_aud["aud"] = json!("someone-else");
    let mut wrong_iss = base.clone();
    wrong_iss["iss"] = json!("https://evil.test");
    let mut bad_role = base.clone();
    bad_role["role"] = json!(9);
    for (name, claims) in [
        ("expired", expired),
        ("nbf", not_yet),
        ("aud", wrong_aud),
        ("iss", wrong_iss),
        ("role", bad_role),
    ] {
        let (status, v, _) = f
            .call("GET", &path, Some(&token_with(claims, 3600)), None)
            .await;
        assert_eq!(status, 401, "{name}: {v}");
    }
    let tampered = format!("{}x", ok);
    assert_eq!(f.call("GET", &path, Some(&tampered), None).await.0, 401);
    // Role names: the documented spelling only.
    let named = |role: &str, user: Uuid, school: Option<Uuid>| {
        token_with(
            json!({"sub": user.to_string(), "role": role,
                   "school_id": school.map(|s| s.to_string())}),
            3600,
        )
    };
    let admin_user = f.a.admin_user;
    assert_eq!(
        f.call(
            "GET",
            &path,
            Some(&named("SchoolAdmin", admin_user, Some(ta))),
            None
        )
        .await
        .0,
        200
    );
    assert_eq!(
        f.call(
            "GET",
            &path,
            Some(&named("SystemAdmin", Uuid::new_v4(), None)),
            None
        )
        .await
        .0,
        200
    );
    for spelling in [
        "systemadmin",
        "SYSTEMADMIN",
        "systemAdmin",
        " SystemAdmin",
        "System Admin",
    ] {
        let (status, v, _) = f
            .call(
                "GET",
                &path,
                Some(&named(spelling, Uuid::new_v4(), None)),
                None,
            )
            .await;
        assert_eq!(status, 401, "role {spelling:?}: {v}");
    }
    for spelling in ["schooladmin", "SCHOOLADMIN", "school_admin"] {
        let (status, v, _) = f
            .call(
                "GET",
                &path,
                Some(&named(spelling, admin_user, Some(ta))),
                None,
            )
            .await;
        assert_eq!(status, 401, "role {spelling:?}: {v}");
    }
}

#[tokio::test]
async fn submit_scores_and_updates_progress_once() {
    let f = fixture().await;
    let ta = f.a.school_id.unwrap().to_string();
    let (user, student) = f.a.students[0];
    let tok = token(user, 0, f.a.school_id);
    let (s, attempt, _) = f
        .call(
            "POST",
            &format!("/v1/tenants/{ta}/attempts"),
            Some(&tok),
            Some(json!({"assessment_id": ASSESSMENT})),
        )
        .await;
    assert_eq!(s, 201, "{attempt}");
    let id = attempt["id"].as_str().unwrap().to_owned();
    let answer = |q: Uuid, a: &str| json!({"question_id": q, "answer": a, "time_spent_seconds": 7});
    let (s, r, _) = f
        .call(
            "POST",
            &format!("/v1/tenants/{ta}/attempts/{id}/responses"),
            Some(&tok),
            Some(answer(Q1, "b")),
        )
        .await;
    // No correctness while the attempt is in progress.
    assert_eq!(s, 200, "{r}");
    assert!(
        r.get("is_correct").is_none() && r.get("points_earned").is_none(),
        "{r}"
    );
    let (s, r, _) = f
        .call(
            "POST",
            &format!("/v1/tenants/{ta}/attempts/{id}/responses"),
            Some(&tok),
            Some(answer(Q2, "41")),
        )
        .await;
    assert_eq!(s, 200, "{r}");
    assert!(
        r.get("is_correct").is_none() && r.get("points_earned").is_none(),
        "{r}"
    );
    // Nor in GET, for the student; staff see it.
    let get_url = format!("/v1/tenants/{ta}/attempts/{id}");
    let (s, v, _) = f.call("GET", &get_url, Some(&tok), None).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["responses"].as_array().unwrap().len(), 2, "{v}");
    for r in v["responses"].as_array().unwrap() {
        assert!(
            r.get("is_correct").is_none() && r.get("points_earned").is_none(),
            "{v}"
        );
    }
    let teacher = token(f.a.teacher_user, 1, f.a.school_id);
    let (_, v, _) = f.call("GET", &get_url, Some(&teacher), None).await;
    assert_eq!(v["responses"][0]["is_correct"], json!(true), "{v}");
    // Q3 skipped. 10 of 30 points < 60% → failed.
    let too_long = "x".repeat(4001);
    let (s, _, _) = f
        .call(
            "POST",
            &format!("/v1/tenants/{ta}/attempts/{id}/responses"),
            Some(&tok),
            Some(answer(Q3, &too_long)),
        )
        .await;
    assert_eq!(s, 400);

    // Two submissions at once: exactly one wins.
    let url = format!("/v1/tenants/{ta}/attempts/{id}/submit");
    let (r1, r2) = tokio::join!(
        f.call("POST", &url, Some(&tok), None),
        f.call("POST", &url, Some(&tok), None)
    );
    let mut statuses = vec![r1.0, r2.0];
    statuses.sort();
    assert_eq!(statuses, vec![200, 409], "{} {}", r1.1, r2.1);
    let won = if r1.0 == 200 { r1.1 } else { r2.1 };
    let att = &won["attempt"];
    assert_eq!(att["score"], 10);
    assert_eq!(att["passed"], false);
    assert_eq!(
        (
            att["correct_answers"].clone(),
            att["incorrect_answers"].clone(),
            att["skipped_questions"].clone()
        ),
        (json!(1), json!(1), json!(1))
    );
    assert_eq!(att["xp_earned"], 10);
    assert_eq!(
        won["student"],
        json!({"xp_points": 10, "level": 1, "daily_streak": 1})
    );
    // Later submissions too.
    assert_eq!(f.call("POST", &url, Some(&tok), None).await.0, 409);
    let mut conn = f.a.db.connect().await;
    let xp: i32 = sqlx::query_scalar("SELECT xp_points FROM students WHERE id = $1")
        .bind(student)
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(xp, 10, "XP must be awarded exactly once");
    // Submitted: the student sees which answers were right.
    let (_, v, _) = f.call("GET", &get_url, Some(&tok), None).await;
    let correct: Vec<Value> = v["responses"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["is_correct"].clone())
        .collect();
    assert_eq!(correct, vec![json!(true), json!(false)], "{v}");
    assert_eq!(v["responses"][0]["points_earned"], 10, "{v}");
    // Answers are closed after submission.
    let (s, _, _) = f
        .call(
            "POST",
            &format!("/v1/tenants/{ta}/attempts/{id}/responses"),
            Some(&tok),
            Some(answer(Q3, "x")),
        )
        .await;
    assert_eq!(s, 409);
    // Another student of the same school cannot see the attempt.
    let other = token(f.a.students[1].0, 0, f.a.school_id);
    assert_eq!(
        f.call(
            "GET",
            &format!("/v1/tenants/{ta}/attempts/{id}"),
            Some(&other),
            None
        )
        .await
        .0,
        404
    );
    let (s, v, _) = f
        .call(
            "GET",
            &format!("/v1/tenants/{ta}/attempts/{id}"),
            Some(&tok),
            None,
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(v["responses"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn problem_json_for_bad_requests_and_etags() {
    let f = fixture().await;
    let ta = f.a.school_id.unwrap();
    let tok = token(f.a.teacher_user, 1, Some(ta));
    let path = format!("/v1/tenants/{ta}/classes/{}/roster", f.a.class_id);
    let (s, v, h) = f
        .call(
            "PUT",
            &path,
            Some(&tok),
            Some(json!({"student_ids": "nope"})),
        )
        .await;
    assert_eq!(
        (s, h["content-type"].to_str().unwrap()),
        (400, "application/problem+json"),
        "{v}"
    );
    assert_eq!(v["status"], 400);
    let (s, _, _) = f
        .call(
            "PUT",
            &path,
            Some(&tok),
            Some(json!({"student_ids": [Uuid::new_v4()]})),
        )
        .await;
    assert_eq!(s, 400, "unknown students are refused");
    let big = json!({"student_ids": vec![Uuid::nil(); 3000]});
    assert_eq!(f.call("PUT", &path, Some(&tok), Some(big)).await.0, 413);
    assert_eq!(f.call("GET", "/nowhere", None, None).await.0, 404);
    // ETag / If-None-Match
    let res = f
        .http
        .get(f.url(&path))
        .bearer_auth(&tok)
        .send()
        .await
        .unwrap();
    let etag = res.headers()["etag"].clone();
    let res = f
        .http
        .get(f.url(&path))
        .bearer_auth(&tok)
        .header("if-none-match", etag)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 304);
}

#[tokio::test]
async fn health_ready_and_metrics() {
    let f = fixture().await;
    assert_eq!(f.call("GET", "/healthz", None, None).await.0, 200);
    // Public: ready or not, nothing more; no metrics.
    let (s, v, _) = f.call("GET", "/readyz", None, None).await;
    assert_eq!((s, &v), (200, &json!({"status": "ready"})));
    let (s, v, _) = f.call("GET", "/metrics", None, None).await;
    assert_eq!(s, 404, "metrics on the public listener: {v}");
    // Admin listener: the details and the metrics.
    let admin = |path: &str| {
        let url = format!("{}{path}", f.admin_base);
        let http = f.http.clone();
        async move {
            let r = http.get(url).send().await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    let (s, text) = admin("/readyz").await;
    assert_eq!(s, 200, "{text}");
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["postgres"]["status"], "up");
    assert_eq!(v["redis"]["status"], "up");
    assert_eq!(v["tenants"], 3);
    assert_eq!(admin("/healthz").await.0, 200);
    let (s, text) = admin("/metrics").await;
    assert_eq!(s, 200);
    assert!(
        text.contains("edumind_http_requests_total{route=\"readyz\",status=\"200\"} 1"),
        "{text}"
    );
    assert!(text.contains("edumind_pool_open_connections"), "{text}");
    // Nothing public names a server.
    let pg = edumind_tests::postgres().await;
    let (_, v, _) = f.call("GET", "/readyz", None, None).await;
    assert!(!v.to_string().contains(&pg.port.to_string()), "{v}");
}

#[tokio::test]
async fn users_are_validated_against_their_columns() {
    let f = fixture().await;
    let ta = f.a.school_id.unwrap();
    let path = format!("/v1/tenants/{ta}/users");
    let school_admin = token(f.a.admin_user, 2, Some(ta));
    let teacher = token(f.a.teacher_user, 1, Some(ta));
    let ok = json!({"email": "new@x.test", "full_name": "New Teacher", "role": 1});
    assert_eq!(
        f.call("POST", &path, Some(&teacher), Some(ok.clone()))
            .await
            .0,
        403
    );
    let (s, v, _) = f
        .call("POST", &path, Some(&school_admin), Some(ok.clone()))
        .await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["school_id"], ta.to_string());
    assert_eq!(
        f.call("POST", &path, Some(&school_admin), Some(ok.clone()))
            .await
            .0,
        409,
        "duplicate email"
    );
    for bad in [
        json!({"email": format!("{}@x.test", "a".repeat(250)), "full_name": "N", "role": 1}),
        json!({"email": "no-at-sign", "full_name": "N", "role": 1}),
        json!({"email": "b@x.test", "full_name": "", "role": 1}),
        json!({"email": "b@x.test", "full_name": "N".repeat(256), "role": 1}),
        json!({"email": "b@x.test", "full_name": "N", "role": 5}),
        json!({"email": "b@x.test", "full_name": "N", "role": 1, "external_id": "x".repeat(256)}),
        json!({"email": "b@x.test", "full_name": "N", "role": 1, "surprise": true}),
    ] {
        let (s, v, _) = f
            .call("POST", &path, Some(&school_admin), Some(bad.clone()))
            .await;
        assert_eq!(s, 400, "{bad} -> {v}");
    }
    // A platform admin may create platform roles.
    let admin = token(Uuid::new_v4(), 5, None);
    let (s, _, _) = f
        .call(
            "POST",
            &path,
            Some(&admin),
            Some(json!({"email": "c@x.test", "full_name": "C", "role": 5})),
        )
        .await;
    assert_eq!(s, 201);
    // Keyset pagination over the indexed role filter.
    let (s, page1, _) = f
        .call("GET", &format!("{path}?limit=2"), Some(&teacher), None)
        .await;
    assert_eq!(s, 200);
    assert_eq!(page1["items"].as_array().unwrap().len(), 2);
    let after = page1["next_after"].as_str().unwrap();
    let (_, page2, _) = f
        .call(
            "GET",
            &format!("{path}?limit=2&after={after}"),
            Some(&teacher),
            None,
        )
        .await;
    let first: Vec<&str> = page1["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["id"].as_str().unwrap())
        .collect();
    for u in page2["items"].as_array().unwrap() {
        assert!(u["id"].as_str().unwrap() > after && !first.contains(&u["id"].as_str().unwrap()));
    }
    let (s, students, _) = f
        .call("GET", &format!("{path}?role=0"), Some(&teacher), None)
        .await;
    assert_eq!(s, 200, "{students}");
    assert!(
        students["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|u| u["role"] == 0)
    );
    assert_eq!(students["items"].as_array().unwrap().len(), 2);
    let stu = token(f.a.students[0].0, 0, Some(ta));
    assert_eq!(f.call("GET", &path, Some(&stu), None).await.0, 403);
}

#[tokio::test]
async fn orchestration_tables_are_validated_paginated_and_upserted() {
    let f = fixture().await;
    let ta = f.a.school_id.unwrap();
    let admin = token(Uuid::new_v4(), 5, None);
    let bad = |path: String, body: Value| (path, body);
    let long = |n: usize| "x".repeat(n);
    let breaker = format!("/v1/tenants/{ta}/circuit-breakers/agent-1");
    let stats = format!("/v1/tenants/{ta}/routing-statistics/agent-1");
    let decisions = format!("/v1/tenants/{ta}/routing-decisions");
    let mut over_long = decision_body("t");
    over_long["task_id"] = json!(long(101));
    let mut agent_long = decision_body("t");
    agent_long["selected_agent"] = json!(long(201));
    let mut wf_long = decision_body("t");
    wf_long["workflow_step_id"] = json!(long(101));
    let mut rate = stats_body();
    rate["success_rate"] = json!(1.5);
    let mut negative = stats_body();
    negative["failed_tasks"] = json!(-1);
    let cases = [
        bad(breaker.clone(), json!({"state": "Broken"})),
        bad(breaker.clone(), json!({"state": "closed"})),
        bad(
            breaker.clone(),
            json!({"state": "Open", "failure_count": -1}),
        ),
        bad(
            breaker.clone(),
            json!({"state": "Open", "last_failure_at": "yesterday"}),
        ),
        bad(breaker.clone(), json!({"state": "Open", "extra": 1})),
        bad(
            format!("/v1/tenants/{ta}/circuit-breakers/{}", long(201)),
            json!({"state": "Open"}),
        ),
        bad(stats.clone(), rate),
        bad(stats.clone(), negative),
        bad(
            format!("/v1/tenants/{ta}/routing-statistics/{}", long(201)),
            stats_body(),
        ),
        bad(decisions.clone(), over_long),
        bad(decisions.clone(), agent_long),
        bad(decisions.clone(), wf_long),
    ];
    for (path, body) in cases {
        let method = if path.contains("routing-decisions") {
            "POST"
        } else {
            "PUT"
        };
        let (s, v, h) = f
            .call(method, &path, Some(&admin), Some(body.clone()))
            .await;
        assert_eq!(s, 400, "{path} {body}: {v}");
        assert_eq!(h["content-type"], "application/problem+json");
    }
    // Nothing invalid reached the database.
    let n: i64 = sqlx::query_scalar("SELECT (SELECT count(*) FROM circuit_breaker_states) + (SELECT count(*) FROM routing_statistics) + (SELECT count(*) FROM routing_decisions)")
        .fetch_one(&mut f.a.db.connect().await)
        .await
        .unwrap();
    assert_eq!(n, 0);

    // The longest valid values fit; a second PUT replaces the state.
    let key = long(200);
    let path = format!("/v1/tenants/{ta}/circuit-breakers/{key}");
    let (s, v, _) = f
        .call(
            "PUT",
            &path,
            Some(&admin),
            Some(json!({"state": "Open", "failure_count": 5})),
        )
        .await;
    assert_eq!(
        (s, v["state"].as_str(), v["tenant_id"].as_str()),
        (200, Some("Open"), Some(ta.to_string().as_str())),
        "{v}"
    );
    let (s, v, _) = f
        .call(
            "PUT",
            &path,
            Some(&admin),
            Some(json!({"state": "HalfOpen"})),
        )
        .await;
    assert_eq!(
        (s, v["state"].as_str(), v["failure_count"].as_i64()),
        (200, Some("HalfOpen"), Some(0)),
        "{v}"
    );
    let (_, v, _) = f.call("GET", &path, Some(&admin), None).await;
    assert_eq!(v["state"], "HalfOpen");
    let (s, _, _) = f
        .call(
            "GET",
            &format!("/v1/tenants/{ta}/circuit-breakers/nobody"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(s, 404);

    // Routing decisions: keyset pages and the task filter.
    let mut ids = Vec::new();
    for task in ["a", "a", "b"] {
        let (s, v, _) = f
            .call("POST", &decisions, Some(&admin), Some(decision_body(task)))
            .await;
        assert_eq!(s, 201, "{v}");
        ids.push(v["id"].as_str().unwrap().to_owned());
    }
    ids.sort();
    let (_, p1, _) = f
        .call("GET", &format!("{decisions}?limit=2"), Some(&admin), None)
        .await;
    let got: Vec<&str> = p1["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_str().unwrap())
        .collect();
    assert_eq!(got, ids[..2]);
    let after = p1["next_after"].as_str().unwrap();
    let (_, p2, _) = f
        .call(
            "GET",
            &format!("{decisions}?limit=2&after={after}"),
            Some(&admin),
            None,
        )
        .await;
    let got: Vec<&str> = p2["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_str().unwrap())
        .collect();
    assert_eq!(got, ids[2..]);
    assert!(p2["next_after"].is_null());
    let (_, v, _) = f
        .call(
            "GET",
            &format!("{decisions}?task_id=a&tenant_id={ta}"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(v["items"].as_array().unwrap().len(), 2);
    let (_, v, _) = f
        .call(
            "GET",
            &format!("{decisions}?tenant_id=someone-else"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(v["items"].as_array().unwrap().len(), 0);
    let (_, v, _) = f
        .call(
            "GET",
            &format!("{decisions}/{}", ids[0]),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(v["id"], ids[0].as_str());

    // Routing statistics upsert replaces the row.
    let (s, _, _) = f
        .call("PUT", &stats, Some(&admin), Some(stats_body()))
        .await;
    assert_eq!(s, 200);
    let mut next = stats_body();
    next["total_tasks"] = json!(11);
    f.call("PUT", &stats, Some(&admin), Some(next)).await;
    let (_, v, _) = f
        .call(
            "GET",
            &format!("/v1/tenants/{ta}/routing-statistics"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(v["items"].as_array().unwrap().len(), 1);
    assert_eq!(v["items"][0]["total_tasks"], 11);
}

#[tokio::test]
async fn content_and_class_writes_are_validated() {
    let f = fixture().await;
    let ta = f.a.school_id.unwrap();
    let admin = token(Uuid::new_v4(), 3, None);
    let long = |n: usize| "x".repeat(n);
    let course = format!("/v1/tenants/{ta}/courses/{}", Uuid::new_v4());
    let question = format!("/v1/tenants/{ta}/questions/{}", Uuid::new_v4());
    let assessment = format!("/v1/tenants/{ta}/assessments/{}", Uuid::new_v4());
    let class = format!("/v1/tenants/{ta}/classes/{}", Uuid::new_v4());
    let with = |mut b: Value, k: &str, v: Value| {
        b[k] = v;
        b
    };
    let cases = [
        (&course, with(course_body("C1"), "name", json!(long(256)))),
        (&course, with(course_body("C1"), "code", json!(long(51)))),
        (
            &course,
            with(course_body("C1"), "description", json!(long(2001))),
        ),
        (&course, with(course_body("C1"), "grade_level", json!(5))),
        (
            &course,
            with(course_body("C1"), "board_name", json!(long(101))),
        ),
        (&course, with(course_body("C1"), "metadata", json!([1]))),
        (
            &question,
            with(question_body(COURSE), "question_text", json!(long(4001))),
        ),
        (
            &question,
            with(question_body(COURSE), "correct_answer", json!("")),
        ),
        (
            &question,
            with(question_body(COURSE), "content_hash", json!(long(65))),
        ),
        (&question, with(question_body(COURSE), "points", json!(-1))),
        (
            &question,
            with(question_body(COURSE), "grade_level", json!(13)),
        ),
        (&question, question_body(Uuid::new_v4())), // unknown course
        (
            &assessment,
            with(assessment_body(COURSE), "title", json!(long(256))),
        ),
        (
            &assessment,
            with(
                assessment_body(COURSE),
                "passing_score_percentage",
                json!(101),
            ),
        ),
        (
            &assessment,
            with(assessment_body(COURSE), "time_limit_minutes", json!(0)),
        ),
        (
            &assessment,
            with(assessment_body(COURSE), "school_id", json!(Uuid::new_v4())),
        ),
        (&class, with(class_body("C1"), "code", json!(long(51)))),
        (
            &class,
            with(class_body("C1"), "academic_year", json!(long(21))),
        ),
        (&class, with(class_body("C1"), "grade_level", json!(4))),
    ];
    for (path, body) in cases {
        let tok = if path.contains("/classes/") {
            token(Uuid::new_v4(), 5, None)
        } else {
            admin.clone()
        };
        let (s, v, h) = f.call("PUT", path, Some(&tok), Some(body.clone())).await;
        assert_eq!(s, 400, "{path} {body}: {v}");
        assert_eq!(h["content-type"], "application/problem+json");
    }
    let mut db = f.a.db.connect().await;
    let n: i64 = sqlx::query_scalar("SELECT (SELECT count(*) FROM courses) + (SELECT count(*) FROM questions) + (SELECT count(*) FROM assessments) + (SELECT count(*) FROM classes)")
        .fetch_one(&mut db)
        .await
        .unwrap();
    assert_eq!(n, 1 + 3 + 1 + 1, "only the seeded rows");

    // The longest valid values fit, and a second PUT replaces rather than duplicates.
    let id = Uuid::new_v4();
    let path = format!("/v1/tenants/{ta}/courses/{id}");
    let body = with(
        with(course_body(&long(50)), "name", json!(long(255))),
        "description",
        json!(long(2000)),
    );
    let (s, v, _) = f.call("PUT", &path, Some(&admin), Some(body)).await;
    assert_eq!(s, 200, "{v}");
    let (s, v, _) = f
        .call("PUT", &path, Some(&admin), Some(course_body("C2")))
        .await;
    assert_eq!((s, v["code"].as_str()), (200, Some("C2")), "{v}");
    // A course code taken by another course: 409.
    let (s, _, _) = f
        .call(
            "PUT",
            &format!("/v1/tenants/{ta}/courses/{}", Uuid::new_v4()),
            Some(&admin),
            Some(course_body("ALG8")),
        )
        .await;
    assert_eq!(s, 409);
    // Self-service students cannot write content; school admins cannot write content.
    let ss = token(f.ss.students[0].0, 0, None);
    let (s, _, _) = f
        .call(
            "PUT",
            &format!("/v1/tenants/selfservice/courses/{COURSE}"),
            Some(&ss),
            Some(course_body("S1")),
        )
        .await;
    assert_eq!(s, 403);
    // Platform admins write content in the self-service database too (the application
    // role holds INSERT/UPDATE there; the edumind_admin policy admits only admins).
    let (s, v, _) = f
        .call(
            "PUT",
            &format!("/v1/tenants/selfservice/courses/{COURSE}"),
            Some(&token(Uuid::new_v4(), 5, None)),
            Some(course_body("S1")),
        )
        .await;
    assert_eq!((s, v["code"].as_str()), (200, Some("S1")), "{v}");
    let sadmin = token(f.a.admin_user, 2, Some(ta));
    let (s, _, _) = f
        .call("PUT", &path, Some(&sadmin), Some(course_body("C3")))
        .await;
    assert_eq!(s, 403);
    // A school admin's class belongs to their school.
    let cid = Uuid::new_v4();
    let (s, v, _) = f
        .call(
            "PUT",
            &format!("/v1/tenants/{ta}/classes/{cid}"),
            Some(&sadmin),
            Some(class_body("10C")),
        )
        .await;
    assert_eq!(
        (s, v["school_id"].as_str()),
        (200, Some(ta.to_string().as_str())),
        "{v}"
    );
}

/// `POST /students`: school admins turn a Student-role user of their school into a
/// student; everything else is refused with the right status and nothing is written.
#[tokio::test]
async fn students_are_created_for_student_users_only() {
    let f = fixture().await;
    let (ta, tb) = (f.a.school_id.unwrap(), f.b.school_id.unwrap());
    let school_admin = token(f.a.admin_user, 2, Some(ta));
    let users = format!("/v1/tenants/{ta}/users");
    let students = format!("/v1/tenants/{ta}/students");
    let (s, user, _) = f
        .call(
            "POST",
            &users,
            Some(&school_admin),
            Some(json!({"email": "kid@x.test", "full_name": "New Kid", "role": 0})),
        )
        .await;
    assert_eq!(s, 201, "{user}");
    let uid = user["id"].as_str().unwrap().to_owned();
    let body = json!({"user_id": uid, "grade_level": 7, "parent_email": "mum@x.test"});

    let teacher = token(f.a.teacher_user, 1, Some(ta));
    assert_eq!(
        f.call("POST", &students, Some(&teacher), Some(body.clone()))
            .await
            .0,
        403,
        "teachers do not create students"
    );
    let other_admin = token(f.b.admin_user, 2, Some(tb));
    assert_eq!(
        f.call("POST", &students, Some(&other_admin), Some(body.clone()))
            .await
            .0,
        404,
        "another school's admin sees no such tenant"
    );
    for bad in [
        json!({"user_id": uid, "grade_level": 5}),
        json!({"user_id": uid, "grade_level": 7, "parent_email": "no-at-sign"}),
        json!({"user_id": uid, "grade_level": 7, "subscription_tier": -1}),
        json!({"user_id": uid, "grade_level": 7, "xp_points": 1000}),
        json!({"user_id": f.a.teacher_user, "grade_level": 7}),
        json!({"user_id": Uuid::new_v4(), "grade_level": 7}),
    ] {
        let (s, v, h) = f
            .call("POST", &students, Some(&school_admin), Some(bad.clone()))
            .await;
        assert_eq!(s, 400, "{bad} -> {v}");
        assert_eq!(h["content-type"], "application/problem+json");
    }

    let (s, created, _) = f
        .call("POST", &students, Some(&school_admin), Some(body.clone()))
        .await;
    assert_eq!(s, 201, "{created}");
    assert_eq!(created["user_id"], uid);
    assert_eq!(created["school_id"], ta.to_string());
    assert_eq!(
        (created["level"].as_i64(), created["xp_points"].as_i64()),
        (Some(1), Some(0))
    );
    assert_eq!(
        f.call("POST", &students, Some(&school_admin), Some(body))
            .await
            .0,
        409,
        "one student row per user"
    );
    // The new student reads their own progress with their own token.
    let sid = created["id"].as_str().unwrap();
    let kid: Uuid = uid.parse().unwrap();
    let (s, v, _) = f
        .call(
            "GET",
            &format!("/v1/tenants/{ta}/students/{sid}/progress"),
            Some(&token(kid, 0, Some(ta))),
            None,
        )
        .await;
    assert_eq!(s, 200, "{v}");
}

/// JSON-array columns are arrays on the wire (and only arrays are accepted), and a
/// student's `class_ids` follows the rosters.
#[tokio::test]
async fn array_columns_are_arrays_and_class_ids_follow_rosters() {
    let f = fixture().await;
    let ta = f.a.school_id.unwrap().to_string();
    let admin = token(Uuid::new_v4(), 5, None);
    let school_admin = token(f.a.admin_user, 2, f.a.school_id);

    let (s, c, _) = f
        .call(
            "PUT",
            &format!("/v1/tenants/{ta}/courses/{NEW_COURSE}"),
            Some(&admin),
            Some(course_body("ARR-1")),
        )
        .await;
    assert_eq!(s, 200, "{c}");
    assert_eq!(c["topics"], json!(["angles"]), "{c}");
    assert_eq!(c["learning_objectives"], json!([]), "{c}");
    let mut bad = course_body("ARR-2");
    bad["topics"] = json!("[\"angles\"]");
    let (s, p, _) = f
        .call(
            "PUT",
            &format!("/v1/tenants/{ta}/courses/{}", Uuid::new_v4()),
            Some(&admin),
            Some(bad),
        )
        .await;
    assert_eq!(s, 400, "{p}");

    let mut q = question_body(NEW_COURSE);
    q["answer_options"] = json!(["3", "4"]);
    let (s, v, _) = f
        .call(
            "PUT",
            &format!("/v1/tenants/{ta}/questions/{NEW_QUESTION}"),
            Some(&admin),
            Some(q.clone()),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["answer_options"], json!(["3", "4"]), "{v}");
    q["answer_options"] = json!("3|4");
    let (s, _, _) = f
        .call(
            "PUT",
            &format!("/v1/tenants/{ta}/questions/{NEW_QUESTION}"),
            Some(&admin),
            Some(q),
        )
        .await;
    assert_eq!(s, 400);
    let mut a = assessment_body(NEW_COURSE);
    a["question_ids"] = json!([NEW_QUESTION]);
    let (s, v, _) = f
        .call(
            "PUT",
            &format!("/v1/tenants/{ta}/assessments/{NEW_ASSESSMENT}"),
            Some(&admin),
            Some(a),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let (_, v, _) = f
        .call(
            "GET",
            &format!("/v1/tenants/{ta}/assessments/{NEW_ASSESSMENT}"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(v["question_ids"], json!([NEW_QUESTION]), "{v}");
    assert_eq!(v["topics"], json!([]), "{v}");

    let mut class = class_body("ARR-9B");
    class["teacher_ids"] = json!([f.a.teacher_user]);
    let (s, v, _) = f
        .call(
            "PUT",
            &format!("/v1/tenants/{ta}/classes/{NEW_CLASS}"),
            Some(&school_admin),
            Some(class),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["teacher_ids"], json!([f.a.teacher_user]), "{v}");
    assert_eq!(v["student_ids"], json!([]), "{v}");

    // The student on two rosters, then off one, then the other class deleted.
    let stu = f.a.students[0].1;
    let class_ids = async || {
        let (s, v, _) = f
            .call(
                "GET",
                &format!("/v1/tenants/{ta}/students?limit=200"),
                Some(&school_admin),
                None,
            )
            .await;
        assert_eq!(s, 200, "{v}");
        let me = v["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["id"] == json!(stu))
            .cloned()
            .unwrap();
        let mut ids: Vec<String> = me["class_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_str().unwrap().to_owned())
            .collect();
        ids.sort();
        ids
    };
    let roster = async |class: Uuid, ids: Value| {
        f.call(
            "PUT",
            &format!("/v1/tenants/{ta}/classes/{class}/roster"),
            Some(&school_admin),
            Some(json!({ "student_ids": ids })),
        )
        .await
    };
    for class in [f.a.class_id, NEW_CLASS] {
        let (s, v, _) = roster(class, json!([stu])).await;
        assert_eq!(s, 200, "{v}");
    }
    let mut both = vec![f.a.class_id.to_string(), NEW_CLASS.to_string()];
    both.sort();
    assert_eq!(class_ids().await, both);
    // The roster again (no duplicate), then without the student.
    assert_eq!(roster(NEW_CLASS, json!([stu])).await.0, 200);
    assert_eq!(class_ids().await, both);
    assert_eq!(roster(f.a.class_id, json!([])).await.0, 200);
    assert_eq!(class_ids().await, vec![NEW_CLASS.to_string()]);
    let (s, _, _) = f
        .call(
            "DELETE",
            &format!("/v1/tenants/{ta}/classes/{NEW_CLASS}"),
            Some(&school_admin),
            None,
        )
        .await;
    assert_eq!(s, 204);
    assert!(class_ids().await.is_empty());

    // Every list pages the same way, workflow executions included.
    let (s, v, _) = f
        .call(
            "GET",
            &format!("/v1/tenants/{ta}/workflow-executions?limit=1"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert!(v.get("next_after").is_some(), "{v}");
}

/// Issue 12 §3: references in write bodies are this school's, and re-answering a
/// question replaces the answer (the last one counts at submit).
#[tokio::test]
async fn attempt_references_and_reanswering() {
    let f = fixture().await;
    let sa = f.a.school_id.unwrap();
    let (stu_user, stu_id) = f.a.students[0];
    let tok = token(stu_user, 0, Some(sa));
    let start = format!("/v1/tenants/{sa}/attempts");
    // Another school's class, a class that does not exist, a class of this school whose
    // roster does not hold the student: 400 naming class_id.
    let empty_class = Uuid::new_v4();
    sqlx::query("INSERT INTO classes (id, school_id, name, code, grade_level, subject, student_ids, academic_year) VALUES ($1, $2, 'E', 'E', 8, 1, '[]', '2025-2026')")
        .bind(empty_class).bind(sa).execute(&mut f.a.db.connect().await).await.unwrap();
    for (what, class) in [
        ("another school's", f.b.class_id),
        ("unknown", Uuid::new_v4()),
        ("not on its roster", empty_class),
    ] {
        let (s, v, _) = f
            .call(
                "POST",
                &start,
                Some(&tok),
                Some(json!({"assessment_id": ASSESSMENT, "class_id": class})),
            )
            .await;
        assert_eq!(s, 400, "{what} class: {v}");
        assert!(v["detail"].as_str().unwrap().contains("class_id"), "{v}");
    }
    let (s, v, _) = f
        .call(
            "POST",
            &start,
            Some(&tok),
            Some(json!({"assessment_id": ASSESSMENT, "class_id": f.a.class_id})),
        )
        .await;
    assert_eq!(s, 201, "own class: {v}");
    let attempt = v["id"].as_str().unwrap().to_owned();
    let answer = format!("/v1/tenants/{sa}/attempts/{attempt}/responses");
    // Q1 right, then wrong; Q2 wrong, then right: the last answer of each counts.
    for (q, a) in [(Q1, "\"B\""), (Q1, "\"A\""), (Q2, "41"), (Q2, "42")] {
        let (s, v, _) = f
            .call(
                "POST",
                &answer,
                Some(&tok),
                Some(json!({"question_id": q, "answer": a})),
            )
            .await;
        assert_eq!(s, 200, "{v}");
    }
    let (s, v, _) = f
        .call(
            "POST",
            &format!("/v1/tenants/{sa}/attempts/{attempt}/submit"),
            Some(&tok),
            None,
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["attempt"]["score"], 10, "{v}");
    assert_eq!(v["attempt"]["correct_answers"], 1, "{v}");
    assert_eq!(v["attempt"]["incorrect_answers"], 1, "{v}");
    assert_eq!(v["attempt"]["skipped_questions"], 1, "{v}");
    let rows: Vec<(Uuid, String)> = sqlx::query_as(
        "SELECT question_id, student_answer FROM student_responses r JOIN student_assessments a \
         ON a.id = r.student_assessment_id WHERE a.student_id = $1 ORDER BY question_id",
    )
    .bind(stu_id)
    .fetch_all(&mut f.a.db.connect().await)
    .await
    .unwrap();
    assert_eq!(rows, vec![(Q1, "\"A\"".to_owned()), (Q2, "42".to_owned())]);
    // A class's teachers are staff of this school; an assessment's questions exist.
    let admin = token(f.a.admin_user, 2, Some(sa));
    let class = format!("/v1/tenants/{sa}/classes/{}", Uuid::new_v4());
    for (what, ids) in [
        ("a student", vec![stu_user]),
        ("another school's teacher", vec![f.b.teacher_user]),
        ("nobody", vec![Uuid::new_v4()]),
    ] {
        let (s, v, _) = f
            .call(
                "PUT",
                &class,
                Some(&admin),
                Some(json!({"name": "N", "code": "N-1", "grade_level": 8,
                "subject": 1, "academic_year": "2026", "teacher_ids": ids})),
            )
            .await;
        assert_eq!(s, 400, "teacher_ids with {what}: {v}");
    }
    let (s, v, _) = f
        .call("PUT", &class, Some(&admin), Some(json!({"name": "N", "code": "N-1", "grade_level": 8,
            "subject": 1, "academic_year": "2026", "teacher_ids": [f.a.teacher_user, f.a.teacher_user]})))
        .await;
    assert_eq!(s, 200, "{v}");
    let content = token(Uuid::new_v4(), 3, None);
    let (s, v, _) = f
        .call(
            "PUT",
            &format!("/v1/tenants/{sa}/assessments/{}", Uuid::new_v4()),
            Some(&content),
            Some(
                json!({"course_id": COURSE, "title": "T", "assessment_type": 0, "subject": 1,
                        "grade_level": 8, "question_ids": [Q1, Uuid::new_v4()]}),
            ),
        )
        .await;
    assert_eq!(s, 400, "unknown question id: {v}");
}

/// Issue 12 §4: a school token counts only while its `sub` is an active user of that
/// school with the token's role; the answer is cached and a change to the user (here by
/// hand, in SQL) reaches the cache through the outbox.
#[tokio::test]
async fn school_tokens_need_an_active_user_of_that_school() {
    use redis::AsyncCommands;
    let f = fixture().await;
    let sa = f.a.school_id.unwrap();
    let school = format!("/v1/tenants/{sa}/school");
    let courses = format!("/v1/tenants/{sa}/courses/{COURSE}/questions");
    let teacher = token(f.a.teacher_user, 1, Some(sa));
    assert_eq!(f.call("GET", &school, Some(&teacher), None).await.0, 200);
    for (what, tok) in [
        ("an unknown sub", token(Uuid::new_v4(), 1, Some(sa))),
        (
            "another school's teacher",
            token(f.b.teacher_user, 1, Some(sa)),
        ),
        (
            "a teacher claiming SchoolAdmin",
            token(f.a.teacher_user, 2, Some(sa)),
        ),
        (
            "a student claiming Teacher",
            token(f.a.students[0].0, 1, Some(sa)),
        ),
    ] {
        for path in [school.as_str(), courses.as_str(), "/v1/session"] {
            let (s, v, _) = f.call("GET", path, Some(&tok), None).await;
            assert_eq!(s, 401, "{what} on {path}: {v}");
        }
    }
    // The answer is cached in Redis under the tenant's keys.
    let mut r = redis::Client::open(edumind_tests::redis().await.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let key = edumind_dataplane::access::member_key(sa, f.a.teacher_user);
    let cached: Option<String> = r.get(&key).await.unwrap();
    assert!(
        cached.is_some_and(|c| c.contains("\"active\":true")),
        "{key} not cached"
    );
    // Deactivated by hand: refused within a few replay intervals, on every replica (the
    // trigger's outbox row is what deletes the cached answer), and back when reactivated.
    let mut db = f.a.db.connect().await;
    for (active, expected) in [(false, 401), (true, 200)] {
        sqlx::query("UPDATE users SET is_active = $2 WHERE id = $1")
            .bind(f.a.teacher_user)
            .bind(active)
            .execute(&mut db)
            .await
            .unwrap();
        let started = std::time::Instant::now();
        loop {
            let s = f.call("GET", &school, Some(&teacher), None).await.0;
            if s == expected {
                break;
            }
            assert!(
                started.elapsed() < std::time::Duration::from_secs(10),
                "is_active = {active}: still {s} after 10 s"
            );
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }
}
