//! Input checks that apply to every request, whatever its route, so no field has to
//! remember them by hand.
//!
//! * A NUL character (`\u0000`) anywhere in a JSON body (in a string value or an object
//!   key, at any depth) or in a query parameter (`%00`) is refused with 400 naming the
//!   field: PostgreSQL cannot store `0x00` in `text`/`varchar`/`jsonb`, and refusing it
//!   everywhere keeps one rule for every store (sessions in Redis included).
//! * Query strings are parsed into the route's type *after* authentication: the filter
//!   hands the handler a `Result`, so an anonymous caller with a malformed query gets 401,
//!   not 400.
//!
//! Timestamps are normalised to UTC where they are parsed ([`utc_timestamp`]): an RFC 3339
//! offset PostgreSQL cannot store (beyond ±15:59, e.g. `-23:59`) names the same instant
//! in UTC, and `timestamptz` keeps only the instant, so the conversion loses nothing.

use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::problem::Problem;

/// The path of the first string value or object key holding a NUL, in a JSON body
/// (`answer`, `metadata.source`, `topics[2]`); `None` when there is none.
pub fn nul_in_json(v: &Value) -> Option<String> {
    fn walk(v: &Value, path: &mut String) -> bool {
        match v {
            Value::String(s) => s.contains('\0'),
            Value::Array(items) => items.iter().enumerate().any(|(i, item)| {
                let len = path.len();
                path.push_str(&format!("[{i}]"));
                let found = walk(item, path);
                if !found {
                    path.truncate(len);
                }
                found
            }),
            Value::Object(map) => map.iter().any(|(k, item)| {
                let len = path.len();
                if !path.is_empty() {
                    path.push('.');
                }
                // A key is named without its NUL, so the reply stays printable.
                path.push_str(&k.replace('\0', "\\u0000"));
                let found = k.contains('\0') || walk(item, path);
                if !found {
                    path.truncate(len);
                }
                found
            }),
            _ => false,
        }
    }
    let mut path = String::new();
    walk(v, &mut path).then(|| {
        if path.is_empty() {
            "body".to_owned()
        } else {
            path
        }
    })
}

/// A JSON request body as `T`: 400 when it is not JSON, holds a NUL anywhere, or does not
/// have `T`'s shape.
pub fn json_body<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Problem> {
    let v: Value = serde_json::from_slice(bytes)
        .map_err(|e| Problem::bad_request(format!("invalid JSON body: {e}")))?;
    if let Some(field) = nul_in_json(&v) {
        return Err(nul_problem(&field));
    }
    serde_json::from_value(v).map_err(|e| Problem::bad_request(format!("invalid JSON body: {e}")))
}

fn nul_problem(field: &str) -> Problem {
    Problem::bad_request(format!("{field} must not contain a NUL character"))
}

/// A query string as `T`: 400 naming the parameter when one holds a NUL, 400 when the
/// string does not fit `T` (unknown parameter, wrong type).
pub fn query<T: DeserializeOwned>(raw: &str) -> Result<T, Problem> {
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(raw)
        .map_err(|_| Problem::bad_request("invalid query string"))?;
    if let Some((name, _)) = pairs
        .iter()
        .find(|(k, v)| k.contains('\0') || v.contains('\0'))
    {
        return Err(nul_problem(&name.replace('\0', "\\u0000")));
    }
    serde_urlencoded::from_str(raw)
        .map_err(|e| Problem::bad_request(format!("invalid query string: {e}")))
}

/// An RFC 3339 timestamp, normalised to UTC (see the module docs); 400 naming `field`
/// when it does not parse.
pub fn utc_timestamp(
    field: &str,
    raw: Option<&str>,
) -> Result<Option<chrono::DateTime<chrono::Utc>>, Problem> {
    raw.map(|ts| {
        chrono::DateTime::parse_from_rfc3339(ts)
            .map(|t| t.with_timezone(&chrono::Utc))
            .map_err(|_| Problem::bad_request(format!("{field} must be an RFC 3339 timestamp")))
    })
    .transpose()
}

