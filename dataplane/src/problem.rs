//! RFC 9457 problem details: every failure the service answers with is one of these.

use serde::Serialize;
use warp::http::{HeaderValue, StatusCode, header};
use warp::reply::Response;

/// An `application/problem+json` reply. `detail` is written for the caller and never holds
/// secrets, SQL or internal error text.
/// `type` is a URI naming the kind of problem, `detail` says what to fix.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Problem {
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    #[serde(skip)]
    pub retry_after: Option<u64>,
}

impl Problem {
    pub fn new(status: StatusCode, slug: &str, title: &str) -> Self {
        Problem {
            kind: format!("https://edumind.ai/problems/{slug}"),
            title: title.to_owned(),
            status: status.as_u16(),
            detail: None,
            retry_after: None,
        }
    }

    pub fn with_detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    pub fn bad_request(detail: impl Into<String>) -> Self {
        Problem::new(StatusCode::BAD_REQUEST, "bad-request", "Bad request").with_detail(detail)
    }

    pub fn unauthorized() -> Self {
        Problem::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "Missing or invalid bearer token",
        )
    }

    pub fn forbidden() -> Self {
        Problem::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "Your role may not do this",
        )
    }

    /// The one reply for "does not exist" and "exists but is not yours": identical bytes.
    pub fn not_found() -> Self {
        Problem::new(StatusCode::NOT_FOUND, "not-found", "Not found")
    }

    pub fn conflict(detail: impl Into<String>) -> Self {
        Problem::new(StatusCode::CONFLICT, "conflict", "Conflict").with_detail(detail)
    }

    pub fn unavailable(retry_after_secs: u64, detail: impl Into<String>) -> Self {
        let mut p = Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "Temporarily unavailable",
        )
        .with_detail(detail);
        p.retry_after = Some(retry_after_secs);
        p
    }

    /// A failure on our side; the cause is logged by the caller, not sent.
    pub fn internal() -> Self {
        Problem::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "Internal error",
        )
    }

    /// A database error as a reply. The caller's input errors are 4xx: SQLSTATE class 22
    /// (data exception: a value out of range, an untranslatable character, a bad
    /// datetime) and class 23 (integrity: 409 for a duplicate key or an exclusion
    /// conflict, 400 otherwise), and 54 (a value too large for an index) are 400;
    /// 42501 (row-level security refused the row) is 403; a serialization failure or
    /// deadlock is 503 with `Retry-After`. A lost or refused connection is 503 with
    /// `Retry-After` (the server is restarting or failing over; the connection is never
    /// reused). Anything else is a fault on our side: 500, logged.
    pub fn database(e: sqlx::Error) -> Self {
        if let sqlx::Error::Database(d) = &e
            && let Some(code) = d.code()
        {
            match code.as_ref() {
                "23505" | "23P01" => {
                    return Problem::conflict("a record with this key already exists");
                }
                "23503" => return Problem::bad_request("a referenced record does not exist"),
                "42501" => return Problem::forbidden(),
                "40001" | "40P01" => {
                    return Problem::unavailable(1, "a concurrent change got in the way; retry");
                }
                c if c.starts_with("23") => {
                    return Problem::bad_request("a value breaks a rule of its column");
                }
                c if c.starts_with("22") => {
                    return Problem::bad_request("a value is out of range for its column");
                }
                c if c.starts_with("54") => {
                    return Problem::bad_request("a value is too large to store");
                }
                _ => {}
            }
        }
        if crate::pool::is_connection_error(&e) {
            crate::pool::note_connection_failure();
            tracing::warn!(error = %e, "tenant database connection lost");
            return Problem::unavailable(1, "the tenant database is unavailable; retry shortly");
        }
        tracing::error!(error = %e, "database error");
        Problem::internal()
    }

    /// No connection: 503 with `Retry-After` either way.
    pub fn pool(e: crate::pool::PoolError) -> Self {
        match e {
            crate::pool::PoolError::Busy => {
                Problem::unavailable(1, "the tenant database is busy; retry shortly")
            }
            crate::pool::PoolError::Connect(err) => {
                tracing::warn!(error = %err, "cannot connect to tenant database");
                Problem::unavailable(1, "the tenant database is unreachable")
            }
        }
    }

    pub fn status_code(&self) -> StatusCode {
        StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }
}

impl warp::Reply for Problem {
    fn into_response(self) -> Response {
        let body = serde_json::to_vec(&self).unwrap_or_default();
        let mut res = Response::new(body.into());
        *res.status_mut() = self.status_code();
        res.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let Some(secs) = self.retry_after
            && let Ok(v) = HeaderValue::from_str(&secs.to_string())
        {
            res.headers_mut().insert(header::RETRY_AFTER, v);
        }
        if self.status == 401 {
            res.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        res
    }
}

/// Turns warp's rejections (the route did not match, or its extractors refused the
/// request) into problem replies. Business errors never get here: handlers reply with a
/// [`Problem`] themselves.
pub async fn recover(rejection: warp::Rejection) -> Result<Response, std::convert::Infallible> {
    use warp::Reply;
    let problem = if rejection.is_not_found() {
        Problem::not_found()
    } else if let Some(e) = rejection.find::<warp::filters::body::BodyDeserializeError>() {
        Problem::bad_request(format!("invalid JSON body: {e}"))
    } else if rejection.find::<warp::reject::PayloadTooLarge>().is_some() {
        Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload-too-large",
            "Request body too large",
        )
    } else if rejection.find::<warp::reject::LengthRequired>().is_some() {
        Problem::new(
            StatusCode::LENGTH_REQUIRED,
            "length-required",
            "Content-Length required",
        )
    } else if rejection
        .find::<warp::reject::UnsupportedMediaType>()
        .is_some()
    {
        Problem::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported-media-type",
            "Send application/json",
        )
    } else if rejection.find::<warp::reject::InvalidQuery>().is_some() {
        Problem::bad_request("invalid query string")
    } else if rejection.find::<warp::reject::MethodNotAllowed>().is_some() {
        Problem::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method-not-allowed",
            "Method not allowed",
        )
    } else if rejection.find::<warp::reject::InvalidHeader>().is_some()
        || rejection.find::<warp::reject::MissingHeader>().is_some()
    {
        Problem::bad_request("invalid or missing header")
    } else {
        tracing::warn!(?rejection, "unhandled rejection");
        Problem::internal()
    };
    Ok(problem.into_response())
}
