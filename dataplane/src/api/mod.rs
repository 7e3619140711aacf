//! Routes and handlers. One documented filter function per route; handlers turn every
//! business error into a [`Problem`] reply themselves, so rejections only ever mean "this
//! route does not match" (or the body could not be read).

mod attempts;
mod classes;
mod content;
mod deletes;
mod health;
mod orchestration;
mod session;
mod students;
mod users;
pub use attempts::*;
pub use classes::*;
pub use content::*;
pub use health::*;
pub use orchestration::*;
pub use session::*;
pub use students::*;
pub use users::*;

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

/// `/v1/tenants/{tenant}/{segment}/{key}`: the path of one row of a keyed resource.
pub(super) fn keyed_path(
    segment: &'static str,
) -> impl Filter<Extract = (String, String), Error = warp::Rejection> + Clone {
    warp::path("v1")
        .and(warp::path("tenants"))
        .and(warp::path::param::<String>())
        .and(warp::path(segment))
        .and(warp::path::param::<String>())
        .and(warp::path::end())
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
    Problem::database(e)
}

fn pool_problem(e: PoolError) -> Problem {
    Problem::pool(e)
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
        .or(students_create(&s))
        .unify()
        // Boxing part-way keeps the combined filter type within the compiler's depth limit.
        .boxed()
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
