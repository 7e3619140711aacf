//! The shared shapes of the keyed orchestration tables (circuit breakers, agent
//! statistics, routing decisions): one row by key, and a page by `agent_key`.

use super::orchestration::{admin_scope, page_limit, path_agent_key};
use super::*;

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct KeyQuery {
    /// The previous page's `next_after`.
    after: Option<String>,
    /// Page size.
    #[param(minimum = 1, maximum = 200)]
    limit: Option<i64>,
}

/// How a keyed row is named in its path.
#[derive(Clone, Copy)]
pub(super) enum PathKey {
    /// An agent key (1–200 of `A-Z a-z 0-9 - _ . : @ ~`).
    Agent,
    /// A UUID.
    Uuid,
}

/// `GET` one row of a keyed table (platform admins), with a strong ETag. `sql` is a
/// [`scoped!`] statement whose `$3` is the key as text and whose `doc` is the reply
/// (`text`, built by PostgreSQL: one of the `sql_*` macros of [`crate::wire`]).
pub(super) fn keyed_get(
    s: &SharedState,
    doc: RouteDoc,
    segment: &'static str,
    key: PathKey,
    sql: &'static str,
) -> BoxedFilter<(Response,)> {
    let f = keyed_path(segment)
        .and(warp::get())
        .and(principal(s))
        .and(if_none_match())
        .and(with(s))
        .then(
            move |t: String, k: String, who: Who, inm: Option<String>, s: SharedState| async move {
                reply(
                    async {
                        let sc = admin_scope(&s, who, &t)?;
                        let k = match key {
                            PathKey::Agent => path_agent_key(&k)?,
                            PathKey::Uuid => path_uuid(&k)?.to_string(),
                        };
                        let body = fetch_text(&s, &sc, sql, &[Value::String(k)])
                            .await?
                            .ok_or_else(Problem::not_found)?;
                        Ok(etagged(body, inm.as_deref()))
                    }
                    .await,
                )
            },
        )
        .boxed();
    instrument(s, doc, f)
}

/// `GET` a page of a table keyed by `agent_key` (`?after=&limit=`, platform admins), with
/// a strong ETag. `sql` is a [`scoped!`] [`crate::sql_page!`] statement with `$3` after
/// (text or NULL) and `$4` the limit.
pub(super) fn agent_keyed_list(
    s: &SharedState,
    doc: RouteDoc,
    segment: &'static str,
    sql: &'static str,
) -> BoxedFilter<(Response,)> {
    let f = warp::path("v1")
        .and(warp::path("tenants"))
        .and(warp::path::param::<String>())
        .and(warp::path(segment))
        .and(warp::path::end())
        .and(warp::get())
        .and(query::<KeyQuery>())
        .and(principal(s))
        .and(if_none_match())
        .and(with(s))
        .then(
            move |t: String,
                  q: Result<KeyQuery, Problem>,
                  who: Who,
                  inm: Option<String>,
                  s: SharedState| async move {
                reply(
                    async {
                        let sc = admin_scope(&s, who, &t)?;
                        let q = q?;
                        let limit = page_limit(q.limit)?;
                        let body = fetch_text(
                            &s,
                            &sc,
                            sql,
                            &[
                                q.after.map(Value::String).unwrap_or(Value::Null),
                                json!(limit),
                            ],
                        )
                        .await?
                        .ok_or_else(Problem::internal)?;
                        Ok(etagged(body, inm.as_deref()))
                    }
                    .await,
                )
            },
        )
        .boxed();
    instrument(s, doc, f)
}
