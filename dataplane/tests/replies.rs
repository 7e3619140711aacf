//! Replies PostgreSQL builds (issue 15 §2): every uncached list and single-row read sends
//! the text its statement builds, so this checks that text against the wire type it
//! stands for. Decoding a reply into its `wire` type and encoding it again must give the
//! reply back: a key the type lacks, a key it has and the reply misses, a value of the
//! wrong JSON type or a timestamp spelled differently from chrono all break the equality.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use edumind_dataplane::wire;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use support::*;
use uuid::Uuid;

/// Numbers compared by value (PostgreSQL writes `1` where serde writes `1.0`).
fn norm(v: &Value) -> Value {
    match v {
        Value::Number(n) => json!(n.as_f64()),
        Value::Array(a) => Value::Array(a.iter().map(norm).collect()),
        Value::Object(o) => Value::Object(o.iter().map(|(k, v)| (k.clone(), norm(v))).collect()),
        other => other.clone(),
    }
}

/// `body` is exactly what encoding it as `T` gives.
fn fits<T: DeserializeOwned + Serialize>(body: &Value) {
    let typed: T = serde_json::from_value(body.clone())
        .unwrap_or_else(|e| panic!("{body} is no {}: {e}", std::any::type_name::<T>()));
    let again = serde_json::to_value(&typed).unwrap();
    assert_eq!(
        norm(body),
        norm(&again),
        "reply differs from its wire type {}",
        std::any::type_name::<T>()
    );
}

async fn get(f: &Fixture, tok: &str, path: &str) -> Value {
    let (s, v, h) = f.call("GET", path, Some(tok), None).await;
    assert_eq!(s, 200, "{path}: {v}");
    assert!(h.get("etag").is_some(), "{path} has no ETag");
    assert_eq!(h["content-type"], "application/json");
    v
}

