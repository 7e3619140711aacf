//! The wire format: every JSON body the data plane sends is one of these types, and
//! `/openapi.json` documents exactly these types (see [`crate::openapi`]).
//!
//! The type's fields are the allow-list, so a column added to a table never reaches a
//! client by accident. Cached documents and write replies leave PostgreSQL as JSON and are
//! decoded into the type before anything is sent (a row that no longer fits is a logged
//! 500); uncached reads are built by PostgreSQL from the type's SQL twin (the `sql_*`
//! macros below) and sent as they are.
//!
//! JSON-array columns (`answer_options`, `class_ids`, `learning_objectives`,
//! `question_ids`, `recommendations`, `student_ids`, `teacher_ids`, `topics`) are `text`
//! in the database, as the storage spec says, and JSON arrays on the wire. Decoding
//! accepts both the column's text and an array, so cached documents written before and
//! after this change both decode.
//!
//! What each role sees is decided here and in the handlers (docs/dataplane.md, "Wire
//! format"): students get no `correct_answer`/`explanation` in question lists, and no
//! `is_correct`/`points_earned` while their attempt is in progress.

use chrono::{DateTime, NaiveDate, Utc};
use serde::de::{DeserializeOwned, Deserializer};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;
use uuid::Uuid;

/// A JSON-array text column, or an array.
fn text_array<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: DeserializeOwned,
{
    match Value::deserialize(d)? {
        Value::String(s) => serde_json::from_str(&s).map_err(serde::de::Error::custom),
        Value::Null => Ok(Vec::new()),
        v => serde_json::from_value(v).map_err(serde::de::Error::custom),
    }
}

/// A JSON-array text column of strings. Elements that are not strings (written by another
/// application) go over as their JSON text rather than failing the whole reply.
fn text_strings<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    let items: Vec<Value> = text_array(d)?;
    Ok(items
        .into_iter()
        .map(|v| match v {
            Value::String(s) => s,
            other => other.to_string(),
        })
        .collect())
}

/// `questions.answer_options` (nullable; the column has no array check). Text that is not
/// a JSON array (accepted by earlier versions) goes over as a one-element array.
fn text_options<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<String>>, D::Error> {
    let to_strings = |items: Vec<Value>| {
        items
            .into_iter()
            .map(|v| match v {
                Value::String(s) => s,
                other => other.to_string(),
            })
            .collect()
    };
    Ok(match Option::<Value>::deserialize(d)? {
        None | Some(Value::Null) => None,
        Some(Value::Array(items)) => Some(to_strings(items)),
        Some(Value::String(s)) => match serde_json::from_str::<Vec<Value>>(&s) {
            Ok(items) => Some(to_strings(items)),
            Err(_) => Some(vec![s]),
        },
        Some(other) => Some(vec![other.to_string()]),
    })
}

/// The school's own record.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct School {
    pub id: Uuid,
    pub name: String,
    pub code: String,
    pub address: String,
    pub contact_email: String,
    pub contact_phone: Option<String>,
    pub is_active: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// A user of the tenant. `role`: 0 Student, 1 Teacher, 2 SchoolAdmin, 3 CourseAdmin,
/// 4 BusinessAdmin, 5 SystemAdmin.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct User {
    pub id: Uuid,
    pub email: String,
    pub full_name: String,
    #[schema(minimum = 0, maximum = 5)]
    pub role: i32,
    pub school_id: Option<Uuid>,
    pub is_active: bool,
    pub external_id: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// A student. `class_ids` lists the classes whose roster holds the student (kept in step
