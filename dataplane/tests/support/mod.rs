//! Shared fixture for the data-plane integration tests: two school databases and the
//! self-service database on the harness's real PostgreSQL, each with its own login role
//! and a Secret-shaped YAML file; a real Redis; the service on a free port.
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use std::path::PathBuf;
use std::sync::Arc;

use edumind_dataplane::config::Settings;
use edumind_dataplane::secret::Secret;
use edumind_dataplane::startup::Application;
use edumind_dataplane::state::SharedState;
use edumind_dataplane::tenants::{Tenant, TenantId, manifest_path, secret_manifest};
use edumind_tests::{PgServer, TestDatabase, random_token};
use serde_json::{Value, json};
use sqlx::{AssertSqlSafe, Executor, PgConnection};
use uuid::Uuid;

pub const HS_SECRET: &str = "test-secret-0123456789-0123456789-abcdef";
pub const ISSUER: &str = "https://auth.test";
pub const AUDIENCE: &str = "edumind-dataplane";

/// One seeded tenant.
#[derive(Clone, Debug)]
pub struct Seeded {
    pub tenant: Tenant,
    pub db: TestDatabase,
    pub school_id: Option<Uuid>,
    pub teacher_user: Uuid,
    pub admin_user: Uuid,
    /// (user id, student id) of two students.
    pub students: Vec<(Uuid, Uuid)>,
    pub class_id: Uuid,
    pub course_id: Uuid,
    pub assessment_id: Uuid,
    pub questions: Vec<Uuid>,
}

pub struct Fixture {
    pub base: String,
    /// The admin listener (`/metrics`, detailed `/readyz`).
    pub admin_base: String,
    pub http: reqwest::Client,
    pub a: Seeded,
    pub b: Seeded,
    pub ss: Seeded,
    pub dir: tempfile::TempDir,
    pub state: SharedState,
    pub stop: Option<tokio::sync::oneshot::Sender<()>>,
    pub server: Option<tokio::task::JoinHandle<()>>,
}

/// Global content (courses/questions) has the same ids in every tenant database.
pub const COURSE: Uuid = Uuid::from_u128(0xc0_0000_0000_0000_0000_0000_0000_0001);
pub const ASSESSMENT: Uuid = Uuid::from_u128(0xa5_0000_0000_0000_0000_0000_0000_0001);
pub const Q1: Uuid = Uuid::from_u128(0x01_0000_0000_0000_0000_0000_0000_0001);
pub const Q2: Uuid = Uuid::from_u128(0x01_0000_0000_0000_0000_0000_0000_0002);
pub const Q3: Uuid = Uuid::from_u128(0x01_0000_0000_0000_0000_0000_0000_0003);

pub async fn exec(conn: &mut PgConnection, sql: String) {
    conn.execute(AssertSqlSafe(sql)).await.unwrap();
}

/// Creates a login role and returns its password.
pub async fn create_role(pg: &PgServer, role: &str) -> String {
    let password = random_token(24);
    let mut admin = pg.admin().await;
    exec(
        &mut admin,
        format!("CREATE ROLE \"{role}\" LOGIN PASSWORD '{password}'"),
    )
    .await;
    password
}

pub async fn provision(pg: &PgServer, id: TenantId) -> Seeded {
    let db = pg.migrated_database().await;
    let role = format!("app_{}", random_token(10));
    let password = create_role(pg, &role).await;
    let mut conn = db.connect().await;
    match id {
        TenantId::School(_) => {
            exec(&mut conn, format!("GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO \"{role}\"")).await;
        }
        TenantId::SelfService => {
            edumind_schema::selfservice::apply_policies(&mut conn, &role)
                .await
                .unwrap();
            // workflow runs of the self-service tenant are recorded by admins
            exec(
                &mut conn,
                format!("GRANT INSERT ON workflow_executions TO \"{role}\""),
            )
            .await;
        }
    }
    let school_id = match id {
        TenantId::School(s) => Some(s),
        TenantId::SelfService => None,
    };
    let seeded = seed(&mut conn, school_id).await;
    let tenant = Tenant {
        tls: None,
        id,
        code: school_id.map(|s| format!("code-{}", &s.to_string()[..8])),
        host: pg.host.clone(),
        port: pg.port,
        dbname: db.name.clone(),
        username: role,
        password: Secret::new(password),
    };
    Seeded {
        tenant,
        db,
        ..seeded
    }
}

