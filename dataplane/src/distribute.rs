//! Distributing global content (courses, questions, global assessments) to every tenant.
//!
//! **Decision:** every tenant database holds a replica of the global catalogue under the
//! same ids (foreign keys need the rows locally; a school keeps working when another
//! database is down). The catalogue is authored in one place — by default the self-service
//! database, where platform admins write it through the ordinary `PUT` endpoints — and
//! `edumind-dataplane distribute-content` copies it into every other tenant:
//!
//! - one transaction per tenant: courses, then questions, then assessments (foreign-key
//!   order), each an upsert by id of the whole batch in one statement
//!   (`jsonb_populate_recordset`); a row whose content columns already match is not
//!   touched (`WHERE … IS DISTINCT FROM …`), so a second run changes nothing, not even
//!   `updated_at`;
//! - per-school answer counters (`times_answered`, `times_correct`) are never copied;
//!   assessments with a `school_id` are school content and are refused;
//! - tenants run `concurrency` at a time through the [`PoolManager`], so the job holds at
//!   most one connection per tenant and stays within each server's budget;
//! - after a tenant commits, the cache keys of what changed there are invalidated;
//! - one failing tenant (unreachable, a course code taken by a local course, …) rolls
//!   back only itself and is reported; the others proceed. The report lists every tenant.
//!
//! Not done: removing catalogue rows that were deleted at the source (deletes are per
//! tenant, through the `DELETE` endpoints, and refuse content that attempts still use).
//!
//! All SQL here is fixed text; the batch travels as one `jsonb` parameter.

use std::collections::HashMap;
use std::sync::Arc;

use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::{Connection, PgConnection};
use uuid::Uuid;

use crate::cache::{self, Cache};
use crate::pool::PoolManager;
use crate::tenants::{Tenant, TenantId};

/// The global catalogue: rows in the shape `to_jsonb(<table>.*)` produces (column name →
/// value). Missing optional columns take their defaults.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bundle {
    #[serde(default)]
    pub courses: Vec<Value>,
    #[serde(default)]
    pub questions: Vec<Value>,
    #[serde(default)]
    pub assessments: Vec<Value>,
}

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("{0}[{1}] has no valid \"id\"")]
    NoId(&'static str, usize),
    #[error("{0}[{1}] is not an object")]
    NotObject(&'static str, usize),
    #[error(
        "assessments[{0}] belongs to a school (school_id is set); only global content is distributed"
    )]
    SchoolAssessment(usize),
    #[error("{0} lists id {1} twice")]
    Duplicate(&'static str, Uuid),
    #[error("cannot read the catalogue from the source tenant: {0}")]
    Source(String),
}

impl Bundle {
    /// Checks the shape the SQL relies on; content values are checked by the database's
    /// constraints in each tenant.
    pub fn validate(&self) -> Result<(), BundleError> {
        for (table, rows) in [
            ("courses", &self.courses),
            ("questions", &self.questions),
            ("assessments", &self.assessments),
        ] {
            let mut seen = std::collections::HashSet::new();
            for (i, row) in rows.iter().enumerate() {
                let obj = row.as_object().ok_or(BundleError::NotObject(table, i))?;
                let id = obj
                    .get("id")
                    .and_then(Value::as_str)
                    .and_then(|s| Uuid::parse_str(s).ok())
                    .ok_or(BundleError::NoId(table, i))?;
                if !seen.insert(id) {
                    return Err(BundleError::Duplicate(table, id));
                }
                if table == "assessments" && obj.get("school_id").is_some_and(|v| !v.is_null()) {
                    return Err(BundleError::SchoolAssessment(i));
                }
            }
        }
        Ok(())
    }
}

/// Rows inserted and updated in one table of one tenant.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    pub inserted: u64,
    pub updated: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Applied {
    pub courses: Counts,
    pub questions: Counts,
    pub assessments: Counts,
}

impl Applied {
    pub fn changed(&self) -> bool {
        *self != Applied::default()
    }
}

