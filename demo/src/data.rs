//! The demo's content and people, and loading them.
//!
//! Everything the data plane's API can write goes through it (users, courses, questions,
//! assessments, classes, rosters, and the students' attempts, answered and submitted
//! with their own tokens, and students), so the demo exercises the real request path.
//! The self-service tenant's users, students and content are one SQL batch on the demo's
//! own throwaway server. Each school's own `schools` row comes from the operator,
//! which writes it from the School spec.

use std::collections::BTreeMap;

use anyhow::{Context as _, bail};
use serde_json::{Value, json};
use sqlx::{Connection, PgConnection};
use uuid::Uuid;

use crate::tokens::Tokens;

/// Stable ids for demo objects: UUIDv5 of a name, so URLs are the same in every run.
pub fn demo_id(name: &str) -> Uuid {
    Uuid::new_v5(
        &Uuid::NAMESPACE_URL,
        format!("https://demo.edumind.ai/{name}").as_bytes(),
    )
}

pub struct SchoolPlan {
    /// `metadata.name` of the School manifest.
    pub resource: &'static str,
    pub code: &'static str,
    pub name: &'static str,
    pub address: &'static str,
    pub domain: &'static str,
    pub admin: &'static str,
    pub teachers: [&'static str; 2],
    pub students: [&'static str; 4],
}

pub const SCHOOLS: [SchoolPlan; 2] = [
    SchoolPlan {
        resource: "lincoln-high",
        code: "LHS",
        name: "Lincoln High School",
        address: "1 Main St, Springfield",
        domain: "lincoln.example",
        admin: "Grace Hopper",
        teachers: ["Maria Rivera", "Tom Okafor"],
        students: [
            "Ada Lovelace",
            "Alan Turing",
            "Katherine Johnson",
            "Linus Pauling",
        ],
    },
    SchoolPlan {
        resource: "riverside-academy",
        code: "RSA",
        name: "Riverside Academy",
        address: "42 River Rd, Shelbyville",
        domain: "riverside.example",
        admin: "Edsger Dijkstra",
        teachers: ["Barbara Liskov", "Niklaus Wirth"],
        students: [
            "Emmy Noether",
            "Srinivasa Ramanujan",
            "Marie Curie",
            "Carl Gauss",
        ],
    },
];

pub const SELF_SERVICE_STUDENTS: [&str; 3] = ["Sam Learner", "Priya Patel", "Leo Park"];

/// The School manifest the demo writes for `plan` (what a platform team would apply).
pub fn school_manifest(plan: &SchoolPlan) -> String {
    format!(
        "apiVersion: edumind.ai/v1alpha1
kind: School
metadata:
  name: {resource}
  namespace: demo
spec:
  code: {code}
  name: {name}
  address: {address}
  contactEmail: office@{domain}
  active: true
  reclaimPolicy: delete
  backup:
    schedule: \"0 2 * * *\"
    retentionDays: 7
",
        resource = plan.resource,
        code = plan.code,
        name = plan.name,
        address = plan.address,
        domain = plan.domain,
    )
}

fn email(name: &str, domain: &str) -> String {
    format!("{}@{domain}", name.to_lowercase().replace(' ', "."))
}

/// A course with its questions (each: text, options, correct answer) and one quiz.
struct Course {
    key: &'static str,
    name: &'static str,
    subject: i32,
    questions: [(&'static str, &'static str, &'static str); 3],
}

const COURSES: [Course; 2] = [
    Course {
        key: "ALG-1",
        name: "Algebra I",
        subject: 0,
        questions: [
            (
                "Solve 2x + 3 = 11.",
                r#"["x = 3", "x = 4", "x = 7"]"#,
                "x = 4",
            ),
            ("What is 3² + 4²?", r#"["25", "49", "12"]"#, "25"),
            (
                "Expand (x + 1)².",
                r#"["x² + 1", "x² + 2x + 1", "2x + 1"]"#,
                "x² + 2x + 1",
            ),
        ],
    },
    Course {
        key: "BIO-1",
        name: "Biology",
        subject: 2,
        questions: [
            (
                "Which organelle makes ATP?",
                r#"["Nucleus", "Mitochondrion", "Ribosome"]"#,
                "Mitochondrion",
            ),
            ("DNA bases pair A with…", r#"["T", "G", "C"]"#, "T"),
            (
                "Plants take in which gas for photosynthesis?",
                r#"["Oxygen", "Nitrogen", "Carbon dioxide"]"#,
                "Carbon dioxide",
            ),
        ],
    },
];

fn course_id(c: &Course) -> Uuid {
    demo_id(&format!("course/{}", c.key))
}
fn question_id(c: &Course, i: usize) -> Uuid {
    demo_id(&format!("course/{}/question/{i}", c.key))
}
fn quiz_id(c: &Course) -> Uuid {
    demo_id(&format!("course/{}/quiz", c.key))
}
fn class_id(school: &str, c: &Course) -> Uuid {
    demo_id(&format!("school/{school}/class/{}", c.key))
}
fn student_id(user: Uuid) -> Uuid {
    demo_id(&format!("student/{user}"))
}

pub struct LoadedSchool {
    pub school_id: Uuid,
    pub users: BTreeMap<&'static str, Uuid>,
    pub students: BTreeMap<&'static str, Uuid>,
    pub algebra_class: Uuid,
    pub user_count: usize,
    pub algebra_roster: usize,
}

/// A tiny JSON client for the data plane.
pub struct Api {
    pub base: String,
    http: reqwest::Client,
}

impl Api {
    pub fn new(base: String) -> Self {
        Api {
            base,
            http: reqwest::Client::new(),
        }
    }

    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let mut req = self
            .http
            .request(method.clone(), format!("{}{path}", self.base))
            .bearer_auth(token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req
            .send()
            .await
            .with_context(|| format!("{method} {path}"))?;
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        if !status.is_success() {
            bail!("{method} {path} answered {status}: {text}");
        }
        Ok(serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    async fn put(&self, path: &str, token: &str, body: Value) -> anyhow::Result<Value> {
        self.call(reqwest::Method::PUT, path, token, Some(body))
            .await
    }
    async fn post(&self, path: &str, token: &str, body: Value) -> anyhow::Result<Value> {
        self.call(reqwest::Method::POST, path, token, Some(body))
            .await
    }
}

fn uuid_of(v: &Value, key: &str) -> anyhow::Result<Uuid> {
    v.get(key)
        .and_then(Value::as_str)
        .and_then(|s| Uuid::parse_str(s).ok())
        .with_context(|| format!("reply has no {key}: {v}"))
}

/// Content upserts through the API (course, its questions, then the quiz).
async fn put_content(api: &Api, tenant: &str, token: &str) -> anyhow::Result<()> {
    for c in &COURSES {
        api.put(
            &format!("/v1/tenants/{tenant}/courses/{}", course_id(c)),
            token,
            json!({"name": c.name, "code": c.key, "subject": c.subject, "grade_level": 9,
                   "description": format!("{} for grade 9", c.name)}),
        )
        .await?;
        let mut ids = Vec::new();
        for (i, (text, options, correct)) in c.questions.iter().enumerate() {
            let id = question_id(c, i);
            // The column holds the JSON text; the API takes and gives a JSON array.
            let options: serde_json::Value = serde_json::from_str(options)?;
            api.put(
                &format!("/v1/tenants/{tenant}/questions/{id}"),
                token,
                json!({"course_id": course_id(c), "question_text": text, "question_type": 0,
                       "subject": c.subject, "grade_level": 9, "difficulty_level": 1 + i as i32,
                       "answer_options": options, "correct_answer": correct, "points": 1}),
            )
            .await?;
            ids.push(id);
        }
        api.put(
            &format!("/v1/tenants/{tenant}/assessments/{}", quiz_id(c)),
            token,
            json!({"course_id": course_id(c), "title": format!("{} quiz", c.name),
                   "assessment_type": 0, "subject": c.subject, "grade_level": 9,
                   "question_ids": ids, "total_points": 3, "passing_score_percentage": 70}),
        )
        .await?;
    }
    Ok(())
}

/// One attempt through the API, as the student: start, answer (`right` of the three
/// correctly), submit.
async fn attempt(
    api: &Api,
    tenant: &str,
    token: &str,
    course: usize,
    class: Option<Uuid>,
    right: usize,
) -> anyhow::Result<()> {
    let c = &COURSES[course];
    let started = api
        .post(
            &format!("/v1/tenants/{tenant}/attempts"),
            token,
            json!({"assessment_id": quiz_id(c), "class_id": class}),
        )
        .await?;
    let id = uuid_of(&started, "id")?;
    for (i, (_, _, correct)) in c.questions.iter().enumerate() {
        let answer = if i < right { *correct } else { "I don't know" };
        api.post(
            &format!("/v1/tenants/{tenant}/attempts/{id}/responses"),
            token,
            json!({"question_id": question_id(c, i), "answer": answer, "time_spent_seconds": 20 + 7 * i}),
        )
        .await?;
    }
    api.post(
        &format!("/v1/tenants/{tenant}/attempts/{id}/submit"),
        token,
        json!({}),
    )
    .await?;
    Ok(())
}

async fn sql(conn: &mut PgConnection, query: &'static str, binds: &[Value]) -> anyhow::Result<()> {
    let mut q = sqlx::query(query);
    for b in binds {
        q = match b {
            Value::String(s) => match Uuid::parse_str(s) {
                Ok(u) => q.bind(u),
                Err(_) => q.bind(s.clone()),
            },
            Value::Null => q.bind(Option::<Uuid>::None),
            other => q.bind(other.as_i64().unwrap_or_default() as i32),
        };
    }
    q.execute(&mut *conn)
        .await
        .with_context(|| format!("SQL failed: {query}"))?;
    Ok(())
}

/// Loads one school: the rows the API cannot write by SQL, the rest through the API.
pub async fn load_school(
    api: &Api,
    tokens: &Tokens,
    plan: &SchoolPlan,
    school_id: Uuid,
) -> anyhow::Result<LoadedSchool> {
    let admin = tokens.platform_admin()?;
    let t = school_id.to_string();

    let mut users = BTreeMap::new();
    let people = std::iter::once((plan.admin, 2))
        .chain(plan.teachers.iter().map(|n| (*n, 1)))
        .chain(plan.students.iter().map(|n| (*n, 0)));
    for (name, role) in people {
        let created = api
            .post(
                &format!("/v1/tenants/{t}/users"),
                &admin,
                json!({"email": email(name, plan.domain), "full_name": name, "role": role}),
            )
            .await?;
        users.insert(name, uuid_of(&created, "id")?);
    }
    let mut students = BTreeMap::new();
    for name in plan.students {
        let created = api
            .post(
                &format!("/v1/tenants/{t}/students"),
                &admin,
                json!({"user_id": users[name], "grade_level": 9}),
            )
            .await?;
        students.insert(name, uuid_of(&created, "id")?);
    }

    put_content(api, &t, &admin).await?;
    // Classes: Algebra (first teacher, students 1-3), Biology (second teacher, students 2-4).
    let mut rosters = Vec::new();
    for (ci, c) in COURSES.iter().enumerate() {
        let class = class_id(plan.code, c);
        let teacher = users[plan.teachers[ci]];
        api.put(
            &format!("/v1/tenants/{t}/classes/{class}"),
            &admin,
            json!({"name": format!("{} - 9{}", c.name, ["A", "B"][ci]), "code": format!("{}-9{}", c.key, ["A", "B"][ci]),
                   "grade_level": 9, "subject": c.subject, "teacher_ids": [teacher], "academic_year": "2026-27"}),
        )
        .await?;
        let roster: Vec<Uuid> = plan.students[ci..ci + 3]
            .iter()
            .map(|n| students[n])
            .collect();
        api.put(
            &format!("/v1/tenants/{t}/classes/{class}/roster"),
            &admin,
            json!({ "student_ids": roster }),
        )
        .await?;
        rosters.push(roster.len());
    }
    // Attempts, by the students themselves: 3/3 (pass), 2/3 (fail: 67% < 70%), 3/3 biology.
    let algebra = class_id(plan.code, &COURSES[0]);
    let biology = class_id(plan.code, &COURSES[1]);
    for (student, course, class, right) in
        [(0, 0, algebra, 3), (1, 0, algebra, 2), (2, 1, biology, 3)]
    {
        let name = plan.students[student];
        let token = tokens.student(users[name], Some(school_id))?;
        attempt(api, &t, &token, course, Some(class), right).await?;
    }
    Ok(LoadedSchool {
        school_id,
        user_count: users.len(),
        users,
        students,
        algebra_class: algebra,
        algebra_roster: rosters[0],
    })
}

/// Loads the self-service tenant: people and content by SQL (see the module comment),
/// attempts through the API as the students.
pub async fn load_self_service(
    api: &Api,
    tokens: &Tokens,
    admin_db_url: &str,
) -> anyhow::Result<BTreeMap<&'static str, (Uuid, Uuid)>> {
    let mut conn = PgConnection::connect(admin_db_url).await?;
    let mut out = BTreeMap::new();
    for name in SELF_SERVICE_STUDENTS {
        let user = demo_id(&format!("selfservice/user/{name}"));
        let student = student_id(user);
        sql(
            &mut conn,
            "INSERT INTO users (id, email, full_name, role) VALUES ($1, $2, $3, 0)",
            &[
                json!(user.to_string()),
                json!(email(name, "learners.example")),
                json!(name),
            ],
        )
        .await?;
        sql(
            &mut conn,
            "INSERT INTO students (id, user_id, grade_level, subscription_tier) VALUES ($1, $2, 9, 1)",
            &[json!(student.to_string()), json!(user.to_string())],
        )
        .await?;
        out.insert(name, (user, student));
    }
    for c in &COURSES {
        sql(
            &mut conn,
            "INSERT INTO courses (id, name, code, subject, grade_level, description) VALUES ($1, $2, $3, $4, 9, '')",
            &[
                json!(course_id(c).to_string()),
                json!(c.name),
                json!(c.key),
                json!(c.subject),
            ],
        )
        .await?;
        let mut ids = Vec::new();
        for (i, (text, options, correct)) in c.questions.iter().enumerate() {
            let id = question_id(c, i);
            sql(
                &mut conn,
                "INSERT INTO questions (id, course_id, question_text, question_type, subject, grade_level, \
                 difficulty_level, answer_options, correct_answer, points) VALUES ($1, $2, $3, 0, $4, 9, $5, $6, $7, 1)",
                &[
                    json!(id.to_string()),
                    json!(course_id(c).to_string()),
                    json!(text),
                    json!(c.subject),
                    json!(1 + i as i64),
                    json!(options),
                    json!(correct),
                ],
            )
            .await?;
            ids.push(id);
        }
        sql(
            &mut conn,
            "INSERT INTO assessments (id, course_id, title, description, assessment_type, subject, grade_level, \
             question_ids, total_points, passing_score_percentage) VALUES ($1, $2, $3, '', 0, $4, 9, $5, 3, 70)",
            &[
                json!(quiz_id(c).to_string()),
                json!(course_id(c).to_string()),
                json!(format!("{} quiz", c.name)),
                json!(c.subject),
                json!(serde_json::to_string(&ids)?),
            ],
        )
        .await?;
    }
    let _ = conn.close().await;
    for (name, course, right) in [("Sam Learner", 0, 3), ("Priya Patel", 0, 1)] {
        let token = tokens.student(out[name].0, None)?;
        attempt(api, "selfservice", &token, course, None, right).await?;
    }
    Ok(out)
}