/// with roster changes in the same transaction).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Student {
    pub id: Uuid,
    pub user_id: Uuid,
    pub school_id: Option<Uuid>,
    #[serde(deserialize_with = "text_array")]
    pub class_ids: Vec<Uuid>,
    #[schema(minimum = 6, maximum = 12)]
    pub grade_level: i32,
    pub date_of_birth: Option<NaiveDate>,
    pub parental_consent_granted: bool,
    pub parent_email: Option<String>,
    pub subscription_tier: i32,
    pub subscription_expires_at: Option<DateTime<Utc>>,
    pub level: i32,
    pub xp_points: i32,
    pub daily_streak: i32,
    pub last_activity_date: Option<NaiveDate>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// A student's level, XP, streak and attempt counts.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Progress {
    pub student_id: Uuid,
    pub user_id: Uuid,
    pub level: i32,
    pub xp_points: i32,
    pub daily_streak: i32,
    pub last_activity_date: Option<NaiveDate>,
    pub attempts_completed: i64,
    pub attempts_passed: i64,
}

/// One student on a roster.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RosterStudent {
    pub id: Uuid,
    pub user_id: Uuid,
    pub grade_level: i32,
    pub level: i32,
}

/// A class's roster.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Roster {
    pub class_id: Uuid,
    pub code: String,
    pub name: String,
    pub students: Vec<RosterStudent>,
}

/// The roster as stored by a roster `PUT` (sorted, without duplicates).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RosterUpdate {
    pub class_id: Uuid,
    pub student_ids: Vec<Uuid>,
}

/// A class of a school.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Class {
    pub id: Uuid,
    pub school_id: Uuid,
    pub name: String,
    pub code: String,
    pub grade_level: i32,
    pub subject: i32,
    #[serde(deserialize_with = "text_array")]
    pub teacher_ids: Vec<Uuid>,
    #[serde(deserialize_with = "text_array")]
    pub student_ids: Vec<Uuid>,
    pub academic_year: String,
    pub is_active: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// A course (global content).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Course {
    pub id: Uuid,
    pub name: String,
    pub code: String,
    pub subject: i32,
    pub grade_level: i32,
    pub description: String,
    #[serde(deserialize_with = "text_strings")]
    pub learning_objectives: Vec<String>,
    #[serde(deserialize_with = "text_strings")]
    pub topics: Vec<String>,
    pub is_active: bool,
    pub course_admin_id: Option<Uuid>,
    pub board_name: Option<String>,
    pub module_name: Option<String>,
    #[schema(value_type = Object)]
    pub metadata: Map<String, Value>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// A question (global content). Students get no `correct_answer` and no `explanation`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Question {
    pub id: Uuid,
    pub course_id: Uuid,
    pub question_text: String,
    pub question_type: i32,
    pub subject: i32,
    pub grade_level: i32,
    pub difficulty_level: i32,
    #[serde(deserialize_with = "text_strings")]
    pub topics: Vec<String>,
    #[serde(deserialize_with = "text_strings")]
    pub learning_objectives: Vec<String>,
    #[serde(default, deserialize_with = "text_options")]
    pub answer_options: Option<Vec<String>>,
    /// Omitted for students.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correct_answer: Option<String>,
    /// Omitted for students (and when the question has none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub explanation: Option<String>,
    pub points: i32,
    pub irt_discrimination: Option<f64>,
    pub irt_difficulty: Option<f64>,
    pub irt_guessing: Option<f64>,
    pub is_active: bool,
    pub is_ai_generated: bool,
    pub content_hash: Option<String>,
    pub board_name: Option<String>,
    pub module_name: Option<String>,
    #[schema(value_type = Object)]
    pub metadata: Map<String, Value>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl Question {
    /// The question as a student sees it.
    pub fn for_student(mut self) -> Self {
        self.correct_answer = None;
        self.explanation = None;
        self
    }
}