/// The outcome for one tenant.
#[derive(Debug, Clone, Serialize)]
pub struct TenantReport {
    pub tenant: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub applied: Option<Applied>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

const EXPORT_SQL: &str = crate::scoped!(
    "SELECT jsonb_build_object(\
       'courses', (SELECT coalesce(jsonb_agg(to_jsonb(c) ORDER BY c.id), '[]'::jsonb) FROM courses c), \
       'questions', (SELECT coalesce(jsonb_agg(to_jsonb(q) - 'times_answered' - 'times_correct' ORDER BY q.id), '[]'::jsonb) FROM questions q), \
       'assessments', (SELECT coalesce(jsonb_agg(to_jsonb(a) ORDER BY a.id), '[]'::jsonb) FROM assessments a WHERE a.school_id IS NULL)\
     ) AS doc"
);

/// Reads the global catalogue from `tenant` (as a platform admin, so row-level security
/// in the self-service database lets every content row through).
pub async fn export(pools: &PoolManager, tenant: &Tenant) -> Result<Bundle, BundleError> {
    let mut conn = pools
        .acquire(tenant)
        .await
        .map_err(|e| BundleError::Source(e.to_string()))?;
    let doc: Option<Value> = sqlx::query_scalar(EXPORT_SQL)
        .bind(Uuid::nil().to_string())
        .bind("on")
        .fetch_optional(&mut *conn)
        .await
        .map_err(|e| BundleError::Source(e.to_string()))?;
    let bundle: Bundle = serde_json::from_value(doc.unwrap_or_default())
        .map_err(|e| BundleError::Source(e.to_string()))?;
    bundle.validate()?;
    Ok(bundle)
}

// One statement per table: upsert the batch by id, touching only rows whose content
// differs. `xmax = 0` tells an inserted row from an updated one.
const COURSES_SQL: &str = "\
WITH src AS (SELECT * FROM jsonb_populate_recordset(NULL::courses, $1::jsonb)) \
INSERT INTO courses AS t (id, name, code, subject, grade_level, description, learning_objectives, topics, \
  is_active, course_admin_id, board_name, module_name, metadata) \
SELECT id, name, code, subject, grade_level, description, coalesce(learning_objectives, '[]'), \
  coalesce(topics, '[]'), coalesce(is_active, true), course_admin_id, board_name, module_name, \
  coalesce(metadata, '{}'::jsonb) FROM src \
ON CONFLICT (id) DO UPDATE SET (name, code, subject, grade_level, description, learning_objectives, topics, \
  is_active, course_admin_id, board_name, module_name, metadata, updated_at) = \
  (EXCLUDED.name, EXCLUDED.code, EXCLUDED.subject, EXCLUDED.grade_level, EXCLUDED.description, \
  EXCLUDED.learning_objectives, EXCLUDED.topics, EXCLUDED.is_active, EXCLUDED.course_admin_id, \
  EXCLUDED.board_name, EXCLUDED.module_name, EXCLUDED.metadata, now()) \
WHERE (t.name, t.code, t.subject, t.grade_level, t.description, t.learning_objectives, t.topics, t.is_active, \
  t.course_admin_id, t.board_name, t.module_name, t.metadata) IS DISTINCT FROM \
  (EXCLUDED.name, EXCLUDED.code, EXCLUDED.subject, EXCLUDED.grade_level, EXCLUDED.description, \
  EXCLUDED.learning_objectives, EXCLUDED.topics, EXCLUDED.is_active, EXCLUDED.course_admin_id, \
  EXCLUDED.board_name, EXCLUDED.module_name, EXCLUDED.metadata) \
RETURNING t.id, t.id, (t.xmax = 0)";

const QUESTIONS_SQL: &str = "\
WITH src AS (SELECT * FROM jsonb_populate_recordset(NULL::questions, $1::jsonb)) \
INSERT INTO questions AS t (id, course_id, question_text, question_type, subject, grade_level, difficulty_level, \
  topics, learning_objectives, answer_options, correct_answer, explanation, points, irt_discrimination, \
  irt_difficulty, irt_guessing, is_active, is_ai_generated, content_hash, board_name, module_name, metadata) \
SELECT id, course_id, question_text, question_type, subject, grade_level, difficulty_level, \
  coalesce(topics, '[]'), coalesce(learning_objectives, '[]'), answer_options, correct_answer, explanation, \
  coalesce(points, 1), irt_discrimination, irt_difficulty, irt_guessing, coalesce(is_active, true), \
  coalesce(is_ai_generated, false), content_hash, board_name, module_name, coalesce(metadata, '{}'::jsonb) \
FROM src \
ON CONFLICT (id) DO UPDATE SET (course_id, question_text, question_type, subject, grade_level, difficulty_level, \
  topics, learning_objectives, answer_options, correct_answer, explanation, points, irt_discrimination, \
  irt_difficulty, irt_guessing, is_active, is_ai_generated, content_hash, board_name, module_name, metadata, \
  updated_at) = \
  (EXCLUDED.course_id, EXCLUDED.question_text, EXCLUDED.question_type, EXCLUDED.subject, EXCLUDED.grade_level, \
  EXCLUDED.difficulty_level, EXCLUDED.topics, EXCLUDED.learning_objectives, EXCLUDED.answer_options, \
  EXCLUDED.correct_answer, EXCLUDED.explanation, EXCLUDED.points, EXCLUDED.irt_discrimination, \
  EXCLUDED.irt_difficulty, EXCLUDED.irt_guessing, EXCLUDED.is_active, EXCLUDED.is_ai_generated, \
  EXCLUDED.content_hash, EXCLUDED.board_name, EXCLUDED.module_name, EXCLUDED.metadata, now()) \
WHERE (t.course_id, t.question_text, t.question_type, t.subject, t.grade_level, t.difficulty_level, t.topics, \
  t.learning_objectives, t.answer_options, t.correct_answer, t.explanation, t.points, t.irt_discrimination, \
  t.irt_difficulty, t.irt_guessing, t.is_active, t.is_ai_generated, t.content_hash, t.board_name, \
  t.module_name, t.metadata) IS DISTINCT FROM \
  (EXCLUDED.course_id, EXCLUDED.question_text, EXCLUDED.question_type, EXCLUDED.subject, EXCLUDED.grade_level, \
  EXCLUDED.difficulty_level, EXCLUDED.topics, EXCLUDED.learning_objectives, EXCLUDED.answer_options, \
  EXCLUDED.correct_answer, EXCLUDED.explanation, EXCLUDED.points, EXCLUDED.irt_discrimination, \
  EXCLUDED.irt_difficulty, EXCLUDED.irt_guessing, EXCLUDED.is_active, EXCLUDED.is_ai_generated, \
  EXCLUDED.content_hash, EXCLUDED.board_name, EXCLUDED.module_name, EXCLUDED.metadata) \
RETURNING t.id, t.course_id, (t.xmax = 0)";

const ASSESSMENTS_SQL: &str = "\
WITH src AS (SELECT * FROM jsonb_populate_recordset(NULL::assessments, $1::jsonb)) \
INSERT INTO assessments AS t (id, course_id, school_id, title, description, assessment_type, subject, grade_level, \
  topics, question_ids, total_points, time_limit_minutes, passing_score_percentage, is_active) \
SELECT id, course_id, NULL, title, description, assessment_type, subject, grade_level, coalesce(topics, '[]'), \
  coalesce(question_ids, '[]'), coalesce(total_points, 0), time_limit_minutes, \
  coalesce(passing_score_percentage, 70), coalesce(is_active, true) FROM src \
ON CONFLICT (id) DO UPDATE SET (course_id, title, description, assessment_type, subject, grade_level, topics, \
  question_ids, total_points, time_limit_minutes, passing_score_percentage, is_active, updated_at) = \
  (EXCLUDED.course_id, EXCLUDED.title, EXCLUDED.description, EXCLUDED.assessment_type, EXCLUDED.subject, \
  EXCLUDED.grade_level, EXCLUDED.topics, EXCLUDED.question_ids, EXCLUDED.total_points, \
  EXCLUDED.time_limit_minutes, EXCLUDED.passing_score_percentage, EXCLUDED.is_active, now()) \
WHERE t.school_id IS NULL AND (t.course_id, t.title, t.description, t.assessment_type, t.subject, t.grade_level, \
  t.topics, t.question_ids, t.total_points, t.time_limit_minutes, t.passing_score_percentage, t.is_active) \
  IS DISTINCT FROM (EXCLUDED.course_id, EXCLUDED.title, EXCLUDED.description, EXCLUDED.assessment_type, \
  EXCLUDED.subject, EXCLUDED.grade_level, EXCLUDED.topics, EXCLUDED.question_ids, EXCLUDED.total_points, \
  EXCLUDED.time_limit_minutes, EXCLUDED.passing_score_percentage, EXCLUDED.is_active) \
RETURNING t.id, t.course_id, (t.xmax = 0)";

type Returned = Vec<(Uuid, Uuid, bool)>;

fn count(rows: &Returned) -> Counts {
    let inserted = rows.iter().filter(|r| r.2).count() as u64;
    Counts {
        inserted,
        updated: rows.len() as u64 - inserted,
    }
}

/// Applies `bundle` to one tenant in one transaction; returns what changed and the cache
/// seeds to invalidate after commit.
async fn apply(
    conn: &mut PgConnection,
    tenant: &TenantId,
    bundle: &Bundle,
) -> Result<(Applied, Vec<String>), sqlx::Error> {
    let mut tx = conn.begin().await?;
    // Platform-admin scope for the transaction (row-level security in self-service).
    let _: Option<Value> = sqlx::query_scalar(crate::scoped!("SELECT '{}'::jsonb AS doc"))
        .bind(Uuid::nil().to_string())
        .bind("on")
        .fetch_optional(&mut *tx)
        .await?;
    let question_ids: Vec<Uuid> = bundle
        .questions
        .iter()
        .filter_map(|q| q.get("id").and_then(Value::as_str))
        .filter_map(|s| Uuid::parse_str(s).ok())
        .collect();
    let before: HashMap<Uuid, Uuid> = sqlx::query_as::<_, (Uuid, Uuid)>(
        "SELECT id, course_id FROM questions WHERE id = ANY($1) FOR UPDATE",
    )
    .bind(&question_ids)
    .fetch_all(&mut *tx)
    .await?
    .into_iter()
    .collect();
    let mut run = async |sql: &'static str, rows: &Vec<Value>| -> Result<Returned, sqlx::Error> {
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        sqlx::query_as(sql)
            .bind(Value::Array(rows.clone()))
            .fetch_all(&mut *tx)
            .await
    };
    let courses = run(COURSES_SQL, &bundle.courses).await?;
    let questions = run(QUESTIONS_SQL, &bundle.questions).await?;
    let assessments = run(ASSESSMENTS_SQL, &bundle.assessments).await?;
    let mut seeds: Vec<String> = Vec::new();
    for (id, _, _) in &courses {
        seeds.push(format!("course:{id}:questions"));
    }
    for (id, course, _) in &questions {
        seeds.push(format!("course:{course}:questions"));
        if let Some(old) = before.get(id).filter(|old| *old != course) {
            seeds.push(format!("course:{old}:questions"));
        }
    }
    for (id, _, _) in &assessments {
        seeds.push(format!("assessment:{id}:meta"));
    }
    seeds.sort();
    seeds.dedup();
    // Durable with the data: the keys go into the tenant's outbox in this transaction.
    let keys: Vec<String> = seeds.iter().map(|s| cache::key(tenant, s)).collect();
    crate::outbox::record(&mut tx, &keys).await?;
    tx.commit().await?;
    Ok((
        Applied {
            courses: count(&courses),
            questions: count(&questions),
            assessments: count(&assessments),
        },
        seeds,
    ))
}

