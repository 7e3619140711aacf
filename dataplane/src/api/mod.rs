//! Routes and handlers. One documented filter function per route; handlers turn every
//! business error into a [`Problem`] reply themselves, so rejections only ever mean "this
//! route does not match" (or the body could not be read).
//!
//! Each submodule is one resource and exposes its route group (`routes`), a boxed filter;
//! [`routes`] joins the groups. Shared filters, the request [`Scope`] and the reply
//! helpers live here.

pub(crate) mod attempts;
pub(crate) mod classes;
pub(crate) mod content;
mod deletes;
mod health;
pub(crate) mod keyed;
pub(crate) mod orchestration;
mod session;
pub(crate) mod students;
pub(crate) mod users;

pub use health::admin_routes;

// Helpers one resource module defines and others share (reached through `use super::*`).
use attempts::{begin_recording, begin_scoped};
use content::{check_grade, json_text};
use keyed::{PathKey, agent_keyed_list, keyed_get};
use orchestration::{check_len, check_opt, page_limit};
use students::cached_reply;
use users::yes;

use std::convert::Infallible;
use std::time::Instant;

use tracing::Instrument;

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
use crate::outbox;
use crate::pool::PoolError;
use crate::problem::Problem;
use crate::scoped;
use crate::state::SharedState;
use crate::tenants::{Tenant, TenantId};
use crate::wire;

type Who = Result<Principal, AuthError>;

// ------------------------------------------------------------------------------------
// shared filters and reply helpers
// ------------------------------------------------------------------------------------

fn with(
    s: &SharedState,
) -> impl Filter<Extract = (SharedState,), Error = Infallible> + Clone + use<> {
    let s = s.clone();
    warp::any().map(move || s.clone())
}

/// The caller, or why not; never a rejection (401 is a reply). A valid token of a school
/// member must also name an active user of that school with its role
/// ([`crate::access::verify_member`], cached).
fn principal(s: &SharedState) -> impl Filter<Extract = (Who,), Error = Infallible> + Clone + use<> {
    warp::header::optional::<String>("authorization")
        .or(warp::any().map(|| None))
        .unify()
        .and(with(s))
        .then(|h: Option<String>, s: SharedState| {
            async move {
                let p = s.auth.authenticate(h.as_deref())?;
                crate::access::verify_member(&s, &p).await?;
                Ok(p)
            }
            .instrument(tracing::debug_span!("authenticate"))
        })
}

fn if_none_match() -> impl Filter<Extract = (Option<String>,), Error = Infallible> + Clone {
    warp::header::optional::<String>("if-none-match")
        .or(warp::any().map(|| None))
        .unify()
}

/// The JSON body, size-limited; a body that does not parse is handed to the handler as a
/// 400 problem, so authentication still answers first (401 before 400).
fn json_body<T: serde::de::DeserializeOwned + Send>(
    s: &SharedState,
) -> impl Filter<Extract = (Result<T, Problem>,), Error = warp::Rejection> + Clone + use<T> {
    warp::body::content_length_limit(s.settings.max_body_bytes)
        .and(warp::body::bytes())
        .map(|b: bytes::Bytes| crate::validate::json_body::<T>(&b))
}

