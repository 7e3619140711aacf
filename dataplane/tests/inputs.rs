//! No input a client can send makes the service answer 5xx. Driven by the route table
//! (`openapi::ALL`): every write operation gets every string of a valid body with a NUL,
//! an offset PostgreSQL cannot store and an oversized value, every id an unknown one,
//! every number an extreme one; every read operation gets bad query parameters; every
//! path id an unknown one. A new route is covered as soon as it is in the table (a write
//! route without a sample body here fails the test).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use edumind_dataplane::openapi::{ALL, RouteDoc};
use serde_json::{Value, json};
use support::*;
use uuid::Uuid;

const BAD_OFFSET: &str = "2026-03-01T10:00:00-23:59";

struct Ctx {
    tenant: String,
    student: String,
    admin: String,
    attempt: Uuid,
    new_student_user: Uuid,
    roster: Vec<Uuid>,
}

/// A valid body for every write operation, by operation id.
fn sample(id: &str, c: &Ctx) -> Option<Value> {
    Some(match id {
        "users.create" => json!({"email": "new@x.test", "full_name": "New", "role": 1,
                                 "external_id": "ext-1"}),
        "students.create" => json!({"user_id": c.new_student_user, "grade_level": 8,
                                    "date_of_birth": "2012-01-01", "parent_email": "p@x.test",
                                    "subscription_expires_at": "2027-01-01T00:00:00Z"}),
        "classes.roster.put" => json!({"student_ids": c.roster}),
        "attempts.start" => json!({"assessment_id": ASSESSMENT}),
        "attempts.answer" => json!({"question_id": Q1, "answer": "\"B\"", "time_spent_seconds": 3}),
        "session.put" => json!({"cart": "x", "n": 1}),
        "workflows.create" => json!({"execution_id": "wf-in", "workflow_name": "n",
                                     "status": "Running", "workflow_definition_json": "{}",
                                     "initiated_by": "me", "tags": "t"}),
        "breakers.put" => json!({"state": "Open", "failure_count": 2,
                                 "last_failure_at": "2026-03-01T10:00:00Z"}),
        "decisions.create" => json!({"task_id": "t1", "task_type": "quiz",
                                     "required_capability": "grading", "selected_agent": "a",
                                     "reason": "r", "routing_score": 0.5,
                                     "workflow_execution_id": "wf-1", "workflow_step_id": "s1"}),
        "stats.put" => json!({"total_tasks": 10, "successful_tasks": 9, "failed_tasks": 1,
                              "average_duration_ms": 120, "success_rate": 0.9}),
        "courses.put" => json!({"name": "Geo", "code": "GEO", "subject": 1, "grade_level": 8,
                                "description": "d", "learning_objectives": ["o"],
                                "topics": ["t"], "board_name": "b", "module_name": "m",
                                "metadata": {"k": "v"}}),
        "questions.put" => json!({"course_id": COURSE, "question_text": "q", "question_type": 0,
                                  "subject": 1, "grade_level": 8, "difficulty_level": 1,
                                  "topics": ["t"], "learning_objectives": ["o"],
                                  "answer_options": ["A"], "correct_answer": "\"A\"",
                                  "explanation": "e", "points": 1, "content_hash": "h",
                                  "board_name": "b", "module_name": "m", "metadata": {"k": "v"},
                                  "irt_difficulty": 0.5}),
        "assessments.put" => json!({"course_id": COURSE, "title": "T", "description": "d",
                                    "assessment_type": 0, "subject": 1, "grade_level": 8,
                                    "topics": ["t"], "question_ids": [Q1], "total_points": 10,
                                    "time_limit_minutes": 5}),
        "classes.put" => json!({"name": "N", "code": "N1", "grade_level": 8, "subject": 1,
                                "academic_year": "2026", "teacher_ids": []}),
        _ => return None,
    })
}

/// Every leaf of `v` with its path (object keys and array indexes).
fn leaves(v: &Value, path: Vec<Value>, out: &mut Vec<(Vec<Value>, Value)>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                let mut p = path.clone();
                p.push(json!(k));
                leaves(x, p, out);
            }
        }
        Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                let mut p = path.clone();
                p.push(json!(i));
                leaves(x, p, out);
            }
        }
        leaf => out.push((path, leaf.clone())),
    }
}

fn replaced(v: &Value, path: &[Value], with: Value) -> Value {
    let mut v = v.clone();
    let mut at = &mut v;
    for p in path {
        at = match p {
            Value::String(k) => &mut at[k.as_str()],
            Value::Number(i) => &mut at[i.as_u64().unwrap() as usize],
            _ => unreachable!(),
        };
    }
    *at = with;
    v
}

