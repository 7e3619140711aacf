//! Routes and handlers. One documented filter function per route; handlers turn every
//! business error into a [`Problem`] reply themselves, so rejections only ever mean "this
//! route does not match" (or the body could not be read).

mod deletes;

use std::convert::Infallible;
use std::time::Instant;

use serde::Deserialize;
use serde_json::{Value, json};
use sqlx::Connection;
use uuid::Uuid;
use warp::filters::BoxedFilter;
use warp::http::{HeaderValue, StatusCode, header};
use warp::reply::Response;
use warp::{Filter, Reply};

use crate::access::{Access, path_uuid, resolve, scope_params};
use crate::auth::{AuthError, Principal};
use crate::cache;
use crate::openapi::{self, RouteDoc};
use crate::pool::PoolError;
use crate::problem::Problem;
use crate::scoped;
use crate::startup::Ctx;
use crate::tenants::{Tenant, TenantId};

type Who = Result<Principal, AuthError>;

// ------------------------------------------------------------------------------------
// shared filters and reply helpers
// ------------------------------------------------------------------------------------

fn with(s: &Ctx) -> impl Filter<Extract = (Ctx,), Error = Infallible> + Clone + use<> {
    let s = s.clone();
    warp::any().map(move || s.clone())
}

/// The caller, or why not; never a rejection (401 is a reply).
fn principal(s: &Ctx) -> impl Filter<Extract = (Who,), Error = Infallible> + Clone + use<> {
    let s = s.clone();
    warp::header::optional::<String>("authorization")
        .or(warp::any().map(|| None))
        .unify()
        .map(move |h: Option<String>| s.auth.authenticate(h.as_deref()))
}

fn if_none_match() -> impl Filter<Extract = (Option<String>,), Error = Infallible> + Clone {
    warp::header::optional::<String>("if-none-match")
        .or(warp::any().map(|| None))
        .unify()
}

/// The JSON body, size-limited; a body that does not parse is handed to the handler as a
/// 400 problem, so authentication still answers first (401 before 400).
fn json_body<T: serde::de::DeserializeOwned + Send>(
    s: &Ctx,
) -> impl Filter<Extract = (Result<T, Problem>,), Error = warp::Rejection> + Clone + use<T> {
    warp::body::content_length_limit(s.settings.max_body_bytes)
        .and(warp::body::bytes())
        .map(|b: bytes::Bytes| {
            serde_json::from_slice::<T>(&b)
                .map_err(|e| Problem::bad_request(format!("invalid JSON body: {e}")))
        })
}

/// Counts and times every reply of one route. The only way to mount a route: it takes
/// the route's entry of the OpenAPI table, so every route is documented.
fn instrument(s: &Ctx, doc: RouteDoc, f: BoxedFilter<(Response,)>) -> BoxedFilter<(Response,)> {
    let m = s.metrics.clone();
    warp::any()
        .map(Instant::now)
        .and(f)
        .map(move |start: Instant, res: Response| {
            m.observe(doc.id, res.status().as_u16(), start);
            res
        })
        .boxed()
}

fn reply(result: Result<Response, Problem>) -> Response {
    match result {
        Ok(r) => r,
        Err(p) => p.into_response(),
    }
}

/// A JSON reply with a strong ETag; 304 when `If-None-Match` matches.
fn etagged(body: String, inm: Option<&str>) -> Response {
    use sha2::Digest;
    let tag = format!(
        "\"{}\"",
        hex::encode(&sha2::Sha256::digest(body.as_bytes())[..16])
    );
    let matches = inm.is_some_and(|h| h.split(',').any(|t| t.trim() == tag || t.trim() == "*"));
    let mut res = if matches {
        let mut r = Response::new(Vec::new().into());
        *r.status_mut() = StatusCode::NOT_MODIFIED;
        r
    } else {
        let mut r = Response::new(body.into());
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        r
    };
    if let Ok(v) = HeaderValue::from_str(&tag) {
        res.headers_mut().insert(header::ETAG, v);
    }
    res
}

fn json_reply(status: StatusCode, v: &Value) -> Response {
    warp::reply::with_status(warp::reply::json(v), status).into_response()
}

fn db_problem(e: sqlx::Error) -> Problem {
    if let sqlx::Error::Database(d) = &e {
        match d.code().as_deref() {
            Some("23505") => return Problem::conflict("a record with this key already exists"),
            Some("23503") => return Problem::bad_request("a referenced record does not exist"),
            Some("42501") => return Problem::forbidden(),
            Some("23514") | Some("22001") | Some("22P02") | Some("22007") | Some("22008") => {
                return Problem::bad_request("a value is out of range for its column");
            }
            _ => {}
        }
    }
    tracing::error!(error = %e, "database error");
    Problem::internal()
}

fn pool_problem(e: PoolError) -> Problem {
    match e {
        PoolError::Busy => Problem::unavailable(1, "the tenant database is busy; retry shortly"),
        PoolError::Connect(err) => {
            tracing::error!(error = %err, "cannot connect to tenant database");
            Problem::unavailable(5, "the tenant database is unreachable")
        }
    }
}

/// Caller, tenant and a connection, after authentication and tenant authorization.
struct Scope {
    p: Principal,
    tenant: std::sync::Arc<Tenant>,
    access: Access,
}

fn scope(s: &Ctx, who: Who, tenant: &str) -> Result<Scope, Problem> {
    let p = who.map_err(|_| Problem::unauthorized())?;
    let (tenant, access) = resolve(&s.directory, &p, tenant)?;
    Ok(Scope { p, tenant, access })
}

impl Scope {
    fn params(&self) -> (String, &'static str) {
        scope_params(&self.p, self.access)
    }
    fn key(&self, seed: &str) -> String {
        cache::key(&self.tenant.id, seed)
    }
    fn school_id(&self) -> Option<Uuid> {
        match self.tenant.id {
            TenantId::School(id) => Some(id),
            TenantId::SelfService => None,
        }
    }
}

/// Runs one scoped statement returning at most one `doc`.
async fn fetch_doc(
    s: &Ctx,
    sc: &Scope,
    sql: &'static str,
    binds: &[Value],
) -> Result<Option<Value>, Problem> {
    let mut conn = s.pools.acquire(&sc.tenant).await.map_err(pool_problem)?;
    let (uid, adm) = sc.params();
    let mut q = sqlx::query_scalar::<_, Value>(sql).bind(uid).bind(adm);
    // Every value goes over as text (NULL as a text NULL) and the SQL casts it: one
    // statement text must always see the same parameter types, or the cached prepared
    // statement rejects the next call's binary encoding.
    for b in binds {
        q = match b {
            Value::String(v) => q.bind(Some(v.clone())),
            Value::Null => q.bind(None::<String>),
            other => q.bind(Some(other.to_string())),
        };
    }
    q.fetch_optional(&mut *conn).await.map_err(db_problem)
}

// ------------------------------------------------------------------------------------
// routes
// ------------------------------------------------------------------------------------

/// Every route, with rejections turned into problem replies.
pub fn routes(s: Ctx) -> BoxedFilter<(Response,)> {
    let unmatched = s.metrics.clone();
    healthz(&s)
        .or(readyz(&s))
        .unify()
        .or(metrics(&s))
        .unify()
        .or(openapi_json(&s))
        .unify()
        .or(school_get(&s))
        .unify()
        .or(users_list(&s))
        .unify()
        .or(users_create(&s))
        .unify()
        .or(students_list(&s))
        .unify()
        .or(student_progress(&s))
        .unify()
        .or(roster_get(&s))
        .unify()
        .or(roster_put(&s))
        .unify()
        .or(course_questions(&s))
        .unify()
        .or(assessment_get(&s))
        .unify()
        .or(attempt_start(&s))
        .unify()
        .or(attempt_answer(&s))
        .unify()
        .or(attempt_submit(&s))
        .unify()
        .or(attempt_get(&s))
        .unify()
        .or(session_routes(&s))
        .unify()
        .or(workflows_list(&s))
        .unify()
        .or(workflows_create(&s))
        .unify()
        .or(breakers_list(&s))
        .unify()
        .or(breakers_get(&s))
        .unify()
        .or(breakers_put(&s))
        .unify()
        .or(decisions_list(&s))
        .unify()
        .or(decisions_create(&s))
        .unify()
        .or(decisions_get(&s))
        .unify()
        .or(stats_list(&s))
        .unify()
        .or(stats_get(&s))
        .unify()
        .or(stats_put(&s))
        .unify()
        .or(course_put(&s))
        .unify()
        .or(question_put(&s))
        .unify()
        .or(assessment_put(&s))
        .unify()
        .or(class_put(&s))
        .unify()
        .or(deletes::routes(&s))
        .unify()
        .recover(crate::problem::recover)
        .unify()
        .map(move |res: Response| {
            if res.status() == StatusCode::NOT_FOUND
                || res.status() == StatusCode::METHOD_NOT_ALLOWED
            {
                unmatched.observe("unmatched", res.status().as_u16(), Instant::now());
            }
            res
        })
        .boxed()
}

/// `GET /healthz`: the process is alive (no dependencies checked).
pub fn healthz(s: &Ctx) -> BoxedFilter<(Response,)> {
    let f = warp::path!("healthz")
        .and(warp::get())
        .map(|| json_reply(StatusCode::OK, &json!({"status": "ok"})))
        .boxed();
    instrument(s, openapi::HEALTHZ, f)
}

/// `GET /readyz`: PostgreSQL (one tenant per server) and Redis, reported separately. Ready
/// (200) when PostgreSQL answers; Redis down is reported but does not make the service
/// unready, because reads fall back to PostgreSQL.
pub fn readyz(s: &Ctx) -> BoxedFilter<(Response,)> {
    let f = warp::path!("readyz")
        .and(warp::get())
        .and(with(s))
        .then(readyz_handler)
        .boxed();
    instrument(s, openapi::READYZ, f)
}

async fn readyz_handler(s: Ctx) -> Response {
    let redis_up = s.cache.ping().await;
    let mut servers = std::collections::BTreeMap::new();
    for t in s.directory.all() {
        servers.entry(t.server_key()).or_insert(t);
    }
    let mut pg = Vec::new();
    let mut all_up = true;
    for (server, t) in servers {
        let up = match s.pools.acquire(&t).await {
            Ok(mut c) => c.ping().await.is_ok(),
            Err(_) => false,
        };
        all_up &= up;
        pg.push(json!({"server": server, "status": if up {"up"} else {"down"}}));
    }
    let status = if all_up {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    json_reply(
        status,
        &json!({
            "status": if all_up {"ready"} else {"unready"},
            "postgres": {"status": if all_up {"up"} else {"down"}, "servers": pg},
            "redis": {"status": if redis_up {"up"} else {"down"}},
            "tenants": s.directory.len(),
        }),
    )
}

/// `GET /metrics`: Prometheus text format.
pub fn metrics(s: &Ctx) -> BoxedFilter<(Response,)> {
    let st = s.clone();
    let f = warp::path!("metrics")
        .and(warp::get())
        .map(move || {
            let body = st.metrics.render(&st.pools.usage());
            let mut r = Response::new(body.into());
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4"),
            );
            r
        })
        .boxed();
    instrument(s, openapi::METRICS, f)
}

