//! `DELETE` of classes, courses, questions and assessments: one generic route builder.
//!
//! Who: classes — school admins and platform admins; content — course, business and system
//! admins (the same roles that may write them). A missing row is 404. A row still
//! referenced (RESTRICT foreign keys: a course with questions or assessments, a question
//! with responses, an assessment with attempts; or a question listed in an assessment's
//! `question_ids`) is `409` and nothing is deleted. After commit the cache keys of the row
//! are dropped.

use uuid::Uuid;
use warp::Filter;
use warp::filters::BoxedFilter;
use warp::http::StatusCode;
use warp::reply::Response;

use super::{
    Who, begin_scoped, db_problem, instrument, keyed_path, pool_problem, principal, reply, scope,
    with,
};
use crate::access::path_uuid;
use crate::openapi::{self, RouteDoc};
use crate::outbox;
use crate::problem::Problem;
use crate::state::SharedState;

/// One deletable resource.
struct Deletable {
    doc: RouteDoc,
    /// The path segment after the tenant (`classes`, …).
    segment: &'static str,
    /// School-owned (classes: school admins, and only in a school tenant) or global
    /// content (content writers).
    school_owned: bool,
    /// Optional check, `$1` the id: returns true when the row is still in use.
    in_use_sql: Option<&'static str>,
    /// `$1` the id, and for school-owned rows `$2` the school id as text; returns the id
    /// and the id the cache key needs (the course of a question).
    delete_sql: &'static str,
    /// Cache seeds to drop, from (id, related id).
    seeds: fn(Uuid, Uuid) -> Vec<String>,
    /// Run after the delete, in its transaction: `$1` the id as text, `$2` an empty
    /// UUID array.
    after_sql: Option<&'static str>,
}

const CLASS: Deletable = Deletable {
    doc: openapi::CLASS_DELETE,
    segment: "classes",
    school_owned: true,
    in_use_sql: None,
    delete_sql: "DELETE FROM classes WHERE id = $1 AND school_id = $2::uuid RETURNING id, id",
    seeds: |id, _| vec![format!("class:{id}:roster")],
    // Its students leave it (`students.class_ids` stays true to the rosters).
    after_sql: Some(super::classes::LEAVE_CLASS_SQL),
};

const COURSE: Deletable = Deletable {
    doc: openapi::COURSE_DELETE,
    segment: "courses",
    school_owned: false,
    in_use_sql: None,
    delete_sql: "DELETE FROM courses WHERE id = $1 RETURNING id, id",
    seeds: |id, _| vec![format!("course:{id}:questions")],
    after_sql: None,
};

const QUESTION: Deletable = Deletable {
    doc: openapi::QUESTION_DELETE,
    segment: "questions",
    school_owned: false,
    in_use_sql: Some(
        "SELECT EXISTS (SELECT 1 FROM assessments a WHERE a.question_ids::jsonb ? $1::text)",
    ),
    delete_sql: "DELETE FROM questions WHERE id = $1 RETURNING id, course_id",
    seeds: |_, course| vec![format!("course:{course}:questions")],
    after_sql: None,
};

const ASSESSMENT: Deletable = Deletable {
    doc: openapi::ASSESSMENT_DELETE,
    segment: "assessments",
    school_owned: false,
    in_use_sql: None,
    delete_sql: "DELETE FROM assessments WHERE id = $1 RETURNING id, id",
    seeds: |id, _| vec![format!("assessment:{id}:meta")],
    after_sql: None,
};

/// The four delete routes.
pub(super) fn routes(s: &SharedState) -> BoxedFilter<(Response,)> {
    super::any_of([
        route(s, &CLASS),
        route(s, &COURSE),
        route(s, &QUESTION),
        route(s, &ASSESSMENT),
    ])
}

fn referenced() -> Problem {
    Problem::conflict("the record is still referenced by other records")
}

fn route(s: &SharedState, d: &'static Deletable) -> BoxedFilter<(Response,)> {
    let f = keyed_path(d.segment)
        .and(warp::delete())
        .and(principal(s))
        .and(with(s))
        .then(
            move |t: String, id: String, who: Who, s: SharedState| async move {
                reply(delete(&s, d, &t, &id, who).await)
            },
        )
        .boxed();
    instrument(s, d.doc, f)
}

async fn delete(
    s: &SharedState,
    d: &Deletable,
    t: &str,
    id: &str,
    who: Who,
) -> Result<Response, Problem> {
    let sc = scope(s, who, t)?;
    let allowed = if d.school_owned {
        sc.access.manages_school()
    } else {
        sc.access.writes_content()
    };
    if !allowed {
        return Err(Problem::forbidden());
    }
    let school = sc.school_id();
    if d.school_owned && school.is_none() {
        return Err(Problem::not_found());
    }
    let id = path_uuid(id)?;
    let mut conn = s.pools.acquire(&sc.tenant).await.map_err(pool_problem)?;
    let mut tx = begin_scoped(&mut conn, &sc).await?;
    if let Some(sql) = d.in_use_sql {
        let used: bool = sqlx::query_scalar(sql)
            .bind(id)
            .fetch_one(&mut *tx)
            .await
            .map_err(db_problem)?;
        if used {
            return Err(referenced());
        }
    }
    let mut q = sqlx::query_as(d.delete_sql).bind(id);
    if d.school_owned {
        q = q.bind(school.map(|s| s.to_string()));
    }
    let row: Option<(Uuid, Uuid)> = q.fetch_optional(&mut *tx).await.map_err(|e| match &e {
        sqlx::Error::Database(db) if db.code().as_deref() == Some("23503") => referenced(),
        _ => db_problem(e),
    })?;
    let (id, related) = row.ok_or_else(Problem::not_found)?;
    if let Some(sql) = d.after_sql {
        sqlx::query(sql)
            .bind(id.to_string())
            .bind(Vec::<Uuid>::new())
            .execute(&mut *tx)
            .await
            .map_err(db_problem)?;
    }
    let keys: Vec<String> = (d.seeds)(id, related).iter().map(|k| sc.key(k)).collect();
    outbox::record(&mut tx, &keys).await.map_err(db_problem)?;
    tx.commit().await.map_err(db_problem)?;
    s.cache.invalidate(&keys).await;
    let mut res = Response::new(Vec::new().into());
    *res.status_mut() = StatusCode::NO_CONTENT;
    Ok(res)
}