/// The route's path for the tenant under test; `unknown` puts a fresh id in `{id}`.
fn path_of(r: &RouteDoc, c: &Ctx, unknown: bool) -> String {
    let id = if unknown {
        Uuid::new_v4()
    } else {
        match r.id {
            id if id.starts_with("attempts.") => c.attempt,
            id if id.starts_with("courses.") => COURSE,
            id if id.starts_with("questions.") => Q2,
            id if id.starts_with("assessments.") => ASSESSMENT,
            "students.progress" => c.roster[0],
            _ => Uuid::from_u128(0xc1_0000_0000_0000_0000_0000_0000_0077),
        }
    };
    r.path
        .replace("{tenant}", &c.tenant)
        .replace("{id}", &id.to_string())
        .replace(
            "{agent_key}",
            if unknown { "agent-unknown" } else { "agent-in" },
        )
}

fn token_for<'a>(r: &RouteDoc, c: &'a Ctx) -> &'a str {
    if r.id.starts_with("attempts.") {
        &c.student
    } else {
        &c.admin
    }
}

/// Sends one request and checks the two rules of this file: never a 5xx, and every
/// error is problem+json. Returns status and body.
async fn send(
    f: &Fixture,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<Vec<u8>>,
    what: &str,
) -> (u16, Value) {
    let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let mut req = f.http.request(m, f.url(path));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(b) = body {
        req = req.header("content-type", "application/json").body(b);
    }
    let res = req.send().await.unwrap();
    let status = res.status().as_u16();
    let ctype = res
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap_or("").to_owned())
        .unwrap_or_default();
    let text = res.text().await.unwrap();
    let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
    assert!(
        status < 500,
        "{what}: {method} {path} answered {status}: {v}"
    );
    if status >= 400 {
        assert_eq!(
            ctype, "application/problem+json",
            "{what}: {method} {path} answered {status} without problem+json: {v}"
        );
    }
    (status, v)
}