/// `GET /openapi.json`: the OpenAPI 3 document, built from the route table.
pub fn openapi_json(s: &Ctx) -> BoxedFilter<(Response,)> {
    let f = warp::path!("openapi.json")
        .and(warp::get())
        .map(|| json_reply(StatusCode::OK, &openapi::document()))
        .boxed();
    instrument(s, openapi::OPENAPI, f)
}

/// `GET /v1/tenants/{tenant}/school`: the school's own record (school members, admins).
pub fn school_get(s: &Ctx) -> BoxedFilter<(Response,)> {
    let f = warp::path!("v1" / "tenants" / String / "school")
        .and(warp::get())
        .and(principal(s))
        .and(if_none_match())
        .and(with(s))
        .then(
            |t: String, who: Who, inm: Option<String>, s: Ctx| async move {
                reply(
                    async {
                        let sc = scope(&s, who, &t)?;
                        if sc.access == Access::Content {
                            return Err(Problem::forbidden());
                        }
                        let id = sc.school_id().ok_or_else(Problem::not_found)?;
                        let doc = fetch_doc(
                            &s,
                            &sc,
                            scoped!(
                                "SELECT to_jsonb(t) AS doc FROM schools t WHERE t.id = $3::uuid"
                            ),
                            &[json!(id.to_string())],
                        )
                        .await?
                        .ok_or_else(Problem::not_found)?;
                        Ok(etagged(doc.to_string(), inm.as_deref()))
                    }
                    .await,
                )
            },
        )
        .boxed();
    instrument(s, openapi::SCHOOL_GET, f)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StudentsQuery {
    after: Option<Uuid>,
    limit: Option<i64>,
    grade_level: Option<i32>,
    subscription_tier: Option<i32>,
}

/// `GET /v1/tenants/{tenant}/students?after=&limit=&grade_level=&subscription_tier=`:
/// keyset-paginated by id. Students see only themselves.
pub fn students_list(s: &Ctx) -> BoxedFilter<(Response,)> {
    let f = warp::path!("v1" / "tenants" / String / "students")
        .and(warp::get())
        .and(warp::query::<StudentsQuery>())
        .and(principal(s))
        .and(if_none_match())
        .and(with(s))
        .then(|t: String, q: StudentsQuery, who: Who, inm: Option<String>, s: Ctx| async move {
            reply(
                async {
                    let sc = scope(&s, who, &t)?;
                    if !(sc.access.reads_all() || sc.access.is_student()) {
                        return Err(Problem::forbidden());
                    }
                    let limit = q.limit.unwrap_or(50);
                    if !(1..=200).contains(&limit) {
                        return Err(Problem::bad_request("limit must be between 1 and 200"));
                    }
                    let only_user = sc.access.is_student().then(|| sc.p.user_id.to_string());
                    let doc = fetch_doc(
                        &s,
                        &sc,
                        scoped!(
                            "SELECT coalesce(jsonb_agg(to_jsonb(t) ORDER BY t.id), '[]'::jsonb) AS doc FROM ( \
                             SELECT * FROM students s WHERE ($3::uuid IS NULL OR s.id > $3::uuid) \
                             AND ($4::int IS NULL OR s.grade_level = $4::int) \
                             AND ($5::int IS NULL OR s.subscription_tier = $5::int) \
                             AND ($6::uuid IS NULL OR s.user_id = $6::uuid) \
                             ORDER BY s.id LIMIT $7::int) t"
                        ),
                        &[
                            q.after.map(|a| json!(a.to_string())).unwrap_or(Value::Null),
                            q.grade_level.map(|g| json!(g)).unwrap_or(Value::Null),
                            q.subscription_tier.map(|g| json!(g)).unwrap_or(Value::Null),
                            only_user.map(Value::String).unwrap_or(Value::Null),
                            json!(limit),
                        ],
                    )
                    .await?
                    .unwrap_or_else(|| json!([]));
                    let items = doc.as_array().cloned().unwrap_or_default();
                    let next = (items.len() as i64 == limit)
                        .then(|| items.last().and_then(|l| l.get("id")).cloned())
                        .flatten();
                    let body = json!({"items": items, "next_after": next});
                    Ok(etagged(body.to_string(), inm.as_deref()))
                }
                .await,
            )
        })
        .boxed();
    instrument(s, openapi::STUDENTS_LIST, f)
}

/// Serves a cached document: a hit from Redis, else the scoped query (single flight).
async fn cached_doc(
    s: &Ctx,
    sc: &Scope,
    kind: &str,
    seed: &str,
    ttl: std::time::Duration,
    sql: &'static str,
    binds: Vec<Value>,
) -> Result<Option<Value>, Problem> {
    let key = sc.key(seed);
    let text = s
        .cache
        .get_or_load(kind, &key, ttl, || async {
            let doc = fetch_doc(s, sc, sql, &binds).await?;
            Ok::<String, Problem>(doc.map(|d| d.to_string()).unwrap_or_else(|| "null".into()))
        })
        .await?;
    let v: Value = serde_json::from_str(&text).map_err(|_| Problem::internal())?;
    Ok((!v.is_null()).then_some(v))
}

/// `GET /v1/tenants/{tenant}/students/{id}/progress`: level, XP, streak and attempt
/// counts; cached 5 minutes under `student:{id}:progress`. Students: their own only.
pub fn student_progress(s: &Ctx) -> BoxedFilter<(Response,)> {
    let f = warp::path!("v1" / "tenants" / String / "students" / String / "progress")
        .and(warp::get())
        .and(principal(s))
        .and(if_none_match())
        .and(with(s))
        .then(|t: String, id: String, who: Who, inm: Option<String>, s: Ctx| async move {
            reply(
                async {
                    let sc = scope(&s, who, &t)?;
                    if !(sc.access.reads_all() || sc.access.is_student()) {
                        return Err(Problem::forbidden());
                    }
                    let id = path_uuid(&id)?;
                    let doc = cached_doc(
                        &s,
                        &sc,
                        "progress",
                        &format!("student:{id}:progress"),
                        cache::PROGRESS_TTL,
                        scoped!(
                            "SELECT jsonb_build_object('student_id', s.id, 'user_id', s.user_id, \
                             'level', s.level, 'xp_points', s.xp_points, 'daily_streak', s.daily_streak, \
                             'last_activity_date', s.last_activity_date, \
                             'attempts_completed', (SELECT count(*) FROM student_assessments a \
                                WHERE a.student_id = s.id AND a.status = 2), \
                             'attempts_passed', (SELECT count(*) FROM student_assessments a \
                                WHERE a.student_id = s.id AND a.status = 2 AND a.passed)) AS doc \
                             FROM students s WHERE s.id = $3::uuid"
                        ),
                        vec![json!(id.to_string())],
                    )
                    .await?
                    .ok_or_else(Problem::not_found)?;
                    // The cache is shared by everyone in the tenant: the ownership check
                    // runs on every reply, not only when PostgreSQL (RLS) loaded it.
                    if sc.access.is_student()
                        && doc.get("user_id").and_then(Value::as_str)
                            != Some(sc.p.user_id.to_string().as_str())
                    {
                        return Err(Problem::not_found());
                    }
                    Ok(etagged(doc.to_string(), inm.as_deref()))
                }
                .await,
            )
        })
        .boxed();
    instrument(s, openapi::STUDENT_PROGRESS, f)
}

const ROSTER_SQL: &str = scoped!(
    "SELECT jsonb_build_object('class_id', c.id, 'code', c.code, 'name', c.name, \
     'students', coalesce((SELECT jsonb_agg(jsonb_build_object('id', s.id, 'user_id', s.user_id, \
       'grade_level', s.grade_level, 'level', s.level) ORDER BY s.id) FROM students s \
       WHERE s.id::text IN (SELECT jsonb_array_elements_text(c.student_ids::jsonb))), '[]'::jsonb)) AS doc \
     FROM classes c WHERE c.id = $3::uuid"
);

/// `GET /v1/tenants/{tenant}/classes/{id}/roster`: the class's students; cached 10
/// minutes under `class:{id}:roster`. Teachers, school admins, admins.
pub fn roster_get(s: &Ctx) -> BoxedFilter<(Response,)> {
    let f = warp::path!("v1" / "tenants" / String / "classes" / String / "roster")
        .and(warp::get())
        .and(principal(s))
        .and(if_none_match())
        .and(with(s))
        .then(
            |t: String, id: String, who: Who, inm: Option<String>, s: Ctx| async move {
                reply(
                    async {
                        let sc = scope(&s, who, &t)?;
                        if !sc.access.reads_all() {
                            return Err(Problem::forbidden());
                        }
                        let id = path_uuid(&id)?;
                        let doc = cached_doc(
                            &s,
                            &sc,
                            "roster",
                            &format!("class:{id}:roster"),
                            cache::ROSTER_TTL,
                            ROSTER_SQL,
                            vec![json!(id.to_string())],
                        )
                        .await?
                        .ok_or_else(Problem::not_found)?;
                        Ok(etagged(doc.to_string(), inm.as_deref()))
                    }
                    .await,
                )
            },
        )
        .boxed();
    instrument(s, openapi::ROSTER_GET, f)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RosterBody {
    student_ids: Vec<Uuid>,
}

/// `PUT /v1/tenants/{tenant}/classes/{id}/roster` `{"student_ids": [...]}`: replaces the
/// roster (every id must be a student of this tenant) and invalidates the cached roster.
pub fn roster_put(s: &Ctx) -> BoxedFilter<(Response,)> {
    let f = warp::path!("v1" / "tenants" / String / "classes" / String / "roster")
        .and(warp::put())
        .and(principal(s))
        .and(json_body::<RosterBody>(s))
        .and(with(s))
        .then(
            |t: String, id: String, who: Who, body: Result<RosterBody, Problem>, s: Ctx| async move {
                reply(
                    async {
                        let sc = scope(&s, who, &t)?;
                        let body = body?;
                        if !sc.access.reads_all() {
                            return Err(Problem::forbidden());
                        }
                        let id = path_uuid(&id)?;
                        let mut ids = body.student_ids;
                        ids.sort();
                        ids.dedup();
                        if ids.len() > 1000 {
                            return Err(Problem::bad_request(
                                "a roster holds at most 1000 students",
                            ));
                        }
                        let list = serde_json::to_string(&ids).map_err(|_| Problem::internal())?;
                        let mut conn = s.pools.acquire(&sc.tenant).await.map_err(pool_problem)?;
                        let mut tx = begin_scoped(&mut conn, &sc).await?;
                        let known: i64 =
                            sqlx::query_scalar("SELECT count(*) FROM students WHERE id = ANY($1)")
                                .bind(&ids)
                                .fetch_one(&mut *tx)
                                .await
                                .map_err(db_problem)?;
                        let updated = sqlx::query(
                            "UPDATE classes SET student_ids = $2, updated_at = now() WHERE id = $1",
                        )
                        .bind(id)
                        .bind(&list)
                        .execute(&mut *tx)
                        .await
                        .map_err(db_problem)?
                        .rows_affected();
                        if updated == 0 {
                            return Err(Problem::not_found());
                        }
                        if known != ids.len() as i64 {
                            return Err(Problem::bad_request(
                                "every student id must be a student of this tenant",
                            ));
                        }
                        tx.commit().await.map_err(db_problem)?;
                        s.cache
                            .invalidate(&[sc.key(&format!("class:{id}:roster"))])
                            .await;
                        Ok(json_reply(
                            StatusCode::OK,
                            &json!({"class_id": id, "student_ids": ids}),
                        ))
                    }
                    .await,
                )
            },
        )
        .boxed();
    instrument(s, openapi::ROSTER_PUT, f)
}

/// `GET /v1/tenants/{tenant}/courses/{id}/questions`: the course's active questions;
/// cached one hour under `course:{id}:questions`. Students do not get answers.
pub fn course_questions(s: &Ctx) -> BoxedFilter<(Response,)> {
    let f = warp::path!("v1" / "tenants" / String / "courses" / String / "questions")
        .and(warp::get())
        .and(principal(s))
        .and(if_none_match())
        .and(with(s))
        .then(|t: String, id: String, who: Who, inm: Option<String>, s: Ctx| async move {
            reply(
                async {
                    let sc = scope(&s, who, &t)?;
                    let id = path_uuid(&id)?;
                    let mut doc = cached_doc(
                        &s,
                        &sc,
                        "questions",
                        &format!("course:{id}:questions"),
                        cache::COURSE_QUESTIONS_TTL,
                        scoped!(
                            "SELECT CASE WHEN NOT EXISTS (SELECT 1 FROM courses WHERE id = $3::uuid) THEN NULL \
                             ELSE coalesce((SELECT jsonb_agg(to_jsonb(q) ORDER BY q.id) FROM questions q \
                               WHERE q.course_id = $3::uuid AND q.is_active), '[]'::jsonb) END AS doc"
                        ),
                        vec![json!(id.to_string())],
                    )
                    .await?
                    .ok_or_else(Problem::not_found)?;
                    if sc.access.is_student()
                        && let Some(items) = doc.as_array_mut()
                    {
                        for q in items {
                            if let Some(o) = q.as_object_mut() {
                                o.remove("correct_answer");
                                o.remove("explanation");
                            }
                        }
                    }
                    Ok(etagged(json!({"course_id": id, "items": doc}).to_string(), inm.as_deref()))
                }
                .await,
            )
        })
        .boxed();
    instrument(s, openapi::COURSE_QUESTIONS, f)
}

/// `GET /v1/tenants/{tenant}/assessments/{id}`: assessment metadata; cached 15 minutes
/// under `assessment:{id}:meta`. Students see active assessments only.
pub fn assessment_get(s: &Ctx) -> BoxedFilter<(Response,)> {
    let f = warp::path!("v1" / "tenants" / String / "assessments" / String)
        .and(warp::get())
        .and(principal(s))
        .and(if_none_match())
        .and(with(s))
        .then(
            |t: String, id: String, who: Who, inm: Option<String>, s: Ctx| async move {
                reply(
                    async {
                        let sc = scope(&s, who, &t)?;
                        let id = path_uuid(&id)?;
                        let doc = cached_doc(
                            &s,
                            &sc,
                            "assessment",
                            &format!("assessment:{id}:meta"),
                            cache::ASSESSMENT_META_TTL,
                            scoped!(
                                "SELECT to_jsonb(a) AS doc FROM assessments a WHERE a.id = $3::uuid"
                            ),
                            vec![json!(id.to_string())],
                        )
                        .await?
                        .ok_or_else(Problem::not_found)?;
                        if sc.access.is_student() && doc.get("is_active") != Some(&json!(true)) {
                            return Err(Problem::not_found());
                        }
                        Ok(etagged(doc.to_string(), inm.as_deref()))
                    }
                    .await,
                )
            },
        )
        .boxed();
    instrument(s, openapi::ASSESSMENT_GET, f)
}

const ME_SQL: &str =
    scoped!("SELECT to_jsonb(s) AS doc FROM students s WHERE s.user_id = $1::uuid");

/// Opens a transaction whose first statement tells PostgreSQL who is asking (the
/// settings last until commit), for writes that need several statements.
async fn begin_scoped<'c>(
    conn: &'c mut sqlx::PgConnection,
    sc: &Scope,
) -> Result<sqlx::Transaction<'c, sqlx::Postgres>, Problem> {
    let mut tx = conn.begin().await.map_err(db_problem)?;
    let (uid, adm) = sc.params();
    let _: Option<Value> = sqlx::query_scalar(scoped!("SELECT '{}'::jsonb AS doc"))
        .bind(uid)
        .bind(adm)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db_problem)?;
    Ok(tx)
}