/// Upserts `bundle` into every tenant in `tenants`, `concurrency` at a time. The report
/// has one entry per tenant, sorted by tenant id.
pub async fn distribute(
    pools: &PoolManager,
    cache: &Cache,
    tenants: Vec<Arc<Tenant>>,
    bundle: &Bundle,
    concurrency: usize,
) -> Vec<TenantReport> {
    let mut reports: Vec<TenantReport> = futures_util::stream::iter(tenants)
        .map(|tenant| async move {
            let name = tenant.id.to_string();
            let result = async {
                let mut conn = pools.acquire(&tenant).await.map_err(|e| e.to_string())?;
                let (applied, seeds) = apply(&mut conn, &tenant.id, bundle).await.map_err(|e| {
                    // Database errors name constraints and columns, never passwords.
                    e.to_string()
                })?;
                if !seeds.is_empty() {
                    let keys: Vec<String> =
                        seeds.iter().map(|s| cache::key(&tenant.id, s)).collect();
                    cache.invalidate(&keys).await;
                }
                Ok::<_, String>(applied)
            }
            .await;
            match result {
                Ok(applied) => TenantReport {
                    tenant: name,
                    applied: Some(applied),
                    error: None,
                },
                Err(e) => {
                    tracing::warn!(tenant = %name, error = %e, "content distribution failed");
                    TenantReport {
                        tenant: name,
                        applied: None,
                        error: Some(e),
                    }
                }
            }
        })
        .buffer_unordered(concurrency.max(1))
        .collect()
        .await;
    reports.sort_by(|a, b| a.tenant.cmp(&b.tenant));
    reports
}