/// An assessment (global when `school_id` is null).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Assessment {
    pub id: Uuid,
    pub course_id: Uuid,
    pub school_id: Option<Uuid>,
    pub title: String,
    pub description: String,
    pub assessment_type: i32,
    pub subject: i32,
    pub grade_level: i32,
    #[serde(deserialize_with = "text_strings")]
    pub topics: Vec<String>,
    #[serde(deserialize_with = "text_array")]
    pub question_ids: Vec<Uuid>,
    pub total_points: i32,
    pub time_limit_minutes: Option<i32>,
    pub passing_score_percentage: i32,
    pub is_active: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// An attempt at an assessment. `status`: 1 in progress, 2 submitted.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Attempt {
    pub id: Uuid,
    pub student_id: Uuid,
    pub assessment_id: Uuid,
    pub school_id: Option<Uuid>,
    pub class_id: Option<Uuid>,
    pub status: i32,
    pub started_at: Option<DateTime<Utc>>,
    pub completed_at: Option<DateTime<Utc>>,
    pub score: Option<i32>,
    pub max_score: i32,
    pub passed: Option<bool>,
    pub current_question_index: i32,
    pub estimated_ability: Option<f64>,
    pub time_spent_seconds: Option<i32>,
    pub correct_answers: i32,
    pub incorrect_answers: i32,
    pub skipped_questions: i32,
    pub feedback: Option<String>,
    #[serde(deserialize_with = "text_strings")]
    pub recommendations: Vec<String>,
    pub xp_earned: i32,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// The status of a submitted attempt.
pub const SUBMITTED: i32 = 2;

/// One recorded answer of an attempt. `is_correct` and `points_earned` are omitted for a
/// student while the attempt is in progress.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AttemptResponse {
    pub id: Uuid,
    pub question_id: Uuid,
    pub student_answer: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub is_correct: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub points_earned: Option<i32>,
    pub max_points: i32,
    pub time_spent_seconds: i32,
    pub question_order: i32,
    pub feedback: Option<String>,
    pub ai_explanation: Option<String>,
    pub submitted_at: DateTime<Utc>,
}

impl AttemptResponse {
    pub fn hide_correctness(mut self) -> Self {
        self.is_correct = None;
        self.points_earned = None;
        self
    }
}

/// An attempt with its answers, in question order.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AttemptDetail {
    #[serde(flatten)]
    pub attempt: Attempt,
    pub responses: Vec<AttemptResponse>,
}

/// The reply to an answer. A student answers only while the attempt is in progress, so a
/// student never sees `is_correct`/`points_earned` here.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AnswerReceipt {
    pub id: Uuid,
    pub question_id: Uuid,
    pub max_points: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub is_correct: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub points_earned: Option<i32>,
}

/// The student's totals after a submission.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct StudentTotals {
    pub xp_points: i32,
    pub level: i32,
    pub daily_streak: i32,
}

/// The scored attempt and the student's new totals.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Submission {
    pub attempt: Attempt,
    pub student: StudentTotals,
}

/// An orchestration run.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct WorkflowExecution {
    pub execution_id: String,
    pub tenant_id: String,
    pub workflow_name: String,
    /// Pending, Running, Completed or Failed.
    pub status: String,
    pub workflow_definition_json: String,
    pub started_at: DateTime<Utc>,
    pub completed_at: Option<DateTime<Utc>>,
    pub initiated_by: String,
    pub tags: Option<String>,
}

/// An agent's circuit breaker.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CircuitBreaker {
    pub agent_key: String,
    pub tenant_id: String,
    /// Closed, Open or HalfOpen.
    pub state: String,
    pub failure_count: i32,
    pub last_failure_at: Option<DateTime<Utc>>,
    pub last_updated: DateTime<Utc>,
}

/// A routing decision.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RoutingDecision {
    pub id: Uuid,
    pub tenant_id: String,
    pub task_id: String,
    pub task_type: String,
    pub required_capability: String,
    pub selected_agent: String,
    pub reason: String,
    pub routing_score: f64,
    pub workflow_execution_id: Option<String>,
    pub workflow_step_id: Option<String>,
    pub routed_at: DateTime<Utc>,
}

/// An agent's routing statistics.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RoutingStatistics {
    pub agent_key: String,
    pub tenant_id: String,
    pub total_tasks: i32,
    pub successful_tasks: i32,
    pub failed_tasks: i32,
    pub average_duration_ms: i32,
    pub success_rate: f64,
    pub last_updated: DateTime<Utc>,
}

/// `GET /healthz`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Health {
    pub status: String,
}