async fn seed(conn: &mut PgConnection, school: Option<Uuid>) -> Seeded {
    let teacher = Uuid::new_v4();
    let admin = Uuid::new_v4();
    let students: Vec<(Uuid, Uuid)> = (0..2).map(|_| (Uuid::new_v4(), Uuid::new_v4())).collect();
    let class_id = Uuid::new_v4();
    if let Some(s) = school {
        sqlx::query("INSERT INTO schools (id, name, code, address, contact_email) VALUES ($1, 'School', $2, 'Addr', 'a@b.c')")
            .bind(s).bind(format!("code-{}", &s.to_string()[..8])).execute(&mut *conn).await.unwrap();
    }
    for (uid, role) in [(teacher, 1), (admin, 2)] {
        sqlx::query("INSERT INTO users (id, email, full_name, role, school_id) VALUES ($1, $2, 'Staff', $3, $4)")
            .bind(uid).bind(format!("{uid}@x.test")).bind(role).bind(school).execute(&mut *conn).await.unwrap();
    }
    for (uid, sid) in &students {
        sqlx::query("INSERT INTO users (id, email, full_name, role, school_id) VALUES ($1, $2, 'Student', 0, $3)")
            .bind(uid).bind(format!("{uid}@x.test")).bind(school).execute(&mut *conn).await.unwrap();
        sqlx::query(
            "INSERT INTO students (id, user_id, school_id, grade_level) VALUES ($1, $2, $3, 8)",
        )
        .bind(sid)
        .bind(uid)
        .bind(school)
        .execute(&mut *conn)
        .await
        .unwrap();
    }
    let roster = serde_json::to_string(&students.iter().map(|s| s.1).collect::<Vec<_>>()).unwrap();
    sqlx::query("INSERT INTO classes (id, school_id, name, code, grade_level, subject, student_ids, academic_year) VALUES ($1, $2, '8A', '8A', 8, 1, $3, '2025-2026')")
        .bind(class_id).bind(school.unwrap_or(Uuid::nil())).bind(&roster).execute(&mut *conn).await.unwrap();
    sqlx::query("INSERT INTO courses (id, name, code, subject, grade_level, description) VALUES ($1, 'Algebra', 'ALG8', 1, 8, 'd')")
        .bind(COURSE).execute(&mut *conn).await.unwrap();
    for (q, answer) in [(Q1, "\"B\""), (Q2, "42"), (Q3, "\"x\"")] {
        sqlx::query("INSERT INTO questions (id, course_id, question_text, question_type, subject, grade_level, difficulty_level, correct_answer, points) VALUES ($1, $2, 'q?', 0, 1, 8, 1, $3, 10)")
            .bind(q).bind(COURSE).bind(answer).execute(&mut *conn).await.unwrap();
    }
    let qids = serde_json::to_string(&[Q1, Q2, Q3]).unwrap();
    sqlx::query("INSERT INTO assessments (id, course_id, title, description, assessment_type, subject, grade_level, question_ids, total_points, passing_score_percentage) VALUES ($1, $2, 'Quiz', 'd', 0, 1, 8, $3, 30, 60)")
        .bind(ASSESSMENT).bind(COURSE).bind(&qids).execute(&mut *conn).await.unwrap();
    Seeded {
        tenant: Tenant {
            tls: None,
            id: TenantId::SelfService,
            code: None,
            host: String::new(),
            port: 0,
            dbname: String::new(),
            username: String::new(),
            password: Secret::new(""),
        },
        db: TestDatabase {
            name: String::new(),
            url: String::new(),
        },
        school_id: school,
        teacher_user: teacher,
        admin_user: admin,
        students,
        class_id,
        course_id: COURSE,
        assessment_id: ASSESSMENT,
        questions: vec![Q1, Q2, Q3],
    }
}