#[tokio::test]
async fn sql_built_replies_are_their_wire_types() {
    let f = Fixture::start(edumind_tests::redis().await.url()).await;
    let sa = f.a.school_id.unwrap();
    let mut db = f.a.db.connect().await;
    // Timestamps of every spelling chrono has: whole seconds, milliseconds, microseconds;
    // nulls and values in nullable columns; text that needs escaping.
    let stamps = [
        "2025-10-15T10:00:00Z",
        "2025-10-15T10:00:00.120Z",
        "2025-10-15T10:00:00.123456Z",
        "2025-10-15T10:00:00.000001Z",
    ];
    let mut users = Vec::new();
    for (i, ts) in stamps.iter().enumerate() {
        let id = Uuid::new_v4();
        users.push(id);
        sqlx::query(
            "INSERT INTO users (id, email, full_name, role, school_id, external_id, created_at, updated_at) \
             VALUES ($1, $2, $3, 1, $4, $5, $6::timestamptz, $6::timestamptz + interval '1 day')",
        )
        .bind(id)
        .bind(format!("{id}@x.test"))
        .bind(format!("Ünïcode \"quoted\" \\ back\tslash {i}"))
        .bind(sa)
        .bind((i % 2 == 0).then(|| format!("ext-{i}")))
        .bind(ts)
        .execute(&mut db)
        .await
        .unwrap();
    }
    let (stu_user, stu_id) = f.a.students[0];
    let class2 = Uuid::new_v4();
    sqlx::query(
        "UPDATE students SET class_ids = $2, date_of_birth = '2012-03-04', parent_email = 'p@x.test', \
         subscription_expires_at = '2026-01-01T00:00:00.5Z', last_activity_date = '2025-10-15' WHERE id = $1",
    )
    .bind(stu_id)
    .bind(serde_json::to_string(&[f.a.class_id, class2]).unwrap())
    .execute(&mut db)
    .await
    .unwrap();
    let attempt = Uuid::new_v4();
    sqlx::query(
        "INSERT INTO student_assessments (id, student_id, assessment_id, school_id, status, started_at, \
         max_score, estimated_ability, recommendations) \
         VALUES ($1, $2, $3, $4, 1, '2025-10-15T10:00:00.250Z', 30, 1.0, '[\"more practice\", 2, true]')",
    )
    .bind(attempt)
    .bind(stu_id)
    .bind(ASSESSMENT)
    .bind(sa)
    .execute(&mut db)
    .await
    .unwrap();
    for (q, order, right) in [(Q2, 1, false), (Q1, 0, true)] {
        sqlx::query(
            "INSERT INTO student_responses (id, student_assessment_id, student_id, question_id, school_id, \
             student_answer, is_correct, points_earned, max_points, question_order, feedback) \
             VALUES ($1, $2, $3, $4, $5, 'B', $6, $7, 10, $8, NULL)",
        )
        .bind(Uuid::new_v4())
        .bind(attempt)
        .bind(stu_id)
        .bind(q)
        .bind(sa)
        .bind(right)
        .bind(if right { 10 } else { 0 })
        .bind(order)
        .execute(&mut db)
        .await
        .unwrap();
    }
    let ta = sa.to_string();
    for (i, score) in [0.5f64, 1.0].iter().enumerate() {
        sqlx::query("INSERT INTO routing_decisions (id, tenant_id, task_id, task_type, required_capability, selected_agent, reason, routing_score, workflow_step_id) VALUES ($1, $2, 't0', 'quiz', 'grading', 'agent-1', 'seeded', $3, $4)")
            .bind(Uuid::new_v4()).bind(&ta).bind(score).bind((i == 0).then_some("step-1"))
            .execute(&mut db).await.unwrap();
        sqlx::query("INSERT INTO routing_statistics (agent_key, tenant_id, total_tasks, success_rate) VALUES ($1, $2, 3, $3)")
            .bind(format!("agent-{i}")).bind(&ta).bind(score).execute(&mut db).await.unwrap();
        sqlx::query("INSERT INTO circuit_breaker_states (agent_key, tenant_id, state, last_failure_at) VALUES ($1, $2, 'Open', $3::timestamptz)")
            .bind(format!("agent-{i}")).bind(&ta).bind((i == 0).then_some(stamps[1]))
            .execute(&mut db).await.unwrap();
        sqlx::query("INSERT INTO workflow_executions (execution_id, tenant_id, workflow_name, status, workflow_definition_json, initiated_by, tags, completed_at) VALUES ($1, $2, 'w', 'Completed', '{\"a\": 1}', 'me', $3, $4::timestamptz)")
            .bind(format!("exec-{i}")).bind(&ta).bind((i == 0).then_some("t")).bind((i == 1).then_some(stamps[2]))
            .execute(&mut db).await.unwrap();
    }

    let teacher = token(f.a.teacher_user, 1, Some(sa));
    let student = token(stu_user, 0, Some(sa));
    let admin = token(Uuid::new_v4(), 5, None);

    fits::<wire::School>(&get(&f, &teacher, &format!("/v1/tenants/{ta}/school")).await);

    // Users: every page fits, pages walk the whole table in id order, `next_after` is
    // the last id of a full page and null after the last one.
    let mut all = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let q = after
            .as_ref()
            .map(|a| format!("&after={a}"))
            .unwrap_or_default();
        let page = get(&f, &teacher, &format!("/v1/tenants/{ta}/users?limit=3{q}")).await;
        fits::<wire::UserPage>(&page);
        let items = page["items"].as_array().unwrap().clone();
        all.extend(items.iter().map(|u| u["id"].as_str().unwrap().to_owned()));
        if items.len() == 3 {
            assert_eq!(page["next_after"], items[2]["id"]);
            after = page["next_after"].as_str().map(str::to_owned);
        } else {
            assert_eq!(page["next_after"], Value::Null);
            break;
        }
    }
    let expected: Vec<String> = sqlx::query_scalar("SELECT id::text FROM users ORDER BY id")
        .fetch_all(&mut db)
        .await
        .unwrap();
    assert_eq!(all, expected);
    let empty = get(&f, &teacher, &format!("/v1/tenants/{ta}/users?role=5")).await;
    assert_eq!(empty, json!({"items": [], "next_after": null}));
    fits::<wire::UserPage>(&empty);

    let students = get(&f, &teacher, &format!("/v1/tenants/{ta}/students")).await;
    fits::<wire::StudentPage>(&students);
    let me = get(&f, &student, &format!("/v1/tenants/{ta}/students")).await;
    fits::<wire::StudentPage>(&me);
    assert_eq!(me["items"].as_array().unwrap().len(), 1);
    assert_eq!(me["items"][0]["class_ids"], json!([f.a.class_id, class2]));

    // An attempt in progress: the student does not see which answers were right, staff do;
    // once submitted the student does too. Responses in question order.
    let path = format!("/v1/tenants/{ta}/attempts/{attempt}");
    let mine = get(&f, &student, &path).await;
    fits::<wire::AttemptDetail>(&mine);
    assert_eq!(
        mine["recommendations"],
        json!(["more practice", "2", "true"])
    );
    let responses = mine["responses"].as_array().unwrap();
    assert_eq!(responses.len(), 2);
    assert_eq!(responses[0]["question_id"], json!(Q1));
    for r in responses {
        assert!(
            r.get("is_correct").is_none() && r.get("points_earned").is_none(),
            "{r}"
        );
    }
    let staff = get(&f, &teacher, &path).await;
    fits::<wire::AttemptDetail>(&staff);
    assert_eq!(staff["responses"][0]["is_correct"], true);
    assert_eq!(staff["responses"][0]["points_earned"], 10);
    assert_eq!(staff["responses"][1]["is_correct"], false);
    sqlx::query("UPDATE student_assessments SET status = 2, completed_at = now() WHERE id = $1")
        .bind(attempt)
        .execute(&mut db)
        .await
        .unwrap();
    let done = get(&f, &student, &path).await;
    fits::<wire::AttemptDetail>(&done);
    assert_eq!(done["responses"][1]["points_earned"], 0);
    // Another student's attempt is not found.
    let other = token(f.a.students[1].0, 0, Some(sa));
    assert_eq!(f.call("GET", &path, Some(&other), None).await.0, 404);

    fits::<wire::WorkflowPage>(
        &get(&f, &admin, &format!("/v1/tenants/{ta}/workflow-executions")).await,
    );
    let breakers = get(
        &f,
        &admin,
        &format!("/v1/tenants/{ta}/circuit-breakers?limit=2"),
    )
    .await;
    fits::<wire::BreakerPage>(&breakers);
    assert_eq!(breakers["next_after"], "agent-1");
    fits::<wire::CircuitBreaker>(
        &get(
            &f,
            &admin,
            &format!("/v1/tenants/{ta}/circuit-breakers/agent-0"),
        )
        .await,
    );
    let decisions = get(&f, &admin, &format!("/v1/tenants/{ta}/routing-decisions")).await;
    fits::<wire::DecisionPage>(&decisions);
    for d in decisions["items"].as_array().unwrap() {
        let id = d["id"].as_str().unwrap();
        fits::<wire::RoutingDecision>(
            &get(
                &f,
                &admin,
                &format!("/v1/tenants/{ta}/routing-decisions/{id}"),
            )
            .await,
        );
    }
    fits::<wire::StatisticsPage>(
        &get(&f, &admin, &format!("/v1/tenants/{ta}/routing-statistics")).await,
    );
    fits::<wire::RoutingStatistics>(
        &get(
            &f,
            &admin,
            &format!("/v1/tenants/{ta}/routing-statistics/agent-1"),
        )
        .await,
    );
    assert_eq!(
        f.call(
            "GET",
            &format!("/v1/tenants/{ta}/routing-statistics/nope"),
            Some(&admin),
            None
        )
        .await
        .0,
        404
    );
}