#[tokio::test]
async fn no_input_yields_a_server_error() {
    let f = Fixture::start(edumind_tests::redis().await.url()).await;
    let a = &f.a;
    let sa = a.school_id.unwrap();
    let new_student_user = Uuid::new_v4();
    sqlx::query("INSERT INTO users (id, email, full_name, role, school_id) VALUES ($1, 'ns@x.test', 'S', 0, $2)")
        .bind(new_student_user)
        .bind(sa)
        .execute(&mut a.db.connect().await)
        .await
        .unwrap();
    let mut c = Ctx {
        tenant: sa.to_string(),
        student: token(a.students[0].0, 0, Some(sa)),
        admin: token(Uuid::new_v4(), 5, None),
        attempt: Uuid::nil(),
        new_student_user,
        roster: a.students.iter().map(|s| s.1).collect(),
    };
    let (st, v, _) = f
        .call(
            "POST",
            &format!("/v1/tenants/{sa}/attempts"),
            Some(&c.student),
            Some(json!({"assessment_id": ASSESSMENT})),
        )
        .await;
    assert_eq!(st, 201, "{v}");
    c.attempt = Uuid::parse_str(v["id"].as_str().unwrap()).unwrap();
    let huge = "x".repeat(60_000);
    let mut requests = 0usize;

    for r in ALL {
        let method = r.method.to_uppercase();
        let tok = token_for(r, &c);
        let writes = matches!(r.method, "put" | "post");
        let base = if writes { sample(r.id, &c) } else { None };
        // Bodyless writes (submit) and deletes are covered by the unknown-id pass below.
        if writes && base.is_none() && r.id != "attempts.submit" {
            panic!("{}: add a sample body for this write operation", r.id);
        }
        // Unknown ids (and agent keys) in the path, for every operation.
        if r.path.contains("{id}") || r.path.contains("{agent_key}") {
            let body = base.as_ref().map(|b| b.to_string().into_bytes());
            let (st, v) = send(
                &f,
                &method,
                &path_of(r, &c, true),
                Some(tok),
                body,
                "unknown id",
            )
            .await;
            if r.method == "get" {
                assert_eq!(st, 404, "{}: unknown id: {v}", r.id);
            }
            requests += 1;
        }
        // Anonymous callers get 401 whatever the query string holds.
        if r.auth {
            let p = format!(
                "{}?access_token=x&after=%00&limit=zz",
                path_of(r, &c, false)
            );
            let body = base.as_ref().map(|b| b.to_string().into_bytes());
            let (st, v) = send(&f, &method, &p, None, body, "anonymous").await;
            assert_eq!(st, 401, "{}: anonymous with a bad query: {v}", r.id);
            requests += 1;
        }
        let path = path_of(r, &c, false);
        if r.method == "get" && r.auth {
            // Routes with query parameters refuse unknown ones; the others ignore the
            // query string, so nothing in it reaches a store.
            let (st, _) = send(
                &f,
                "GET",
                &format!("{path}?zz_unknown=1"),
                Some(tok),
                None,
                "unknown param",
            )
            .await;
            let takes_query = st == 400;
            for name in [
                "after",
                "limit",
                "role",
                "status",
                "tenant_id",
                "task_id",
                "grade_level",
                "subscription_tier",
            ] {
                let (st, v) = send(
                    &f,
                    "GET",
                    &format!("{path}?{name}=a%00b"),
                    Some(tok),
                    None,
                    "NUL query",
                )
                .await;
                if takes_query {
                    assert_eq!(st, 400, "{} ?{name}=NUL: {v}", r.id);
                    if name == "after" {
                        let detail = v["detail"].as_str().unwrap_or_default();
                        assert!(detail.contains(name), "{} ?{name}=NUL not named: {v}", r.id);
                    }
                }
                for value in [
                    BAD_OFFSET.replace(':', "%3A"),
                    Uuid::new_v4().to_string(),
                    "99999999999999999999".to_owned(),
                    "-1".to_owned(),
                    "x".repeat(5000),
                ] {
                    send(
                        &f,
                        "GET",
                        &format!("{path}?{name}={value}"),
                        Some(tok),
                        None,
                        "query",
                    )
                    .await;
                    requests += 1;
                }
            }
        }
        let Some(base) = base else { continue };
        // Too large for the body limit: 413.
        let mut big = base.clone();
        big["padding"] = json!("y".repeat(70_000));
        let (st, v) = send(
            &f,
            &method,
            &path,
            Some(tok),
            Some(big.to_string().into_bytes()),
            "oversized body",
        )
        .await;
        assert_eq!(st, 413, "{}: oversized body: {v}", r.id);
        // A NUL in a key.
        let mut key = base.clone();
        key["k\u{0}"] = json!(1);
        let (st, v) = send(
            &f,
            &method,
            &path,
            Some(tok),
            Some(key.to_string().into_bytes()),
            "NUL key",
        )
        .await;
        assert_eq!(st, 400, "{}: NUL key: {v}", r.id);
        let mut ls = Vec::new();
        leaves(&base, Vec::new(), &mut ls);
        for (lp, leaf) in ls {
            let field = lp
                .iter()
                .rev()
                .find_map(|p| p.as_str())
                .unwrap_or("body")
                .to_owned();
            let mut variants: Vec<(&str, Value)> = Vec::new();
            match &leaf {
                Value::String(s) => {
                    variants.push(("nul", json!(format!("{s}\u{0}"))));
                    variants.push(("offset", json!(BAD_OFFSET)));
                    variants.push(("oversized", json!(huge)));
                    variants.push(("unknown id", json!(Uuid::new_v4())));
                }
                Value::Number(_) => {
                    for n in [
                        json!(-1),
                        json!(2_147_483_648i64),
                        json!(1e300),
                        json!(-1e300),
                    ] {
                        variants.push(("number", n));
                    }
                }
                _ => {}
            }
            for (kind, value) in variants {
                let body = replaced(&base, &lp, value).to_string().into_bytes();
                let what = format!("{} {field} {kind}", r.id);
                let (st, v) = send(&f, &method, &path, Some(tok), Some(body), &what).await;
                requests += 1;
                if kind == "nul" {
                    assert_eq!(st, 400, "{what}: {v}");
                    let detail = v["detail"].as_str().unwrap_or_default();
                    assert!(
                        detail.contains(&field),
                        "{what}: the field is not named: {v}"
                    );
                }
            }
        }
    }
    // An unknown course's questions: 404 for every role.
    for (role, tok) in [
        ("student", token(a.students[0].0, 0, Some(sa))),
        ("teacher", token(a.teacher_user, 1, Some(sa))),
        ("school admin", token(a.admin_user, 2, Some(sa))),
        ("course admin", token(Uuid::new_v4(), 3, None)),
        ("system admin", token(Uuid::new_v4(), 5, None)),
    ] {
        let p = format!("/v1/tenants/{sa}/courses/{}/questions", Uuid::new_v4());
        let (st, v) = send(&f, "GET", &p, Some(&tok), None, role).await;
        assert_eq!(st, 404, "{role}: {v}");
    }
    // A bad offset is normalised to UTC, not refused.
    let (st, v, _) = f
        .call(
            "PUT",
            &format!("/v1/tenants/{sa}/circuit-breakers/agent-off"),
            Some(&c.admin),
            Some(json!({"state": "Open", "last_failure_at": BAD_OFFSET})),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    let stored =
        chrono::DateTime::parse_from_rfc3339(v["last_failure_at"].as_str().unwrap()).unwrap();
    assert_eq!(
        stored,
        chrono::DateTime::parse_from_rfc3339(BAD_OFFSET).unwrap()
    );
    assert!(requests > 500, "only {requests} requests were sent");
}