pub fn settings(dir: PathBuf, redis_url: String) -> Settings {
    let mut s = Settings::load(
        None,
        Vec::new().into_iter().chain([(
            "EDUMIND_DP__AUTH__HS256_SECRET".to_owned(),
            format!("\"{HS_SECRET}\""),
        )]),
    )
    .unwrap();
    s.listen = "127.0.0.1:0".parse().unwrap();
    s.admin_listen = "127.0.0.1:0".parse().unwrap();
    s.tenants_dir = dir;
    s.tenant_poll_ms = 100;
    s.redis.url = Secret::new(redis_url);
    s.auth.issuer = ISSUER.into();
    s.auth.audience = AUDIENCE.into();
    s
}

pub fn write_tenant(dir: &std::path::Path, t: &Tenant) {
    std::fs::write(manifest_path(dir, &t.id), secret_manifest(t).unwrap()).unwrap();
}

impl Fixture {
    pub async fn start(redis_url: String) -> Fixture {
        Self::start_with(redis_url, |_| {}).await
    }

    pub async fn start_with(redis_url: String, tweak: impl FnOnce(&mut Settings)) -> Fixture {
        let pg = edumind_tests::postgres().await;
        let a = provision(pg, TenantId::School(Uuid::new_v4())).await;
        let b = provision(pg, TenantId::School(Uuid::new_v4())).await;
        let ss = provision(pg, TenantId::SelfService).await;
        let dir = tempfile::tempdir().unwrap();
        for t in [&a, &b, &ss] {
            write_tenant(dir.path(), &t.tenant);
        }
        let mut s = settings(dir.path().to_owned(), redis_url);
        tweak(&mut s);
        let app = Application::build(s).await.unwrap();
        let base = format!("http://127.0.0.1:{}", app.port());
        let admin_base = format!("http://127.0.0.1:{}", app.admin_port());
        let state = app.state();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(app.run_until_stopped(async move {
            let _ = rx.await;
        }));
        Fixture {
            base,
            admin_base,
            http: reqwest::Client::new(),
            a,
            b,
            ss,
            dir,
            state,
            stop: Some(tx),
            server: Some(server),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub async fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value, reqwest::header::HeaderMap) {
        let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut req = self.http.request(m, self.url(path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let res = req.send().await.unwrap();
        let status = res.status().as_u16();
        let headers = res.headers().clone();
        let text = res.text().await.unwrap();
        let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, v, headers)
    }
}

/// An HS256 token for `user` with `role` (0–5) and `school`.
pub fn token(user: Uuid, role: i32, school: Option<Uuid>) -> String {
    token_with(
        json!({"sub": user.to_string(), "role": role, "school_id": school.map(|s| s.to_string())}),
        3600,
    )
}

pub fn token_with(mut claims: Value, exp_in: i64) -> String {
    let now = chrono::Utc::now().timestamp();
    let o = claims.as_object_mut().unwrap();
    o.entry("iss").or_insert(json!(ISSUER));
    o.entry("aud").or_insert(json!(AUDIENCE));
    o.entry("exp").or_insert(json!(now + exp_in));
    o.entry("nbf").or_insert(json!(now - 5));
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(HS_SECRET.as_bytes()),
    )
    .unwrap()
}

pub type Shared = Arc<Fixture>;

/// The cache key of `seed` for `tenant` (the data plane's own key builder).
pub fn ckey(tenant: impl std::fmt::Display, seed: &str) -> String {
    edumind_dataplane::cache::tenant_key(&tenant.to_string(), seed)
}