// ------------------------------------------------------------------------------------
// The same types built by PostgreSQL (uncached reads)
// ------------------------------------------------------------------------------------
//
// Uncached reads send the text PostgreSQL builds as it is: no decoding into
// `serde_json::Value`, no second encoding. Each macro below is the SQL twin of a type
// above, over a row aliased `r`: the same field names (the allow-list, so a new column
// still never reaches a client), the same JSON types, the same spelling of timestamps
// (`sql_ts!`). `tests/replies.rs` checks every SQL-built reply against its type.

/// A `timestamptz` column as chrono writes a `DateTime<Utc>`: UTC with a `Z`, and as
/// many fraction digits as needed (none, 3 or 6; PostgreSQL keeps microseconds).
#[doc(hidden)]
#[macro_export]
macro_rules! sql_ts {
    ($c:literal) => {
        concat!(
            "to_char(",
            $c,
            " AT TIME ZONE 'UTC', CASE WHEN extract(microseconds FROM ",
            $c,
            ")::bigint % 1000000 = 0 THEN 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"' \
             WHEN extract(microseconds FROM ",
            $c,
            ")::bigint % 1000 = 0 THEN 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"' \
             ELSE 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"' END)"
        )
    };
}

/// [`School`] as a `json` object.
#[doc(hidden)]
#[macro_export]
macro_rules! sql_school {
    () => {
        concat!(
            "json_build_object('id', r.id, 'name', r.name, 'code', r.code, 'address', r.address, \
             'contact_email', r.contact_email, 'contact_phone', r.contact_phone, \
             'is_active', r.is_active, 'created_at', ",
            $crate::sql_ts!("r.created_at"),
            ", 'updated_at', ",
            $crate::sql_ts!("r.updated_at"),
            ")"
        )
    };
}

/// [`User`] as a `json` object.
#[doc(hidden)]
#[macro_export]
macro_rules! sql_user {
    () => {
        concat!(
            "json_build_object('id', r.id, 'email', r.email, 'full_name', r.full_name, \
             'role', r.role, 'school_id', r.school_id, 'is_active', r.is_active, \
             'external_id', r.external_id, 'created_at', ",
            $crate::sql_ts!("r.created_at"),
            ", 'updated_at', ",
            $crate::sql_ts!("r.updated_at"),
            ")"
        )
    };
}

/// [`Student`] as a `json` object; `class_ids` (a JSON-array text column) as an array of
/// UUIDs (an element that is not one fails the statement, like a row that does not fit).
#[doc(hidden)]
#[macro_export]
macro_rules! sql_student {
    () => {
        concat!(
            "json_build_object('id', r.id, 'user_id', r.user_id, 'school_id', r.school_id, \
             'class_ids', (SELECT coalesce(json_agg(e.v::uuid ORDER BY e.n), '[]'::json) \
               FROM jsonb_array_elements_text(r.class_ids::jsonb) WITH ORDINALITY e(v, n)), \
             'grade_level', r.grade_level, 'date_of_birth', r.date_of_birth, \
             'parental_consent_granted', r.parental_consent_granted, \
             'parent_email', r.parent_email, 'subscription_tier', r.subscription_tier, \
             'subscription_expires_at', ",
            $crate::sql_ts!("r.subscription_expires_at"),
            ", 'level', r.level, 'xp_points', r.xp_points, 'daily_streak', r.daily_streak, \
             'last_activity_date', r.last_activity_date, 'created_at', ",
            $crate::sql_ts!("r.created_at"),
            ", 'updated_at', ",
            $crate::sql_ts!("r.updated_at"),
            ")"
        )
    };
}

