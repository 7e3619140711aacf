//! Sessions in Redis (`/v1/session`).

use super::*;

pub(super) fn session_key(p: &Principal) -> String {
    let tenant = match p.school_id {
        Some(id) => id.to_string(),
        None if p.role == crate::auth::UserRole::Student => "selfservice".into(),
        None => "platform".into(),
    };
    crate::cache::tenant_key(&tenant, &format!("session:{}", p.user_id))
}

/// `PUT|GET|DELETE /v1/session`: the caller's session (`session:{userId}`, 30-minute
/// sliding expiry). PUT stores a JSON object (at most 4 KiB); GET reads it and restarts
/// the 30 minutes; DELETE ends it. Redis down → 503 (sessions live only in Redis).
pub(super) fn routes(s: &SharedState) -> BoxedFilter<(Response,)> {
    let put = warp::path!("v1" / "session")
        .and(warp::put())
        .and(principal(s))
        .and(warp::body::content_length_limit(4096))
        .and(warp::body::json::<Value>())
        .and(with(s))
        .then(|who: Who, body: Value, s: SharedState| async move {
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
        .then(|who: Who, s: SharedState| async move {
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
        .then(|who: Who, s: SharedState| async move {
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