/// Opens a transaction whose first statement tells PostgreSQL who is asking (row-level
/// security in the self-service database) and returns the caller's student row.
async fn begin_as_student<'c>(
    conn: &'c mut sqlx::PgConnection,
    sc: &Scope,
) -> Result<(sqlx::Transaction<'c, sqlx::Postgres>, Uuid), Problem> {
    let mut tx = conn.begin().await.map_err(db_problem)?;
    let (uid, adm) = sc.params();
    let me: Option<Value> = sqlx::query_scalar(ME_SQL)
        .bind(uid)
        .bind(adm)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db_problem)?;
    let id = me
        .as_ref()
        .and_then(|m| m.get("id"))
        .and_then(Value::as_str)
        .and_then(|s| Uuid::parse_str(s).ok())
        .ok_or_else(Problem::not_found)?;
    Ok((tx, id))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StartBody {
    assessment_id: Uuid,
    class_id: Option<Uuid>,
}

/// `POST /v1/tenants/{tenant}/attempts` `{"assessment_id", "class_id"?}`: a student starts
/// an attempt (status 1 = in progress).
pub fn attempt_start(s: &Ctx) -> BoxedFilter<(Response,)> {
    let f = warp::path!("v1" / "tenants" / String / "attempts")
        .and(warp::post())
        .and(principal(s))
        .and(json_body::<StartBody>(s))
        .and(with(s))
        .then(|t: String, who: Who, body: Result<StartBody, Problem>, s: Ctx| async move {
            reply(
                async {
                    let sc = scope(&s, who, &t)?;
                    let body = body?;
                    if !sc.access.is_student() {
                        return Err(Problem::forbidden());
                    }
                    let mut conn = s.pools.acquire(&sc.tenant).await.map_err(pool_problem)?;
                    let (mut tx, student) = begin_as_student(&mut conn, &sc).await?;
                    let id = Uuid::new_v4();
                    let doc: Option<Value> = sqlx::query_scalar(
                        "INSERT INTO student_assessments (id, student_id, assessment_id, school_id, class_id, \
                         status, started_at, max_score) \
                         SELECT $1, $2, a.id, $3, $4, 1, now(), a.total_points FROM assessments a \
                         WHERE a.id = $5 AND a.is_active RETURNING to_jsonb(student_assessments.*)",
                    )
                    .bind(id)
                    .bind(student)
                    .bind(sc.school_id())
                    .bind(body.class_id)
                    .bind(body.assessment_id)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(db_problem)?;
                    let doc = doc.ok_or_else(Problem::not_found)?;
                    tx.commit().await.map_err(db_problem)?;
                    Ok(json_reply(StatusCode::CREATED, &doc))
                }
                .await,
            )
        })
        .boxed();
    instrument(s, openapi::ATTEMPT_START, f)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AnswerBody {
    question_id: Uuid,
    answer: String,
    #[serde(default)]
    time_spent_seconds: i32,
}

/// Whether `answer` matches `correct`: equal JSON values, or (for plain text) equal after
/// trimming, ignoring case.
pub fn is_correct(answer: &str, correct: &str) -> bool {
    let parse = |s: &str| {
        serde_json::from_str::<Value>(s).unwrap_or_else(|_| Value::String(s.trim().to_owned()))
    };
    match (parse(answer), parse(correct)) {
        (Value::String(a), Value::String(c)) => a.trim().eq_ignore_ascii_case(c.trim()),
        (a, c) => a == c,
    }
}

/// `POST /v1/tenants/{tenant}/attempts/{id}/responses` `{"question_id", "answer",
/// "time_spent_seconds"}`: records (or replaces) the answer to one question of an attempt
/// in progress.
pub fn attempt_answer(s: &Ctx) -> BoxedFilter<(Response,)> {
    let f = warp::path!("v1" / "tenants" / String / "attempts" / String / "responses")
        .and(warp::post())
        .and(principal(s))
        .and(json_body::<AnswerBody>(s))
        .and(with(s))
        .then(|t: String, id: String, who: Who, body: Result<AnswerBody, Problem>, s: Ctx| async move {
            reply(
                async {
                    let sc = scope(&s, who, &t)?;
                    let body = body?;
                    if !sc.access.is_student() {
                        return Err(Problem::forbidden());
                    }
                    let attempt = path_uuid(&id)?;
                    if body.answer.chars().count() > 4000 {
                        return Err(Problem::bad_request("answer is longer than 4000 characters"));
                    }
                    if !(0..=86_400).contains(&body.time_spent_seconds) {
                        return Err(Problem::bad_request("time_spent_seconds must be 0..=86400"));
                    }
                    let mut conn = s.pools.acquire(&sc.tenant).await.map_err(pool_problem)?;
                    let (mut tx, student) = begin_as_student(&mut conn, &sc).await?;
                    let row: Option<(i32, String)> = sqlx::query_as(
                        "SELECT sa.status, a.question_ids FROM student_assessments sa \
                         JOIN assessments a ON a.id = sa.assessment_id \
                         WHERE sa.id = $1 AND sa.student_id = $2",
                    )
                    .bind(attempt)
                    .bind(student)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(db_problem)?;
                    let (status, qids) = row.ok_or_else(Problem::not_found)?;
                    if status != 1 {
                        return Err(Problem::conflict("the attempt is not in progress"));
                    }
                    let qids: Vec<Uuid> = serde_json::from_str(&qids).unwrap_or_default();
                    let order = qids
                        .iter()
                        .position(|q| *q == body.question_id)
                        .ok_or_else(|| Problem::bad_request("the question is not part of this assessment"))?;
                    let q: Option<(String, i32)> =
                        sqlx::query_as("SELECT correct_answer, points FROM questions WHERE id = $1")
                            .bind(body.question_id)
                            .fetch_optional(&mut *tx)
                            .await
                            .map_err(db_problem)?;
                    let (correct, points) =
                        q.ok_or_else(|| Problem::bad_request("the question does not exist"))?;
                    let ok = is_correct(&body.answer, &correct);
                    let doc: Value = sqlx::query_scalar(
                        "INSERT INTO student_responses (id, student_assessment_id, student_id, question_id, \
                         school_id, student_answer, is_correct, points_earned, max_points, time_spent_seconds, \
                         question_order) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) \
                         ON CONFLICT (student_assessment_id, question_id) DO UPDATE SET \
                         student_answer = EXCLUDED.student_answer, is_correct = EXCLUDED.is_correct, \
                         points_earned = EXCLUDED.points_earned, time_spent_seconds = EXCLUDED.time_spent_seconds, \
                         submitted_at = now() \
                         RETURNING jsonb_build_object('id', id, 'question_id', question_id, 'is_correct', is_correct, \
                           'points_earned', points_earned, 'max_points', max_points)",
                    )
                    .bind(Uuid::new_v4())
                    .bind(attempt)
                    .bind(student)
                    .bind(body.question_id)
                    .bind(sc.school_id())
                    .bind(&body.answer)
                    .bind(ok)
                    .bind(if ok { points } else { 0 })
                    .bind(points)
                    .bind(body.time_spent_seconds)
                    .bind(order as i32)
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(db_problem)?;
                    tx.commit().await.map_err(db_problem)?;
                    Ok(json_reply(StatusCode::OK, &doc))
                }
                .await,
            )
        })
        .boxed();
    instrument(s, openapi::ATTEMPT_ANSWER, f)
}

/// XP for a submitted attempt: 10 per correct answer, 50 more for a pass.
pub fn xp_for(correct: i64, passed: bool) -> i64 {
    correct * 10 + if passed { 50 } else { 0 }
}

/// `POST /v1/tenants/{tenant}/attempts/{id}/submit`: scores the attempt and updates the
/// student's XP, level and daily streak in one transaction. Holds
/// `lock:assessment:{id}` meanwhile; the conditional `UPDATE ... WHERE status <> 2` makes
/// PostgreSQL itself allow one submission only, with or without Redis.
pub fn attempt_submit(s: &Ctx) -> BoxedFilter<(Response,)> {
    let f = warp::path!("v1" / "tenants" / String / "attempts" / String / "submit")
        .and(warp::post())
        .and(principal(s))
        .and(with(s))
        .then(|t: String, id: String, who: Who, s: Ctx| async move {
            reply(
                async {
                    let sc = scope(&s, who, &t)?;
                    if !sc.access.is_student() {
                        return Err(Problem::forbidden());
                    }
                    let attempt = path_uuid(&id)?;
                    let lock_key = sc.key(&format!("lock:assessment:{attempt}"));
                    let token = match s.cache.lock_acquire(&lock_key, cache::LOCK_TTL).await {
                        Ok(Some(token)) => Some(token),
                        Ok(None) => {
                            return Err(Problem::conflict("this attempt is being submitted"));
                        }
                        Err(_) => None, // Redis down: the database guard below still holds
                    };
                    let result = submit(&s, &sc, attempt).await;
                    if let Some(token) = token {
                        let _ = s.cache.lock_release(&lock_key, &token).await;
                    }
                    result
                }
                .await,
            )
        })
        .boxed();
    instrument(s, openapi::ATTEMPT_SUBMIT, f)
}

/// status, max score, passing %, question ids, answered, correct, score, seconds.
type SubmitRow = (i32, i32, i32, String, i64, i64, i64, i64);

async fn submit(s: &Ctx, sc: &Scope, attempt: Uuid) -> Result<Response, Problem> {
    let mut conn = s.pools.acquire(&sc.tenant).await.map_err(pool_problem)?;
    let (mut tx, student) = begin_as_student(&mut conn, sc).await?;
    let row: Option<SubmitRow> = sqlx::query_as(
        "SELECT sa.status, sa.max_score, a.passing_score_percentage, a.question_ids, \
         (SELECT count(*) FROM student_responses r WHERE r.student_assessment_id = sa.id), \
         (SELECT count(*) FROM student_responses r WHERE r.student_assessment_id = sa.id AND r.is_correct), \
         (SELECT coalesce(sum(points_earned), 0) FROM student_responses r WHERE r.student_assessment_id = sa.id), \
         (SELECT coalesce(sum(time_spent_seconds), 0) FROM student_responses r WHERE r.student_assessment_id = sa.id) \
         FROM student_assessments sa JOIN assessments a ON a.id = sa.assessment_id \
         WHERE sa.id = $1 AND sa.student_id = $2",
    )
    .bind(attempt)
    .bind(student)
    .fetch_optional(&mut *tx)
    .await
    .map_err(db_problem)?;
    let (status, max_score, passing, qids, answered, correct, score, secs) =
        row.ok_or_else(Problem::not_found)?;
    if status == 2 {
        return Err(Problem::conflict("the attempt was already submitted"));
    }
    let questions = serde_json::from_str::<Vec<Uuid>>(&qids)
        .map(|v| v.len() as i64)
        .unwrap_or(0);
    let incorrect = answered - correct;
    let skipped = (questions - answered).max(0);
    let passed = if max_score > 0 {
        score * 100 >= i64::from(max_score) * i64::from(passing)
    } else {
        passing == 0
    };
    let xp = xp_for(correct, passed);
    let updated: Option<Value> = sqlx::query_scalar(
        "UPDATE student_assessments SET status = 2, completed_at = now(), score = $3, passed = $4, \
         correct_answers = $5, incorrect_answers = $6, skipped_questions = $7, xp_earned = $8, \
         time_spent_seconds = $9, updated_at = now() \
         WHERE id = $1 AND student_id = $2 AND status <> 2 RETURNING to_jsonb(student_assessments.*)",
    )
    .bind(attempt)
    .bind(student)
    .bind(score as i32)
    .bind(passed)
    .bind(correct as i32)
    .bind(incorrect as i32)
    .bind(skipped as i32)
    .bind(xp as i32)
    .bind(secs.min(i64::from(i32::MAX)) as i32)
    .fetch_optional(&mut *tx)
    .await
    .map_err(db_problem)?;
    let Some(updated) = updated else {
        return Err(Problem::conflict("the attempt was already submitted"));
    };
    let progress: Value = sqlx::query_scalar(
        "UPDATE students SET xp_points = xp_points + $2, level = 1 + (xp_points + $2) / 100, \
         daily_streak = CASE WHEN last_activity_date = current_date THEN greatest(daily_streak, 1) \
                             WHEN last_activity_date = current_date - 1 THEN daily_streak + 1 ELSE 1 END, \
         last_activity_date = current_date, updated_at = now() WHERE id = $1 \
         RETURNING jsonb_build_object('xp_points', xp_points, 'level', level, 'daily_streak', daily_streak)",
    )
    .bind(student)
    .bind(xp as i32)
    .fetch_one(&mut *tx)
    .await
    .map_err(db_problem)?;
    tx.commit().await.map_err(db_problem)?;
    s.cache
        .invalidate(&[sc.key(&format!("student:{student}:progress"))])
        .await;
    Ok(json_reply(
        StatusCode::OK,
        &json!({"attempt": updated, "student": progress}),
    ))
}

/// `GET /v1/tenants/{tenant}/attempts/{id}`: an attempt with its responses. Students see
/// their own; teachers, school admins and admins any in the tenant.
pub fn attempt_get(s: &Ctx) -> BoxedFilter<(Response,)> {
    let f = warp::path!("v1" / "tenants" / String / "attempts" / String)
        .and(warp::get())
        .and(principal(s))
        .and(if_none_match())
        .and(with(s))
        .then(|t: String, id: String, who: Who, inm: Option<String>, s: Ctx| async move {
            reply(
                async {
                    let sc = scope(&s, who, &t)?;
                    if !(sc.access.reads_all() || sc.access.is_student()) {
                        return Err(Problem::forbidden());
                    }
                    let id = path_uuid(&id)?;
                    let only_user = sc.access.is_student().then(|| sc.p.user_id.to_string());
                    let doc = fetch_doc(
                        &s,
                        &sc,
                        scoped!(
                            "SELECT to_jsonb(sa) || jsonb_build_object('responses', coalesce((SELECT \
                               jsonb_agg(to_jsonb(r) ORDER BY r.question_order) FROM student_responses r \
                               WHERE r.student_assessment_id = sa.id), '[]'::jsonb)) AS doc \
                             FROM student_assessments sa WHERE sa.id = $3::uuid \
                             AND ($4::uuid IS NULL OR sa.student_id IN \
                               (SELECT id FROM students WHERE user_id = $4::uuid))"
                        ),
                        &[json!(id.to_string()), only_user.map(Value::String).unwrap_or(Value::Null)],
                    )
                    .await?
                    .ok_or_else(Problem::not_found)?;
                    Ok(etagged(doc.to_string(), inm.as_deref()))
                }
                .await,
            )
        })
        .boxed();
    instrument(s, openapi::ATTEMPT_GET, f)
}

fn session_key(p: &Principal) -> String {
    let tenant = match p.school_id {
        Some(id) => id.to_string(),
        None if p.role == crate::auth::UserRole::Student => "selfservice".into(),
        None => "platform".into(),
    };
    format!("edumind:{tenant}:session:{}", p.user_id)
}

/// `PUT|GET|DELETE /v1/session`: the caller's session (`session:{userId}`, 30-minute
/// sliding expiry). PUT stores a JSON object (at most 4 KiB); GET reads it and restarts
/// the 30 minutes; DELETE ends it. Redis down → 503 (sessions live only in Redis).
pub fn session_routes(s: &Ctx) -> BoxedFilter<(Response,)> {
    let put = warp::path!("v1" / "session")
        .and(warp::put())
        .and(principal(s))
        .and(warp::body::content_length_limit(4096))
        .and(warp::body::json::<Value>())
        .and(with(s))
        .then(|who: Who, body: Value, s: Ctx| async move {
            reply(
                async {
                    let p = who.map_err(|_| Problem::unauthorized())?;
                    if !body.is_object() {
                        return Err(Problem::bad_request("a session is a JSON object"));
                    }
                    s.cache
                        .session_put(&session_key(&p), &body.to_string())
                        .await
                        .map_err(|_| Problem::unavailable(2, "session store unavailable"))?;
                    Ok(json_reply(StatusCode::OK, &body))
                }
                .await,
            )
        });
    let get = warp::path!("v1" / "session")
        .and(warp::get())
        .and(principal(s))
        .and(with(s))
        .then(|who: Who, s: Ctx| async move {
            reply(
                async {
                    let p = who.map_err(|_| Problem::unauthorized())?;
                    let v = s
                        .cache
                        .session_touch(&session_key(&p))
                        .await
                        .map_err(|_| Problem::unavailable(2, "session store unavailable"))?
                        .ok_or_else(Problem::not_found)?;
                    let v: Value = serde_json::from_str(&v).map_err(|_| Problem::internal())?;
                    Ok(json_reply(StatusCode::OK, &v))
                }
                .await,
            )
        });
    let delete = warp::path!("v1" / "session")
        .and(warp::delete())
        .and(principal(s))
        .and(with(s))
        .then(|who: Who, s: Ctx| async move {
            reply(
                async {
                    let p = who.map_err(|_| Problem::unauthorized())?;
                    s.cache
                        .session_delete(&session_key(&p))
                        .await
                        .map_err(|_| Problem::unavailable(2, "session store unavailable"))?;
                    Ok(StatusCode::NO_CONTENT.into_response())
                }
                .await,
            )
        });
    instrument(s, openapi::SESSION_PUT, put.boxed())
        .or(instrument(s, openapi::SESSION_GET, get.boxed()))
        .unify()
        .or(instrument(s, openapi::SESSION_DELETE, delete.boxed()))
        .unify()
        .boxed()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WorkflowQuery {
    after: Option<String>,
    limit: Option<i64>,
    status: Option<String>,
}

const WORKFLOW_STATUSES: [&str; 4] = ["Pending", "Running", "Completed", "Failed"];

/// `GET /v1/tenants/{tenant}/workflow-executions?after=&limit=&status=`: orchestration
/// runs, keyset-paginated by `execution_id`. Platform admins only.
pub fn workflows_list(s: &Ctx) -> BoxedFilter<(Response,)> {
    let f = warp::path!("v1" / "tenants" / String / "workflow-executions")
        .and(warp::get())
        .and(warp::query::<WorkflowQuery>())
        .and(principal(s))
        .and(with(s))
        .then(|t: String, q: WorkflowQuery, who: Who, s: Ctx| async move {
            reply(
                async {
                    let sc = scope(&s, who, &t)?;
                    if sc.access != Access::Admin {
                        return Err(Problem::forbidden());
                    }
                    let limit = q.limit.unwrap_or(50);
                    if !(1..=200).contains(&limit) {
                        return Err(Problem::bad_request("limit must be between 1 and 200"));
                    }
                    if q.status.as_deref().is_some_and(|st| !WORKFLOW_STATUSES.contains(&st)) {
                        return Err(Problem::bad_request("status must be Pending, Running, Completed or Failed"));
                    }
                    let doc = fetch_doc(
                        &s,
                        &sc,
                        scoped!(
                            "SELECT coalesce(jsonb_agg(to_jsonb(w) ORDER BY w.execution_id), '[]'::jsonb) AS doc FROM ( \
                             SELECT * FROM workflow_executions WHERE ($3::text IS NULL OR execution_id > $3::text) \
                             AND ($4::text IS NULL OR status = $4::text) ORDER BY execution_id LIMIT $5::int) w"
                        ),
                        &[
                            q.after.map(Value::String).unwrap_or(Value::Null),
                            q.status.map(Value::String).unwrap_or(Value::Null),
                            json!(limit),
                        ],
                    )
                    .await?
                    .unwrap_or_else(|| json!([]));
                    Ok(json_reply(StatusCode::OK, &json!({"items": doc})))
                }
                .await,
            )
        })
        .boxed();
    instrument(s, openapi::WORKFLOWS_LIST, f)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WorkflowBody {
    execution_id: String,
    workflow_name: String,
    status: String,
    workflow_definition_json: String,
    initiated_by: String,
    tags: Option<String>,
}

fn check_len(field: &str, v: &str, max: usize) -> Result<(), Problem> {
    if v.is_empty() || v.chars().count() > max {
        return Err(Problem::bad_request(format!(
            "{field} must be 1..={max} characters"
        )));
    }
    Ok(())
}

/// `POST /v1/tenants/{tenant}/workflow-executions`: records an orchestration run
/// (`tenant_id` is the path's tenant). Platform admins only.
pub fn workflows_create(s: &Ctx) -> BoxedFilter<(Response,)> {
    let f = warp::path!("v1" / "tenants" / String / "workflow-executions")
        .and(warp::post())
        .and(principal(s))
        .and(json_body::<WorkflowBody>(s))
        .and(with(s))
        .then(|t: String, who: Who, b: Result<WorkflowBody, Problem>, s: Ctx| async move {
            reply(
                async {
                    let sc = scope(&s, who, &t)?;
                    let b = b?;
                    if sc.access != Access::Admin {
                        return Err(Problem::forbidden());
                    }
                    check_len("execution_id", &b.execution_id, 100)?;
                    check_len("workflow_name", &b.workflow_name, 200)?;
                    check_len("initiated_by", &b.initiated_by, 100)?;
                    if let Some(tags) = &b.tags {
                        check_len("tags", tags, 500)?;
                    }
                    if !WORKFLOW_STATUSES.contains(&b.status.as_str()) {
                        return Err(Problem::bad_request("status must be Pending, Running, Completed or Failed"));
                    }
                    let mut conn = s.pools.acquire(&sc.tenant).await.map_err(pool_problem)?;
                    let mut tx = begin_scoped(&mut conn, &sc).await?;
                    let doc: Value = sqlx::query_scalar(
                        "INSERT INTO workflow_executions (execution_id, tenant_id, workflow_name, status, \
                         workflow_definition_json, initiated_by, tags) VALUES ($1, $2, $3, $4, $5, $6, $7) \
                         RETURNING to_jsonb(workflow_executions.*)",
                    )
                    .bind(&b.execution_id)
                    .bind(sc.tenant.id.to_string())
                    .bind(&b.workflow_name)
                    .bind(&b.status)
                    .bind(&b.workflow_definition_json)
                    .bind(&b.initiated_by)
                    .bind(&b.tags)
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(db_problem)?;
                    tx.commit().await.map_err(db_problem)?;
                    Ok(json_reply(StatusCode::CREATED, &doc))
                }
                .await,
            )
        })
        .boxed();
    instrument(s, openapi::WORKFLOWS_CREATE, f)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UsersQuery {
    after: Option<Uuid>,
    limit: Option<i64>,
    role: Option<i32>,
}

/// `GET /v1/tenants/{tenant}/users?after=&limit=&role=`: the tenant's users,
/// keyset-paginated by id, filtered on the indexed `role`. Staff and admins.
pub fn users_list(s: &Ctx) -> BoxedFilter<(Response,)> {
    let f = warp::path!("v1" / "tenants" / String / "users")
        .and(warp::get())
        .and(warp::query::<UsersQuery>())
        .and(principal(s))
        .and(if_none_match())
        .and(with(s))
        .then(|t: String, q: UsersQuery, who: Who, inm: Option<String>, s: Ctx| async move {
            reply(
                async {
                    let sc = scope(&s, who, &t)?;
                    if !sc.access.reads_all() {
                        return Err(Problem::forbidden());
                    }
                    let limit = q.limit.unwrap_or(50);
                    if !(1..=200).contains(&limit) {
                        return Err(Problem::bad_request("limit must be between 1 and 200"));
                    }
                    if q.role.is_some_and(|r| !(0..=5).contains(&r)) {
                        return Err(Problem::bad_request("role must be 0..=5"));
                    }
                    let doc = fetch_doc(
                        &s,
                        &sc,
                        scoped!(
                            "SELECT coalesce(jsonb_agg(to_jsonb(t) ORDER BY t.id), '[]'::jsonb) AS doc FROM ( \
                             SELECT * FROM users u WHERE ($3::uuid IS NULL OR u.id > $3::uuid) \
                             AND ($4::int IS NULL OR u.role = $4::int) ORDER BY u.id LIMIT $5::int) t"
                        ),
                        &[
                            q.after.map(|a| json!(a.to_string())).unwrap_or(Value::Null),
                            q.role.map(|r| json!(r)).unwrap_or(Value::Null),
                            json!(limit),
                        ],
                    )
                    .await?
                    .unwrap_or_else(|| json!([]));
                    let items = doc.as_array().cloned().unwrap_or_default();
                    let next = (items.len() as i64 == limit)
                        .then(|| items.last().and_then(|l| l.get("id")).cloned())
                        .flatten();
                    Ok(etagged(json!({"items": items, "next_after": next}).to_string(), inm.as_deref()))
                }
                .await,
            )
        })
        .boxed();
    instrument(s, openapi::USERS_LIST, f)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewUser {
    email: String,
    full_name: String,
    role: i32,
    external_id: Option<String>,
    #[serde(default = "yes")]
    is_active: bool,
}

fn yes() -> bool {
    true
}

impl NewUser {
    /// Every field against its column (spec 2.2 `users`), and the roles a school admin
    /// may hand out (not the platform roles).
    fn validate(&self, access: Access) -> Result<(), Problem> {
        check_len("email", &self.email, 255)?;
        let at = self.email.find('@');
        if at.is_none_or(|i| i == 0 || i + 1 == self.email.len())
            || self.email.contains(char::is_whitespace)
        {
            return Err(Problem::bad_request("email is not an address"));
        }
        check_len("full_name", &self.full_name, 255)?;
        if let Some(x) = &self.external_id {
            check_len("external_id", x, 255)?;
        }
        let max_role = if access == Access::Admin { 5 } else { 2 };
        if !(0..=max_role).contains(&self.role) {
            return Err(Problem::bad_request(format!("role must be 0..={max_role}")));
        }
        Ok(())
    }
}

/// `POST /v1/tenants/{tenant}/users`: creates a user of this tenant (school admins and
/// admins); 409 when the email or external id is taken.
pub fn users_create(s: &Ctx) -> BoxedFilter<(Response,)> {
    let f = warp::path!("v1" / "tenants" / String / "users")
        .and(warp::post())
        .and(principal(s))
        .and(json_body::<NewUser>(s))
        .and(with(s))
        .then(|t: String, who: Who, body: Result<NewUser, Problem>, s: Ctx| async move {
            reply(
                async {
                    let sc = scope(&s, who, &t)?;
                    if !sc.access.manages_school() {
                        return Err(Problem::forbidden());
                    }
                    let u = body?;
                    u.validate(sc.access)?;
                    let mut conn = s.pools.acquire(&sc.tenant).await.map_err(pool_problem)?;
                    let mut tx = begin_scoped(&mut conn, &sc).await?;
                    let doc: Value = sqlx::query_scalar(
                        "INSERT INTO users (id, email, full_name, role, school_id, is_active, external_id) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING to_jsonb(users.*)",
                    )
                    .bind(Uuid::new_v4())
                    .bind(&u.email)
                    .bind(&u.full_name)
                    .bind(u.role)
                    .bind(sc.school_id())
                    .bind(u.is_active)
                    .bind(&u.external_id)
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(db_problem)?;
                    tx.commit().await.map_err(db_problem)?;
                    Ok(json_reply(StatusCode::CREATED, &doc))
                }
                .await,
            )
        })
        .boxed();
    instrument(s, openapi::USERS_CREATE, f)
}

// ------------------------------------------------------------------------------------
// orchestration: circuit breakers, routing decisions, routing statistics (platform admins)
// ------------------------------------------------------------------------------------

fn check_opt(field: &str, v: &Option<String>, max: usize) -> Result<(), Problem> {
    match v {
        Some(v) => check_len(field, v, max),
        None => Ok(()),
    }
}

/// An agent key from the path (`varchar(200)`): URL-safe characters only, so the raw
/// segment is the key itself (no percent-decoding ambiguity).
fn path_agent_key(raw: &str) -> Result<String, Problem> {
    check_len("agent_key", raw, 200)?;
    if !raw
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "-_.:@~".contains(c))
    {
        return Err(Problem::bad_request(
            "agent_key may only hold letters, digits and - _ . : @ ~",
        ));
    }
    Ok(raw.to_owned())
}

fn page_limit(limit: Option<i64>) -> Result<i64, Problem> {
    let limit = limit.unwrap_or(50);
    if !(1..=200).contains(&limit) {
        return Err(Problem::bad_request("limit must be between 1 and 200"));
    }
    Ok(limit)
}

/// `{"items": [...], "next_after": <key of the last item when the page is full>}`.
fn page(doc: Option<Value>, limit: i64, key: &str) -> Value {
    let items = doc.and_then(|d| d.as_array().cloned()).unwrap_or_default();
    let next = (items.len() as i64 == limit)
        .then(|| items.last().and_then(|l| l.get(key)).cloned())
        .flatten();
    json!({"items": items, "next_after": next})
}

fn admin_scope(s: &Ctx, who: Who, t: &str) -> Result<Scope, Problem> {
    let sc = scope(s, who, t)?;
    if sc.access != Access::Admin {
        return Err(Problem::forbidden());
    }
    Ok(sc)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyQuery {
    after: Option<String>,
    limit: Option<i64>,
}

const BREAKER_STATES: [&str; 3] = ["Closed", "Open", "HalfOpen"];

/// `GET /v1/tenants/{tenant}/circuit-breakers?after=&limit=`: circuit breaker states,
/// keyset-paginated by `agent_key`. Platform admins only.
pub fn breakers_list(s: &Ctx) -> BoxedFilter<(Response,)> {
    let f = warp::path!("v1" / "tenants" / String / "circuit-breakers")
        .and(warp::get())
        .and(warp::query::<KeyQuery>())
        .and(principal(s))
        .and(if_none_match())
        .and(with(s))
        .then(|t: String, q: KeyQuery, who: Who, inm: Option<String>, s: Ctx| async move {
            reply(
                async {
                    let sc = admin_scope(&s, who, &t)?;
                    let limit = page_limit(q.limit)?;
                    let doc = fetch_doc(
                        &s,
                        &sc,
                        scoped!(
                            "SELECT coalesce(jsonb_agg(to_jsonb(c) ORDER BY c.agent_key), '[]'::jsonb) AS doc FROM ( \
                             SELECT * FROM circuit_breaker_states WHERE ($3::text IS NULL OR agent_key > $3::text) \
                             ORDER BY agent_key LIMIT $4::int) c"
                        ),
                        &[q.after.map(Value::String).unwrap_or(Value::Null), json!(limit)],
                    )
                    .await?;
                    Ok(etagged(page(doc, limit, "agent_key").to_string(), inm.as_deref()))
                }
                .await,
            )
        })
        .boxed();
    instrument(s, openapi::BREAKERS_LIST, f)
}

/// `GET /v1/tenants/{tenant}/circuit-breakers/{agent_key}`. Platform admins only.
pub fn breakers_get(s: &Ctx) -> BoxedFilter<(Response,)> {
    let f = warp::path!("v1" / "tenants" / String / "circuit-breakers" / String)
        .and(warp::get())
        .and(principal(s))
        .and(if_none_match())
        .and(with(s))
        .then(|t: String, k: String, who: Who, inm: Option<String>, s: Ctx| async move {
            reply(
                async {
                    let sc = admin_scope(&s, who, &t)?;
                    let k = path_agent_key(&k)?;
                    let doc = fetch_doc(
                        &s,
                        &sc,
                        scoped!("SELECT to_jsonb(c) AS doc FROM circuit_breaker_states c WHERE c.agent_key = $3::text"),
                        &[Value::String(k)],
                    )
                    .await?
                    .ok_or_else(Problem::not_found)?;
                    Ok(etagged(doc.to_string(), inm.as_deref()))
                }
                .await,
            )
        })
        .boxed();
    instrument(s, openapi::BREAKERS_GET, f)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BreakerBody {
    state: String,
    #[serde(default)]
    failure_count: i32,
    /// RFC 3339 timestamp.
    last_failure_at: Option<String>,
}

/// `PUT /v1/tenants/{tenant}/circuit-breakers/{agent_key}`: creates or replaces the state
/// (`tenant_id` is the path's tenant). Platform admins only.
pub fn breakers_put(s: &Ctx) -> BoxedFilter<(Response,)> {
    let f = warp::path!("v1" / "tenants" / String / "circuit-breakers" / String)
        .and(warp::put())
        .and(principal(s))
        .and(json_body::<BreakerBody>(s))
        .and(with(s))
        .then(|t: String, k: String, who: Who, b: Result<BreakerBody, Problem>, s: Ctx| async move {
            reply(
                async {
                    let sc = admin_scope(&s, who, &t)?;
                    let b = b?;
                    let k = path_agent_key(&k)?;
                    if !BREAKER_STATES.contains(&b.state.as_str()) {
                        return Err(Problem::bad_request("state must be Closed, Open or HalfOpen"));
                    }
                    if b.failure_count < 0 {
                        return Err(Problem::bad_request("failure_count must be >= 0"));
                    }
                    if b
                        .last_failure_at
                        .as_deref()
                        .is_some_and(|ts| chrono::DateTime::parse_from_rfc3339(ts).is_err())
                    {
                        return Err(Problem::bad_request("last_failure_at must be an RFC 3339 timestamp"));
                    }
                    let mut conn = s.pools.acquire(&sc.tenant).await.map_err(pool_problem)?;
                    let mut tx = begin_scoped(&mut conn, &sc).await?;
                    let doc: Value = sqlx::query_scalar(
                        "INSERT INTO circuit_breaker_states (agent_key, tenant_id, state, failure_count, \
                         last_failure_at, last_updated) VALUES ($1, $2, $3, $4, $5::timestamptz, now()) \
                         ON CONFLICT (agent_key) DO UPDATE SET tenant_id = EXCLUDED.tenant_id, \
                         state = EXCLUDED.state, failure_count = EXCLUDED.failure_count, \
                         last_failure_at = EXCLUDED.last_failure_at, last_updated = now() \
                         RETURNING to_jsonb(circuit_breaker_states.*)",
                    )
                    .bind(&k)
                    .bind(sc.tenant.id.to_string())
                    .bind(&b.state)
                    .bind(b.failure_count)
                    .bind(&b.last_failure_at)
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(db_problem)?;
                    tx.commit().await.map_err(db_problem)?;
                    Ok(json_reply(StatusCode::OK, &doc))
                }
                .await,
            )
        })
        .boxed();
    instrument(s, openapi::BREAKERS_PUT, f)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DecisionsQuery {
    after: Option<Uuid>,
    limit: Option<i64>,
    tenant_id: Option<String>,
    task_id: Option<String>,
}

/// `GET /v1/tenants/{tenant}/routing-decisions?after=&limit=&tenant_id=&task_id=`:
/// routing decisions, keyset-paginated by id. Platform admins only.
pub fn decisions_list(s: &Ctx) -> BoxedFilter<(Response,)> {
    let f = warp::path!("v1" / "tenants" / String / "routing-decisions")
        .and(warp::get())
        .and(warp::query::<DecisionsQuery>())
        .and(principal(s))
        .and(if_none_match())
        .and(with(s))
        .then(|t: String, q: DecisionsQuery, who: Who, inm: Option<String>, s: Ctx| async move {
            reply(
                async {
                    let sc = admin_scope(&s, who, &t)?;
                    let limit = page_limit(q.limit)?;
                    check_opt("tenant_id", &q.tenant_id, 100)?;
                    check_opt("task_id", &q.task_id, 100)?;
                    let doc = fetch_doc(
                        &s,
                        &sc,
                        scoped!(
                            "SELECT coalesce(jsonb_agg(to_jsonb(d) ORDER BY d.id), '[]'::jsonb) AS doc FROM ( \
                             SELECT * FROM routing_decisions WHERE ($3::uuid IS NULL OR id > $3::uuid) \
                             AND ($4::text IS NULL OR tenant_id = $4::text) \
                             AND ($5::text IS NULL OR task_id = $5::text) ORDER BY id LIMIT $6::int) d"
                        ),
                        &[
                            q.after.map(|a| json!(a.to_string())).unwrap_or(Value::Null),
                            q.tenant_id.map(Value::String).unwrap_or(Value::Null),
                            q.task_id.map(Value::String).unwrap_or(Value::Null),
                            json!(limit),
                        ],
                    )
                    .await?;
                    Ok(etagged(page(doc, limit, "id").to_string(), inm.as_deref()))
                }
                .await,
            )
        })
        .boxed();
    instrument(s, openapi::DECISIONS_LIST, f)
}

/// `GET /v1/tenants/{tenant}/routing-decisions/{id}`. Platform admins only.
pub fn decisions_get(s: &Ctx) -> BoxedFilter<(Response,)> {
    let f = warp::path!("v1" / "tenants" / String / "routing-decisions" / String)
        .and(warp::get())
        .and(principal(s))
        .and(if_none_match())
        .and(with(s))
        .then(|t: String, id: String, who: Who, inm: Option<String>, s: Ctx| async move {
            reply(
                async {
                    let sc = admin_scope(&s, who, &t)?;
                    let id = path_uuid(&id)?;
                    let doc = fetch_doc(
                        &s,
                        &sc,
                        scoped!("SELECT to_jsonb(d) AS doc FROM routing_decisions d WHERE d.id = $3::uuid"),
                        &[json!(id.to_string())],
                    )
                    .await?
                    .ok_or_else(Problem::not_found)?;
                    Ok(etagged(doc.to_string(), inm.as_deref()))
                }
                .await,
            )
        })
        .boxed();
    instrument(s, openapi::DECISIONS_GET, f)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DecisionBody {
    task_id: String,
    task_type: String,
    required_capability: String,
    selected_agent: String,
    reason: String,
    routing_score: f64,
    workflow_execution_id: Option<String>,
    workflow_step_id: Option<String>,
}

/// `POST /v1/tenants/{tenant}/routing-decisions`: records a routing decision (new id,
/// `tenant_id` is the path's tenant). Platform admins only.
pub fn decisions_create(s: &Ctx) -> BoxedFilter<(Response,)> {
    let f = warp::path!("v1" / "tenants" / String / "routing-decisions")
        .and(warp::post())
        .and(principal(s))
        .and(json_body::<DecisionBody>(s))
        .and(with(s))
        .then(|t: String, who: Who, b: Result<DecisionBody, Problem>, s: Ctx| async move {
            reply(
                async {
                    let sc = admin_scope(&s, who, &t)?;
                    let b = b?;
                    check_len("task_id", &b.task_id, 100)?;
                    check_len("task_type", &b.task_type, 100)?;
                    check_len("required_capability", &b.required_capability, 100)?;
                    check_len("selected_agent", &b.selected_agent, 200)?;
                    check_len("reason", &b.reason, 8000)?;
                    check_opt("workflow_execution_id", &b.workflow_execution_id, 100)?;
                    check_opt("workflow_step_id", &b.workflow_step_id, 100)?;
                    if !b.routing_score.is_finite() {
                        return Err(Problem::bad_request("routing_score must be a finite number"));
                    }
                    let mut conn = s.pools.acquire(&sc.tenant).await.map_err(pool_problem)?;
                    let mut tx = begin_scoped(&mut conn, &sc).await?;
                    let doc: Value = sqlx::query_scalar(
                        "INSERT INTO routing_decisions (id, tenant_id, task_id, task_type, required_capability, \
                         selected_agent, reason, routing_score, workflow_execution_id, workflow_step_id) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) RETURNING to_jsonb(routing_decisions.*)",
                    )
                    .bind(Uuid::new_v4())
                    .bind(sc.tenant.id.to_string())
                    .bind(&b.task_id)
                    .bind(&b.task_type)
                    .bind(&b.required_capability)
                    .bind(&b.selected_agent)
                    .bind(&b.reason)
                    .bind(b.routing_score)
                    .bind(&b.workflow_execution_id)
                    .bind(&b.workflow_step_id)
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(db_problem)?;
                    tx.commit().await.map_err(db_problem)?;
                    Ok(json_reply(StatusCode::CREATED, &doc))
                }
                .await,
            )
        })
        .boxed();
    instrument(s, openapi::DECISIONS_CREATE, f)
}

/// `GET /v1/tenants/{tenant}/routing-statistics?after=&limit=`: per-agent statistics,
/// keyset-paginated by `agent_key`. Platform admins only.
pub fn stats_list(s: &Ctx) -> BoxedFilter<(Response,)> {
    let f = warp::path!("v1" / "tenants" / String / "routing-statistics")
        .and(warp::get())
        .and(warp::query::<KeyQuery>())
        .and(principal(s))
        .and(if_none_match())
        .and(with(s))
        .then(|t: String, q: KeyQuery, who: Who, inm: Option<String>, s: Ctx| async move {
            reply(
                async {
                    let sc = admin_scope(&s, who, &t)?;
                    let limit = page_limit(q.limit)?;
                    let doc = fetch_doc(
                        &s,
                        &sc,
                        scoped!(
                            "SELECT coalesce(jsonb_agg(to_jsonb(r) ORDER BY r.agent_key), '[]'::jsonb) AS doc FROM ( \
                             SELECT * FROM routing_statistics WHERE ($3::text IS NULL OR agent_key > $3::text) \
                             ORDER BY agent_key LIMIT $4::int) r"
                        ),
                        &[q.after.map(Value::String).unwrap_or(Value::Null), json!(limit)],
                    )
                    .await?;
                    Ok(etagged(page(doc, limit, "agent_key").to_string(), inm.as_deref()))
                }
                .await,
            )
        })
        .boxed();
    instrument(s, openapi::STATS_LIST, f)
}

/// `GET /v1/tenants/{tenant}/routing-statistics/{agent_key}`. Platform admins only.
pub fn stats_get(s: &Ctx) -> BoxedFilter<(Response,)> {
    let f = warp::path!("v1" / "tenants" / String / "routing-statistics" / String)
        .and(warp::get())
        .and(principal(s))
        .and(if_none_match())
        .and(with(s))
        .then(|t: String, k: String, who: Who, inm: Option<String>, s: Ctx| async move {
            reply(
                async {
                    let sc = admin_scope(&s, who, &t)?;
                    let k = path_agent_key(&k)?;
                    let doc = fetch_doc(
                        &s,
                        &sc,
                        scoped!("SELECT to_jsonb(r) AS doc FROM routing_statistics r WHERE r.agent_key = $3::text"),
                        &[Value::String(k)],
                    )
                    .await?
                    .ok_or_else(Problem::not_found)?;
                    Ok(etagged(doc.to_string(), inm.as_deref()))
                }
                .await,
            )
        })
        .boxed();
    instrument(s, openapi::STATS_GET, f)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StatsBody {
    total_tasks: i32,
    successful_tasks: i32,
    failed_tasks: i32,
    average_duration_ms: i32,
    /// Fraction of successful tasks, 0..=1.
    success_rate: f64,
}

/// `PUT /v1/tenants/{tenant}/routing-statistics/{agent_key}`: creates or replaces an
/// agent's statistics (`tenant_id` is the path's tenant). Platform admins only.
pub fn stats_put(s: &Ctx) -> BoxedFilter<(Response,)> {
    let f = warp::path!("v1" / "tenants" / String / "routing-statistics" / String)
        .and(warp::put())
        .and(principal(s))
        .and(json_body::<StatsBody>(s))
        .and(with(s))
        .then(|t: String, k: String, who: Who, b: Result<StatsBody, Problem>, s: Ctx| async move {
            reply(
                async {
                    let sc = admin_scope(&s, who, &t)?;
                    let b = b?;
                    let k = path_agent_key(&k)?;
                    if b.total_tasks < 0 || b.successful_tasks < 0 || b.failed_tasks < 0 || b.average_duration_ms < 0 {
                        return Err(Problem::bad_request("task counts and average_duration_ms must be >= 0"));
                    }
                    if !(b.success_rate.is_finite() && (0.0..=1.0).contains(&b.success_rate)) {
                        return Err(Problem::bad_request("success_rate must be between 0 and 1"));
                    }
                    let mut conn = s.pools.acquire(&sc.tenant).await.map_err(pool_problem)?;
                    let mut tx = begin_scoped(&mut conn, &sc).await?;
                    let doc: Value = sqlx::query_scalar(
                        "INSERT INTO routing_statistics (agent_key, tenant_id, total_tasks, successful_tasks, \
                         failed_tasks, average_duration_ms, success_rate, last_updated) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7, now()) \
                         ON CONFLICT (agent_key) DO UPDATE SET tenant_id = EXCLUDED.tenant_id, \
                         total_tasks = EXCLUDED.total_tasks, successful_tasks = EXCLUDED.successful_tasks, \
                         failed_tasks = EXCLUDED.failed_tasks, average_duration_ms = EXCLUDED.average_duration_ms, \
                         success_rate = EXCLUDED.success_rate, last_updated = now() \
                         RETURNING to_jsonb(routing_statistics.*)",
                    )
                    .bind(&k)
                    .bind(sc.tenant.id.to_string())
                    .bind(b.total_tasks)
                    .bind(b.successful_tasks)
                    .bind(b.failed_tasks)
                    .bind(b.average_duration_ms)
                    .bind(b.success_rate)
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(db_problem)?;
                    tx.commit().await.map_err(db_problem)?;
                    Ok(json_reply(StatusCode::OK, &doc))
                }
                .await,
            )
        })
        .boxed();
    instrument(s, openapi::STATS_PUT, f)
}

// ------------------------------------------------------------------------------------
// content and class writes (upsert by id; content is the global-content sync path)
// ------------------------------------------------------------------------------------

fn check_max(field: &str, v: &str, max: usize) -> Result<(), Problem> {
    if v.chars().count() > max {
        return Err(Problem::bad_request(format!(
            "{field} must be at most {max} characters"
        )));
    }
    Ok(())
}

fn check_grade(grade_level: i32) -> Result<(), Problem> {
    if !(6..=12).contains(&grade_level) {
        return Err(Problem::bad_request("grade_level must be 6..=12"));
    }
    Ok(())
}

fn json_text<T: serde::Serialize>(v: &T) -> Result<String, Problem> {
    serde_json::to_string(v).map_err(|_| Problem::internal())
}

fn content_scope(s: &Ctx, who: Who, t: &str) -> Result<Scope, Problem> {
    let sc = scope(s, who, t)?;
    if !sc.access.writes_content() {
        return Err(Problem::forbidden());
    }
    Ok(sc)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CourseBody {
    name: String,
    code: String,
    subject: i32,
    grade_level: i32,
    #[serde(default)]
    description: String,
    #[serde(default)]
    learning_objectives: Vec<String>,
    #[serde(default)]
    topics: Vec<String>,
    #[serde(default = "yes")]
    is_active: bool,
    course_admin_id: Option<Uuid>,
    board_name: Option<String>,
    module_name: Option<String>,
    #[serde(default)]
    metadata: serde_json::Map<String, Value>,
}

/// `PUT /v1/tenants/{tenant}/courses/{id}`: creates or replaces a course (global content,
/// same id in every tenant); invalidates `course:{id}:questions`. Content writers.
pub fn course_put(s: &Ctx) -> BoxedFilter<(Response,)> {
    let f = warp::path!("v1" / "tenants" / String / "courses" / String)
        .and(warp::put())
        .and(principal(s))
        .and(json_body::<CourseBody>(s))
        .and(with(s))
        .then(|t: String, id: String, who: Who, b: Result<CourseBody, Problem>, s: Ctx| async move {
            reply(
                async {
                    let sc = content_scope(&s, who, &t)?;
                    let b = b?;
                    let id = path_uuid(&id)?;
                    check_len("name", &b.name, 255)?;
                    check_len("code", &b.code, 50)?;
                    check_max("description", &b.description, 2000)?;
                    check_grade(b.grade_level)?;
                    check_opt("board_name", &b.board_name, 100)?;
                    check_opt("module_name", &b.module_name, 200)?;
                    let mut conn = s.pools.acquire(&sc.tenant).await.map_err(pool_problem)?;
                    let mut tx = begin_scoped(&mut conn, &sc).await?;
                    let doc: Value = sqlx::query_scalar(
                        "INSERT INTO courses (id, name, code, subject, grade_level, description, learning_objectives, \
                         topics, is_active, course_admin_id, board_name, module_name, metadata) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) \
                         ON CONFLICT (id) DO UPDATE SET name = EXCLUDED.name, code = EXCLUDED.code, \
                         subject = EXCLUDED.subject, grade_level = EXCLUDED.grade_level, \
                         description = EXCLUDED.description, learning_objectives = EXCLUDED.learning_objectives, \
                         topics = EXCLUDED.topics, is_active = EXCLUDED.is_active, \
                         course_admin_id = EXCLUDED.course_admin_id, board_name = EXCLUDED.board_name, \
                         module_name = EXCLUDED.module_name, metadata = EXCLUDED.metadata, updated_at = now() \
                         RETURNING to_jsonb(courses.*)",
                    )
                    .bind(id)
                    .bind(&b.name)
                    .bind(&b.code)
                    .bind(b.subject)
                    .bind(b.grade_level)
                    .bind(&b.description)
                    .bind(json_text(&b.learning_objectives)?)
                    .bind(json_text(&b.topics)?)
                    .bind(b.is_active)
                    .bind(b.course_admin_id)
                    .bind(&b.board_name)
                    .bind(&b.module_name)
                    .bind(Value::Object(b.metadata))
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(db_problem)?;
                    tx.commit().await.map_err(db_problem)?;
                    // A missing course is cached as "not found" too.
                    s.cache
                        .invalidate(&[sc.key(&format!("course:{id}:questions"))])
                        .await;
                    Ok(json_reply(StatusCode::OK, &doc))
                }
                .await,
            )
        })
        .boxed();
    instrument(s, openapi::COURSE_PUT, f)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct QuestionBody {
    course_id: Uuid,
    question_text: String,
    question_type: i32,
    subject: i32,
    grade_level: i32,
    difficulty_level: i32,
    #[serde(default)]
    topics: Vec<String>,
    #[serde(default)]
    learning_objectives: Vec<String>,
    answer_options: Option<String>,
    correct_answer: String,
    explanation: Option<String>,
    #[serde(default = "one")]
    points: i32,
    irt_discrimination: Option<f64>,
    irt_difficulty: Option<f64>,
    irt_guessing: Option<f64>,
    #[serde(default = "yes")]
    is_active: bool,
    #[serde(default)]
    is_ai_generated: bool,
    content_hash: Option<String>,
    board_name: Option<String>,
    module_name: Option<String>,
    #[serde(default)]
    metadata: serde_json::Map<String, Value>,
}

fn one() -> i32 {
    1
}

/// `PUT /v1/tenants/{tenant}/questions/{id}`: creates or replaces a question; invalidates
/// the question list of its course (and of its previous course when it moved).
pub fn question_put(s: &Ctx) -> BoxedFilter<(Response,)> {
    let f = warp::path!("v1" / "tenants" / String / "questions" / String)
        .and(warp::put())
        .and(principal(s))
        .and(json_body::<QuestionBody>(s))
        .and(with(s))
        .then(|t: String, id: String, who: Who, b: Result<QuestionBody, Problem>, s: Ctx| async move {
            reply(
                async {
                    let sc = content_scope(&s, who, &t)?;
                    let b = b?;
                    let id = path_uuid(&id)?;
                    check_len("question_text", &b.question_text, 4000)?;
                    check_len("correct_answer", &b.correct_answer, 4000)?;
                    check_opt("answer_options", &b.answer_options, 4000)?;
                    check_opt("explanation", &b.explanation, 4000)?;
                    check_opt("content_hash", &b.content_hash, 64)?;
                    check_opt("board_name", &b.board_name, 100)?;
                    check_opt("module_name", &b.module_name, 200)?;
                    check_grade(b.grade_level)?;
                    if b.points < 0 {
                        return Err(Problem::bad_request("points must be >= 0"));
                    }
                    if [b.irt_discrimination, b.irt_difficulty, b.irt_guessing]
                        .iter()
                        .flatten()
                        .any(|x| !x.is_finite())
                    {
                        return Err(Problem::bad_request("IRT parameters must be finite numbers"));
                    }
                    let mut conn = s.pools.acquire(&sc.tenant).await.map_err(pool_problem)?;
                    let mut tx = begin_scoped(&mut conn, &sc).await?;
                    let before: Option<Uuid> =
                        sqlx::query_scalar("SELECT course_id FROM questions WHERE id = $1 FOR UPDATE")
                            .bind(id)
                            .fetch_optional(&mut *tx)
                            .await
                            .map_err(db_problem)?;
                    let doc: Value = sqlx::query_scalar(
                        "INSERT INTO questions (id, course_id, question_text, question_type, subject, grade_level, \
                         difficulty_level, topics, learning_objectives, answer_options, correct_answer, explanation, \
                         points, irt_discrimination, irt_difficulty, irt_guessing, is_active, is_ai_generated, \
                         content_hash, board_name, module_name, metadata) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, \
                         $19, $20, $21, $22) \
                         ON CONFLICT (id) DO UPDATE SET course_id = EXCLUDED.course_id, \
                         question_text = EXCLUDED.question_text, question_type = EXCLUDED.question_type, \
                         subject = EXCLUDED.subject, grade_level = EXCLUDED.grade_level, \
                         difficulty_level = EXCLUDED.difficulty_level, topics = EXCLUDED.topics, \
                         learning_objectives = EXCLUDED.learning_objectives, answer_options = EXCLUDED.answer_options, \
                         correct_answer = EXCLUDED.correct_answer, explanation = EXCLUDED.explanation, \
                         points = EXCLUDED.points, irt_discrimination = EXCLUDED.irt_discrimination, \
                         irt_difficulty = EXCLUDED.irt_difficulty, irt_guessing = EXCLUDED.irt_guessing, \
                         is_active = EXCLUDED.is_active, is_ai_generated = EXCLUDED.is_ai_generated, \
                         content_hash = EXCLUDED.content_hash, board_name = EXCLUDED.board_name, \
                         module_name = EXCLUDED.module_name, metadata = EXCLUDED.metadata, updated_at = now() \
                         RETURNING to_jsonb(questions.*)",
                    )
                    .bind(id)
                    .bind(b.course_id)
                    .bind(&b.question_text)
                    .bind(b.question_type)
                    .bind(b.subject)
                    .bind(b.grade_level)
                    .bind(b.difficulty_level)
                    .bind(json_text(&b.topics)?)
                    .bind(json_text(&b.learning_objectives)?)
                    .bind(&b.answer_options)
                    .bind(&b.correct_answer)
                    .bind(&b.explanation)
                    .bind(b.points)
                    .bind(b.irt_discrimination)
                    .bind(b.irt_difficulty)
                    .bind(b.irt_guessing)
                    .bind(b.is_active)
                    .bind(b.is_ai_generated)
                    .bind(&b.content_hash)
                    .bind(&b.board_name)
                    .bind(&b.module_name)
                    .bind(Value::Object(b.metadata))
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(db_problem)?;
                    tx.commit().await.map_err(db_problem)?;
                    let mut keys = vec![sc.key(&format!("course:{}:questions", b.course_id))];
                    if let Some(old) = before.filter(|old| *old != b.course_id) {
                        keys.push(sc.key(&format!("course:{old}:questions")));
                    }
                    s.cache.invalidate(&keys).await;
                    Ok(json_reply(StatusCode::OK, &doc))
                }
                .await,
            )
        })
        .boxed();
    instrument(s, openapi::QUESTION_PUT, f)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AssessmentBody {
    course_id: Uuid,
    school_id: Option<Uuid>,
    title: String,
    #[serde(default)]
    description: String,
    assessment_type: i32,
    subject: i32,
    grade_level: i32,
    #[serde(default)]
    topics: Vec<String>,
    #[serde(default)]
    question_ids: Vec<Uuid>,
    #[serde(default)]
    total_points: i32,
    time_limit_minutes: Option<i32>,
    #[serde(default = "seventy")]
    passing_score_percentage: i32,
    #[serde(default = "yes")]
    is_active: bool,
}

fn seventy() -> i32 {
    70
}

/// `PUT /v1/tenants/{tenant}/assessments/{id}`: creates or replaces an assessment
/// (`school_id` null for global content, else this tenant's school); invalidates
/// `assessment:{id}:meta`. Content writers.
pub fn assessment_put(s: &Ctx) -> BoxedFilter<(Response,)> {
    let f = warp::path!("v1" / "tenants" / String / "assessments" / String)
        .and(warp::put())
        .and(principal(s))
        .and(json_body::<AssessmentBody>(s))
        .and(with(s))
        .then(|t: String, id: String, who: Who, b: Result<AssessmentBody, Problem>, s: Ctx| async move {
            reply(
                async {
                    let sc = content_scope(&s, who, &t)?;
                    let b = b?;
                    let id = path_uuid(&id)?;
                    check_len("title", &b.title, 255)?;
                    check_max("description", &b.description, 2000)?;
                    check_grade(b.grade_level)?;
                    if b.school_id.is_some() && b.school_id != sc.school_id() {
                        return Err(Problem::bad_request("school_id must be null or this tenant's school"));
                    }
                    if b.total_points < 0 {
                        return Err(Problem::bad_request("total_points must be >= 0"));
                    }
                    if b.time_limit_minutes.is_some_and(|m| m <= 0) {
                        return Err(Problem::bad_request("time_limit_minutes must be > 0"));
                    }
                    if !(0..=100).contains(&b.passing_score_percentage) {
                        return Err(Problem::bad_request("passing_score_percentage must be 0..=100"));
                    }
                    let mut conn = s.pools.acquire(&sc.tenant).await.map_err(pool_problem)?;
                    let mut tx = begin_scoped(&mut conn, &sc).await?;
                    let doc: Value = sqlx::query_scalar(
                        "INSERT INTO assessments (id, course_id, school_id, title, description, assessment_type, \
                         subject, grade_level, topics, question_ids, total_points, time_limit_minutes, \
                         passing_score_percentage, is_active) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14) \
                         ON CONFLICT (id) DO UPDATE SET course_id = EXCLUDED.course_id, school_id = EXCLUDED.school_id, \
                         title = EXCLUDED.title, description = EXCLUDED.description, \
                         assessment_type = EXCLUDED.assessment_type, subject = EXCLUDED.subject, \
                         grade_level = EXCLUDED.grade_level, topics = EXCLUDED.topics, \
                         question_ids = EXCLUDED.question_ids, total_points = EXCLUDED.total_points, \
                         time_limit_minutes = EXCLUDED.time_limit_minutes, \
                         passing_score_percentage = EXCLUDED.passing_score_percentage, \
                         is_active = EXCLUDED.is_active, updated_at = now() \
                         RETURNING to_jsonb(assessments.*)",
                    )
                    .bind(id)
                    .bind(b.course_id)
                    .bind(b.school_id)
                    .bind(&b.title)
                    .bind(&b.description)
                    .bind(b.assessment_type)
                    .bind(b.subject)
                    .bind(b.grade_level)
                    .bind(json_text(&b.topics)?)
                    .bind(json_text(&b.question_ids)?)
                    .bind(b.total_points)
                    .bind(b.time_limit_minutes)
                    .bind(b.passing_score_percentage)
                    .bind(b.is_active)
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(db_problem)?;
                    tx.commit().await.map_err(db_problem)?;
                    s.cache
                        .invalidate(&[sc.key(&format!("assessment:{id}:meta"))])
                        .await;
                    Ok(json_reply(StatusCode::OK, &doc))
                }
                .await,
            )
        })
        .boxed();
    instrument(s, openapi::ASSESSMENT_PUT, f)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ClassBody {
    name: String,
    code: String,
    grade_level: i32,
    subject: i32,
    #[serde(default)]
    teacher_ids: Vec<Uuid>,
    academic_year: String,
    #[serde(default = "yes")]
    is_active: bool,
}

/// `PUT /v1/tenants/{tenant}/classes/{id}`: creates or replaces a class of this school
/// (students stay as they are: the roster has its own endpoint); invalidates
/// `class:{id}:roster`. School admins and platform admins.
pub fn class_put(s: &Ctx) -> BoxedFilter<(Response,)> {
    let f = warp::path!("v1" / "tenants" / String / "classes" / String)
        .and(warp::put())
        .and(principal(s))
        .and(json_body::<ClassBody>(s))
        .and(with(s))
        .then(|t: String, id: String, who: Who, b: Result<ClassBody, Problem>, s: Ctx| async move {
            reply(
                async {
                    let sc = scope(&s, who, &t)?;
                    if !sc.access.manages_school() {
                        return Err(Problem::forbidden());
                    }
                    let school = sc.school_id().ok_or_else(Problem::not_found)?;
                    let b = b?;
                    let id = path_uuid(&id)?;
                    check_len("name", &b.name, 255)?;
                    check_len("code", &b.code, 50)?;
                    check_len("academic_year", &b.academic_year, 20)?;
                    check_grade(b.grade_level)?;
                    if b.teacher_ids.len() > 100 {
                        return Err(Problem::bad_request("a class has at most 100 teachers"));
                    }
                    let mut conn = s.pools.acquire(&sc.tenant).await.map_err(pool_problem)?;
                    let mut tx = begin_scoped(&mut conn, &sc).await?;
                    let doc: Value = sqlx::query_scalar(
                        "INSERT INTO classes (id, school_id, name, code, grade_level, subject, teacher_ids, \
                         academic_year, is_active) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
                         ON CONFLICT (id) DO UPDATE SET name = EXCLUDED.name, code = EXCLUDED.code, \
                         grade_level = EXCLUDED.grade_level, subject = EXCLUDED.subject, \
                         teacher_ids = EXCLUDED.teacher_ids, academic_year = EXCLUDED.academic_year, \
                         is_active = EXCLUDED.is_active, updated_at = now() \
                         WHERE classes.school_id = EXCLUDED.school_id \
                         RETURNING to_jsonb(classes.*)",
                    )
                    .bind(id)
                    .bind(school)
                    .bind(&b.name)
                    .bind(&b.code)
                    .bind(b.grade_level)
                    .bind(b.subject)
                    .bind(json_text(&b.teacher_ids)?)
                    .bind(&b.academic_year)
                    .bind(b.is_active)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(db_problem)?
                    .ok_or_else(Problem::not_found)?;
                    tx.commit().await.map_err(db_problem)?;
                    s.cache
                        .invalidate(&[sc.key(&format!("class:{id}:roster"))])
                        .await;
                    Ok(json_reply(StatusCode::OK, &doc))
                }
                .await,
            )
        })
        .boxed();
    instrument(s, openapi::CLASS_PUT, f)
}