/// The fields of [`Attempt`] as `json_build_object` arguments (so that
/// [`AttemptDetail`] can add `responses`); `recommendations` as strings, elements that are
/// not strings as their JSON text.
#[doc(hidden)]
#[macro_export]
macro_rules! sql_attempt_fields {
    () => {
        concat!(
            "'id', r.id, 'student_id', r.student_id, 'assessment_id', r.assessment_id, \
             'school_id', r.school_id, 'class_id', r.class_id, 'status', r.status, \
             'started_at', ",
            $crate::sql_ts!("r.started_at"),
            ", 'completed_at', ",
            $crate::sql_ts!("r.completed_at"),
            ", 'score', r.score, 'max_score', r.max_score, 'passed', r.passed, \
             'current_question_index', r.current_question_index, \
             'estimated_ability', r.estimated_ability, \
             'time_spent_seconds', r.time_spent_seconds, \
             'correct_answers', r.correct_answers, 'incorrect_answers', r.incorrect_answers, \
             'skipped_questions', r.skipped_questions, 'feedback', r.feedback, \
             'recommendations', (SELECT coalesce(json_agg(CASE jsonb_typeof(e.v) \
               WHEN 'string' THEN e.v #>> '{}' ELSE e.v::text END ORDER BY e.n), '[]'::json) \
               FROM jsonb_array_elements(r.recommendations::jsonb) WITH ORDINALITY e(v, n)), \
             'xp_earned', r.xp_earned, 'created_at', ",
            $crate::sql_ts!("r.created_at"),
            ", 'updated_at', ",
            $crate::sql_ts!("r.updated_at")
        )
    };
}

/// [`AttemptResponse`] over a row aliased `x`, as `jsonb`; `is_correct` and
/// `points_earned` are left out when `$hide` (an SQL boolean) is true, or when null.
#[doc(hidden)]
#[macro_export]
macro_rules! sql_attempt_response {
    ($hide:literal) => {
        concat!(
            "jsonb_build_object('id', x.id, 'question_id', x.question_id, \
             'student_answer', x.student_answer, 'max_points', x.max_points, \
             'time_spent_seconds', x.time_spent_seconds, 'question_order', x.question_order, \
             'feedback', x.feedback, 'ai_explanation', x.ai_explanation, 'submitted_at', ",
            $crate::sql_ts!("x.submitted_at"),
            ") || CASE WHEN ",
            $hide,
            " THEN '{}'::jsonb ELSE jsonb_strip_nulls(jsonb_build_object(\
             'is_correct', x.is_correct, 'points_earned', x.points_earned)) END"
        )
    };
}

/// [`WorkflowExecution`] as a `json` object.
#[doc(hidden)]
#[macro_export]
macro_rules! sql_workflow {
    () => {
        concat!(
            "json_build_object('execution_id', r.execution_id, 'tenant_id', r.tenant_id, \
             'workflow_name', r.workflow_name, 'status', r.status, \
             'workflow_definition_json', r.workflow_definition_json, 'started_at', ",
            $crate::sql_ts!("r.started_at"),
            ", 'completed_at', ",
            $crate::sql_ts!("r.completed_at"),
            ", 'initiated_by', r.initiated_by, 'tags', r.tags)"
        )
    };
}

/// [`CircuitBreaker`] as a `json` object.
#[doc(hidden)]
#[macro_export]
macro_rules! sql_breaker {
    () => {
        concat!(
            "json_build_object('agent_key', r.agent_key, 'tenant_id', r.tenant_id, \
             'state', r.state, 'failure_count', r.failure_count, 'last_failure_at', ",
            $crate::sql_ts!("r.last_failure_at"),
            ", 'last_updated', ",
            $crate::sql_ts!("r.last_updated"),
            ")"
        )
    };
}

/// [`RoutingDecision`] as a `json` object.
#[doc(hidden)]
#[macro_export]
macro_rules! sql_decision {
    () => {
        concat!(
            "json_build_object('id', r.id, 'tenant_id', r.tenant_id, 'task_id', r.task_id, \
             'task_type', r.task_type, 'required_capability', r.required_capability, \
             'selected_agent', r.selected_agent, 'reason', r.reason, \
             'routing_score', r.routing_score, \
             'workflow_execution_id', r.workflow_execution_id, \
             'workflow_step_id', r.workflow_step_id, 'routed_at', ",
            $crate::sql_ts!("r.routed_at"),
            ")"
        )
    };
}