// ---- references in write bodies (issue 12 §3) ----
//
// Ids a body names that no foreign key guards are checked against this tenant's database
// in the write's own transaction: an id of another school, or of nothing, is 400 naming
// the field (never 404: the path's resource exists; the body is wrong).

/// `class_id` of a new attempt: a class of this tenant whose roster holds the student.
pub async fn attempt_class(
    tx: &mut sqlx::PgConnection,
    class_id: Option<uuid::Uuid>,
    student: uuid::Uuid,
) -> Result<(), Problem> {
    let Some(class_id) = class_id else {
        return Ok(());
    };
    let on_roster: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM classes c WHERE c.id = $1 AND c.is_active \
         AND c.student_ids::jsonb ? $2::text)",
    )
    .bind(class_id)
    .bind(student.to_string())
    .fetch_one(&mut *tx)
    .await
    .map_err(Problem::database)?;
    if on_roster {
        Ok(())
    } else {
        Err(Problem::bad_request(
            "class_id must name an active class of this school whose roster holds you",
        ))
    }
}

/// `teacher_ids` of a class: staff (Teacher or SchoolAdmin users) of this tenant.
pub async fn staff_ids(tx: &mut sqlx::PgConnection, ids: &[uuid::Uuid]) -> Result<(), Problem> {
    if ids.is_empty() {
        return Ok(());
    }
    let known: i64 = sqlx::query_scalar(
        "SELECT count(DISTINCT id) FROM users WHERE id = ANY($1) AND role IN (1, 2)",
    )
    .bind(ids)
    .fetch_one(&mut *tx)
    .await
    .map_err(Problem::database)?;
    if known == distinct(ids) {
        Ok(())
    } else {
        Err(Problem::bad_request(
            "teacher_ids must name Teacher or SchoolAdmin users of this school",
        ))
    }
}

/// `question_ids` of an assessment: questions of this tenant.
pub async fn question_ids(tx: &mut sqlx::PgConnection, ids: &[uuid::Uuid]) -> Result<(), Problem> {
    if ids.is_empty() {
        return Ok(());
    }
    let known: i64 =
        sqlx::query_scalar("SELECT count(DISTINCT id) FROM questions WHERE id = ANY($1)")
            .bind(ids)
            .fetch_one(&mut *tx)
            .await
            .map_err(Problem::database)?;
    if known == distinct(ids) {
        Ok(())
    } else {
        Err(Problem::bad_request(
            "question_ids must name questions that exist",
        ))
    }
}

fn distinct(ids: &[uuid::Uuid]) -> i64 {
    ids.iter().collect::<std::collections::HashSet<_>>().len() as i64
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn nul_is_found_at_any_depth_and_named() {
        assert_eq!(nul_in_json(&json!({"a": "x", "b": [1, "y"]})), None);
        assert_eq!(
            nul_in_json(&json!({"answer": "a\u{0}"})).as_deref(),
            Some("answer")
        );
        assert_eq!(
            nul_in_json(&json!({"m": {"k": ["ok", "b\u{0}"]}})).as_deref(),
            Some("m.k[1]")
        );
        assert_eq!(
            nul_in_json(&json!({"m": {"\u{0}": 1}})).as_deref(),
            Some("m.\\u0000")
        );
        assert_eq!(nul_in_json(&json!("\u{0}")).as_deref(), Some("body"));
    }

    #[test]
    fn query_nul_is_named() {
        #[derive(serde::Deserialize, Debug)]
        #[allow(dead_code)]
        struct Q {
            after: Option<String>,
        }
        let e = query::<Q>("after=%00").unwrap_err();
        assert_eq!(e.status, 400);
        assert!(e.detail.unwrap_or_default().contains("after"));
        assert!(query::<Q>("after=x").is_ok());
        assert!(query::<Q>("other=x").is_ok()); // unknown fields are the type's business
    }

    #[test]
    fn offsets_postgres_cannot_store_become_utc() {
        let t = utc_timestamp("t", Some("2026-01-01T00:00:00-23:59"))
            .unwrap()
            .unwrap();
        assert_eq!(t.to_rfc3339(), "2026-01-01T23:59:00+00:00");
        assert_eq!(utc_timestamp("t", Some("nope")).unwrap_err().status, 400);
    }
}