/// The query string as `T`, handed to the handler as a `Result` so authentication
/// answers first (401 before 400); NUL bytes are refused naming the parameter.
fn query<T: serde::de::DeserializeOwned + Send>()
-> impl Filter<Extract = (Result<T, Problem>,), Error = Infallible> + Clone {
    warp::query::raw()
        .or(warp::any().map(String::new))
        .unify()
        .map(|raw: String| crate::validate::query::<T>(&raw))
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
fn instrument(
    s: &SharedState,
    doc: RouteDoc,
    f: BoxedFilter<(Response,)>,
) -> BoxedFilter<(Response,)> {
    let m = s.metrics.clone();
    warp::any()
        .map(Instant::now)
        .and(f)
        .map(move |start: Instant, res: Response| {
            let status = res.status().as_u16();
            m.observe(doc.id, status, start);
            // The request span ([`routes`]) learns its route once one matched.
            tracing::Span::current().record("route", doc.id);
            tracing::debug!(
                route = doc.id,
                status,
                elapsed_ms = start.elapsed().as_secs_f64() * 1000.0,
                "request done"
            );
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
    match cache::Stored::found(body) {
        cache::Stored::Found { etag, body } => etagged_bytes(etag, body, inm),
        cache::Stored::NotFound => Problem::internal().into_response(),
    }
}

/// Whether an `If-None-Match` header names `tag` (or is `*`).
fn inm_matches(inm: Option<&str>, tag: &[u8]) -> bool {
    inm.is_some_and(|h| {
        h.split(',')
            .any(|t| t.trim().as_bytes() == tag || t.trim() == "*")
    })
}

/// `body` with its ETag `tag` as it is (no copy, no JSON work); 304 when `If-None-Match`
/// matches, without touching the body.
fn etagged_bytes(tag: bytes::Bytes, body: bytes::Bytes, inm: Option<&str>) -> Response {
    let mut res = if inm_matches(inm, &tag) {
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
    if let Ok(v) = HeaderValue::from_maybe_shared(tag) {
        res.headers_mut().insert(header::ETAG, v);
    }
    res
}

/// Sends a cached reply ([`cache::Stored`]): its stored bytes and ETag, 304 from the
/// stored ETag, or 404 for a variant that is "not found".
fn stored_reply(stored: cache::Stored, inm: Option<&str>) -> Result<Response, Problem> {
    match stored {
        cache::Stored::Found { etag, body } => Ok(etagged_bytes(etag, body, inm)),
        cache::Stored::NotFound => Err(Problem::not_found()),
    }
}

/// A wire value rendered into the reply a cache stores.
fn rendered<T: serde::Serialize>(v: &T) -> Result<cache::Stored, Problem> {
    let body = serde_json::to_vec(v).map_err(|_| Problem::internal())?;
    Ok(cache::Stored::found(body))
}

/// [`typed`] without taking the document (it may be rendered again for another variant).
fn typed_ref<T: serde::de::DeserializeOwned>(doc: &Value) -> Result<T, Problem> {
    T::deserialize(doc).map_err(|e| {
        tracing::error!(error = %e, type_name = std::any::type_name::<T>(), "row does not fit its wire type");
        Problem::internal()
    })
}

fn json_reply<T: serde::Serialize>(status: StatusCode, v: &T) -> Response {
    warp::reply::with_status(warp::reply::json(v), status).into_response()
}

/// Decodes a row (JSON from PostgreSQL or the cache) into its wire type: the type's
/// fields are what goes over the wire. A row that does not fit is our fault (500).
fn typed<T: serde::de::DeserializeOwned>(doc: Value) -> Result<T, Problem> {
    serde_json::from_value(doc).map_err(|e| {
        tracing::error!(error = %e, type_name = std::any::type_name::<T>(), "row does not fit its wire type");
        Problem::internal()
    })
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

fn scope(s: &SharedState, who: Who, tenant: &str) -> Result<Scope, Problem> {
    let p = who.map_err(Problem::from)?;
    let (tenant, access) = tracing::debug_span!("resolve_tenant", tenant)
        .in_scope(|| resolve(&s.directory, &p, tenant))?;
    tracing::Span::current().record("tenant", tracing::field::display(&tenant.id));
    Ok(Scope { p, tenant, access })
}

/// [`scope`], then the role check: `403` unless `allowed(access)`. The first lines of
/// most handlers.
fn scope_where(
    s: &SharedState,
    who: Who,
    tenant: &str,
    allowed: impl FnOnce(Access) -> bool,
) -> Result<Scope, Problem> {
    let sc = scope(s, who, tenant)?;
    if allowed(sc.access) {
        Ok(sc)
    } else {
        Err(Problem::forbidden())
    }
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

/// Takes a connection to the caller's tenant, runs `work` in a transaction scoped to the
/// caller (see `begin_scoped`) and commits; an error from `work` rolls back.
async fn in_scoped_tx<T>(
    s: &SharedState,
    sc: &Scope,
    work: impl AsyncFnOnce(&mut sqlx::PgConnection) -> Result<T, Problem>,
) -> Result<T, Problem> {
    let mut conn = s.pools.acquire(&sc.tenant).await.map_err(pool_problem)?;
    async {
        let mut tx = begin_scoped(&mut conn, sc).await?;
        let out = work(&mut tx).await?;
        tx.commit().await.map_err(db_problem)?;
        Ok(out)
    }
    .instrument(tracing::debug_span!("db.transaction"))
    .await
}

/// Runs one scoped statement returning at most one `doc`.
async fn fetch_doc(
    s: &SharedState,
    sc: &Scope,
    sql: &'static str,
    binds: &[Value],
) -> Result<Option<Value>, Problem> {
    fetch_scalar(s, sc, sql, binds).await
}

/// Runs one scoped statement whose `doc` is the whole reply as `text` (built by
/// PostgreSQL, see the `sql_*` macros in [`crate::wire`]); `None` for no row or a NULL.
async fn fetch_text(
    s: &SharedState,
    sc: &Scope,
    sql: &'static str,
    binds: &[Value],
) -> Result<Option<String>, Problem> {
    fetch_scalar(s, sc, sql, binds).await
}

/// One scoped statement (autocommit: the `set_config` calls live in the statement
/// itself, see [`scoped!`]) returning at most one `doc` of type `T`.
async fn fetch_scalar<T>(
    s: &SharedState,
    sc: &Scope,
    sql: &'static str,
    binds: &[Value],
) -> Result<Option<T>, Problem>
where
    T: for<'r> sqlx::Decode<'r, sqlx::Postgres> + sqlx::Type<sqlx::Postgres> + Send + Unpin,
{
    let mut conn = s.pools.acquire(&sc.tenant).await.map_err(pool_problem)?;
    let (uid, adm) = sc.params();
    let mut q = sqlx::query_scalar::<_, Option<T>>(sql).bind(uid).bind(adm);
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
    // A row whose `doc` is NULL ("no such parent") is "nothing", like no row.
    let q = q
        .fetch_optional(&mut *conn)
        .instrument(tracing::debug_span!("db.statement"))
        .await
        .map_err(db_problem)?;
    Ok(q.flatten())
}

// ------------------------------------------------------------------------------------
// routes
// ------------------------------------------------------------------------------------

/// The first of `filters` that matches. Every filter is boxed, so the combined type stays
/// flat however many routes a group has.
fn any_of<const N: usize>(filters: [BoxedFilter<(Response,)>; N]) -> BoxedFilter<(Response,)> {
    let mut it = filters.into_iter();
    let first = it
        .next()
        .unwrap_or_else(|| warp::any().and_then(reject).boxed());
    it.fold(first, |acc, f| acc.or(f).unify().boxed())
}

async fn reject() -> Result<Response, warp::Rejection> {
    Err(warp::reject::not_found())
}

/// Every route group, with rejections turned into problem replies.
pub fn routes(s: SharedState) -> BoxedFilter<(Response,)> {
    let unmatched = s.metrics.clone();
    any_of([
        health::routes(&s),
        students::routes(&s),
        users::routes(&s),
        classes::routes(&s),
        content::routes(&s),
        attempts::routes(&s),
        session::routes(&s),
        orchestration::routes(&s),
        deletes::routes(&s),
    ])
    .recover(crate::problem::recover)
    .unify()
    .map(move |res: Response| {
        if res.status() == StatusCode::NOT_FOUND || res.status() == StatusCode::METHOD_NOT_ALLOWED {
            unmatched.observe("unmatched", res.status().as_u16(), Instant::now());
        }
        res
    })
    // The request's root span, opened once per request: every span below
    // (authenticate, resolve_tenant, pool.acquire, db.*, cache.*) and every log line
    // inside carries its fields. The route is recorded when one matched.
    .with(warp::trace(|info: warp::trace::Info<'_>| {
        let span = tracing::info_span!(
            "request",
            method = %info.method(),
            route = tracing::field::Empty,
            tenant = tracing::field::Empty,
            trace_id = tracing::field::Empty,
        );
        edumind_telemetry::start_trace(&span, Some(info.request_headers()));
        span
    }))
    .map(Reply::into_response)
    .boxed()
}