/// [`RoutingStatistics`] as a `json` object.
#[doc(hidden)]
#[macro_export]
macro_rules! sql_statistics {
    () => {
        concat!(
            "json_build_object('agent_key', r.agent_key, 'tenant_id', r.tenant_id, \
             'total_tasks', r.total_tasks, 'successful_tasks', r.successful_tasks, \
             'failed_tasks', r.failed_tasks, 'average_duration_ms', r.average_duration_ms, \
             'success_rate', r.success_rate, 'last_updated', ",
            $crate::sql_ts!("r.last_updated"),
            ")"
        )
    };
}

/// A page (`items` and `next_after`, see [`Keyed`]) as one `text` column `doc`: `$item`
/// is one of the macros above over the rows of `$rows` (a query aliased `r` here, in key
/// order, at most `$limit` rows), `$key` the key column (`r.…`).
#[doc(hidden)]
#[macro_export]
macro_rules! sql_page {
    ($item:expr, $key:literal, $limit:literal, $rows:expr) => {
        concat!(
            "SELECT json_build_object('items', coalesce(json_agg(",
            $item,
            " ORDER BY ",
            $key,
            "), '[]'::json), 'next_after', CASE WHEN count(*) = ",
            $limit,
            " THEN (array_agg(",
            $key,
            " ORDER BY ",
            $key,
            " DESC))[1] END)::text AS doc FROM (",
            $rows,
            ") r"
        )
    };
}

/// A key-ordered page: `next_after` is the key of the last item when the page is full
/// (pass it as `after` for the next page), else null.
pub trait Keyed {
    type Key: Serialize + Clone;
    fn key(&self) -> Self::Key;
}

macro_rules! pages {
    ($($page:ident of $item:ident by $field:ident: $key:ty;)*) => {$(
        #[doc = concat!("A page of [`", stringify!($item), "`], ordered by `", stringify!($field),
            "`. `next_after` is the last item's `", stringify!($field),
            "` when the page is full (pass it as `after`), else null.")]
        #[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
        pub struct $page {
            pub items: Vec<$item>,
            pub next_after: Option<$key>,
        }

        impl Keyed for $item {
            type Key = $key;
            fn key(&self) -> $key {
                self.$field.clone()
            }
        }

        impl From<(Vec<$item>, Option<$key>)> for $page {
            fn from((items, next_after): (Vec<$item>, Option<$key>)) -> Self {
                $page { items, next_after }
            }
        }
    )*};
}

pages! {
    UserPage of User by id: Uuid;
    StudentPage of Student by id: Uuid;
    QuestionPage of Question by id: Uuid;
    WorkflowPage of WorkflowExecution by execution_id: String;
    BreakerPage of CircuitBreaker by agent_key: String;
    DecisionPage of RoutingDecision by id: Uuid;
    StatisticsPage of RoutingStatistics by agent_key: String;
}

/// Splits a page's rows (at most `limit`, in key order) into items and `next_after`.
pub fn page<T: Keyed>(items: Vec<T>, limit: i64) -> (Vec<T>, Option<T::Key>) {
    let next = (items.len() as i64 == limit)
        .then(|| items.last().map(Keyed::key))
        .flatten();
    (items, next)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn array_columns_decode_from_text_and_from_arrays() {
        let id = Uuid::new_v4();
        for v in [json!(format!("[\"{id}\"]")), json!([id])] {
            let ids: Vec<Uuid> = text_array(v).unwrap_or_default();
            assert_eq!(ids, vec![id]);
        }
        let s: Vec<String> = text_strings(json!("[\"a\", 2]")).unwrap_or_default();
        assert_eq!(s, vec!["a".to_owned(), "2".to_owned()]);
        assert_eq!(
            text_options(json!("A|B")).unwrap_or_default(),
            Some(vec!["A|B".to_owned()])
        );
        assert_eq!(
            text_options(json!("[\"A\",\"B\"]")).unwrap_or_default(),
            Some(vec!["A".to_owned(), "B".to_owned()])
        );
        assert_eq!(text_options(Value::Null).unwrap_or_default(), None);
    }
}
