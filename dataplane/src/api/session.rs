//! Sessions in Redis (`/v1/session`).

use super::*;

pub(super) fn session_key(p: &Principal) -> String {
    let tenant = match p.school_id {
        Some(id) => id.to_string(),
        None if p.role == crate::auth::UserRole::Student => "selfservice".into(),
        None => "platform".into(),
    };
    // The role is part of the key: a Student and a Teacher token with the same `sub`
    // are two sessions.
    crate::cache::tenant_key(&tenant, &format!("session:{}:{}", p.role.name(), p.user_id))
}

/// `PUT|GET|DELETE /v1/session`: the caller's session (`session:{role}:{userId}`, 30-minute
/// sliding expiry). PUT stores a JSON object (at most 4 KiB); GET reads it and restarts
/// the 30 minutes; DELETE ends it. Redis down → 503 (sessions live only in Redis).
pub(super) fn routes(s: &SharedState) -> BoxedFilter<(Response,)> {
    let put = warp::path!("v1" / "session")
        .and(warp::put())
        .and(principal(s))
        .and(
            warp::body::content_length_limit(4096)
                .and(warp::body::bytes())
                .map(|b: bytes::Bytes| crate::validate::json_body::<Value>(&b)),
        )
        .and(with(s))
        .then(
            |who: Who, body: Result<Value, Problem>, s: SharedState| async move {
                reply(
                    async {
                        let p = who.map_err(Problem::from)?;
                        let body = body?;
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
            },
        );
    let get = warp::path!("v1" / "session")
        .and(warp::get())
        .and(principal(s))
        .and(with(s))
        .then(|who: Who, s: SharedState| async move {
            reply(
                async {
                    let p = who.map_err(Problem::from)?;
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
        .then(|who: Who, s: SharedState| async move {
            reply(
                async {
                    let p = who.map_err(Problem::from)?;
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