/// The tenants a run writes to: every tenant except the source.
pub fn targets(all: Vec<Arc<Tenant>>, source: Option<TenantId>) -> Vec<Arc<Tenant>> {
    all.into_iter().filter(|t| Some(t.id) != source).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn bundles_are_checked_before_any_tenant_is_touched() {
        let id = Uuid::new_v4();
        let ok = Bundle {
            courses: vec![json!({"id": id, "name": "A"})],
            ..Bundle::default()
        };
        assert!(ok.validate().is_ok());
        let dup = Bundle {
            courses: vec![json!({"id": id}), json!({"id": id})],
            ..Bundle::default()
        };
        assert!(matches!(
            dup.validate(),
            Err(BundleError::Duplicate("courses", _))
        ));
        let school = Bundle {
            assessments: vec![json!({"id": id, "school_id": Uuid::new_v4()})],
            ..Bundle::default()
        };
        assert!(matches!(
            school.validate(),
            Err(BundleError::SchoolAssessment(0))
        ));
        let no_id = Bundle {
            questions: vec![json!({"name": "x"})],
            ..Bundle::default()
        };
        assert!(matches!(
            no_id.validate(),
            Err(BundleError::NoId("questions", 0))
        ));
        assert!(serde_json::from_value::<Bundle>(json!({"lessons": []})).is_err());
    }

    #[test]
    fn counts_split_inserts_from_updates() {
        let a = Uuid::new_v4();
        let rows = vec![(a, a, true), (a, a, false), (a, a, false)];
        assert_eq!(
            count(&rows),
            Counts {
                inserted: 1,
                updated: 2
            }
        );
        assert!(!Applied::default().changed());
    }
}
