//! Global content: cached reads (a course's questions, assessment metadata) and the upserts of courses, questions and assessments.

use super::*;

/// Courses, questions and assessments: this module's route group.
pub(super) fn routes(s: &SharedState) -> BoxedFilter<(Response,)> {
    any_of([
        course_questions(s),
        assessment_get(s),
        course_put(s),
        question_put(s),
        assessment_put(s),
    ])
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct QuestionsQuery {
    /// The previous page's `next_after`.
    after: Option<Uuid>,
    /// Page size.
    #[param(minimum = 1, maximum = 200)]
    limit: Option<i64>,
}

/// `GET /v1/tenants/{tenant}/courses/{id}/questions?after=&limit=`: the course's active
/// questions, a page at a time by id; the whole list is cached one hour under
/// `course:{id}:questions` and pages are cut from it. Students do not get answers.
pub fn course_questions(s: &SharedState) -> BoxedFilter<(Response,)> {
    let f = warp::path!("v1" / "tenants" / String / "courses" / String / "questions")
        .and(warp::get())
        .and(query::<QuestionsQuery>())
        .and(principal(s))
        .and(if_none_match())
        .and(with(s))
        .then(|t: String, id: String, q: Result<QuestionsQuery, Problem>, who: Who, inm: Option<String>, s: SharedState| async move {
            reply(
                async {
                    let sc = scope(&s, who, &t)?;
                    let q = q?;
                    let id = path_uuid(&id)?;
                    let limit = page_limit(q.limit)?;
                    // One stored reply per visibility and page.
                    let student = sc.access.is_student();
                    let variant = format!(
                        "{}:{}:{limit}",
                        if student { "student" } else { "staff" },
                        q.after.map(|a| a.to_string()).unwrap_or_default()
                    );
                    let stored = cached_reply(
                        &s,
                        &sc,
                        "questions",
                        || format!("course:{id}:questions"),
                        &variant,
                        cache::COURSE_QUESTIONS_TTL,
                        scoped!(
                            "SELECT CASE WHEN NOT EXISTS (SELECT 1 FROM courses WHERE id = $3::uuid) THEN NULL \
                             ELSE coalesce((SELECT jsonb_agg(to_jsonb(q) ORDER BY q.id) FROM questions q \
                               WHERE q.course_id = $3::uuid AND q.is_active), '[]'::jsonb) END AS doc"
                        ),
                        vec![json!(id.to_string())],
                        |doc| {
                            let Some(doc) = doc else {
                                return Ok(cache::Stored::NotFound);
                            };
                            let all: Vec<wire::Question> = typed_ref(doc)?;
                            let items = all
                                .into_iter()
                                .filter(|x| q.after.is_none_or(|a| x.id > a))
                                .take(limit as usize)
                                .map(|x| if student { x.for_student() } else { x })
                                .collect();
                            let page: wire::QuestionPage = wire::page(items, limit).into();
                            rendered(&page)
                        },
                    )
                    .await?;
                    stored_reply(stored, inm.as_deref())
                }
                .await,
            )
        })
        .boxed();
    instrument(s, openapi::COURSE_QUESTIONS, f)
}

/// `GET /v1/tenants/{tenant}/assessments/{id}`: assessment metadata; cached 15 minutes
/// under `assessment:{id}:meta`. Students see active assessments only.
pub fn assessment_get(s: &SharedState) -> BoxedFilter<(Response,)> {
    let f = warp::path!("v1" / "tenants" / String / "assessments" / String)
        .and(warp::get())
        .and(principal(s))
        .and(if_none_match())
        .and(with(s))
        .then(
            |t: String, id: String, who: Who, inm: Option<String>, s: SharedState| async move {
                reply(
                    async {
                        let sc = scope(&s, who, &t)?;
                        let id = path_uuid(&id)?;
                        // Students never see an inactive assessment: their own variant.
                        let student = sc.access.is_student();
                        let stored = cached_reply(
                            &s,
                            &sc,
                            "assessment",
                            || format!("assessment:{id}:meta"),
                            if student { "student" } else { "staff" },
                            cache::ASSESSMENT_META_TTL,
                            scoped!(
                                "SELECT to_jsonb(a) AS doc FROM assessments a WHERE a.id = $3::uuid"
                            ),
                            vec![json!(id.to_string())],
                            |doc| {
                                let Some(doc) = doc else {
                                    return Ok(cache::Stored::NotFound);
                                };
                                let a: wire::Assessment = typed_ref(doc)?;
                                if student && !a.is_active {
                                    return Ok(cache::Stored::NotFound);
                                }
                                rendered(&a)
                            },
                        )
                        .await?;
                        stored_reply(stored, inm.as_deref())
                    }
                    .await,
                )
            },
        )
        .boxed();
    instrument(s, openapi::ASSESSMENT_GET, f)
}

pub(super) fn check_max(field: &str, v: &str, max: usize) -> Result<(), Problem> {
    if v.chars().count() > max {
        return Err(Problem::bad_request(format!(
            "{field} must be at most {max} characters"
        )));
    }
    Ok(())
}

pub(super) fn check_grade(grade_level: i32) -> Result<(), Problem> {
    if !(6..=12).contains(&grade_level) {
        return Err(Problem::bad_request("grade_level must be 6..=12"));
    }
    Ok(())
}

pub(super) fn json_text<T: serde::Serialize>(v: &T) -> Result<String, Problem> {
    serde_json::to_string(v).map_err(|_| Problem::internal())
}

pub(super) fn content_scope(s: &SharedState, who: Who, t: &str) -> Result<Scope, Problem> {
    scope_where(s, who, t, Access::writes_content)
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CourseBody {
    name: String,
    code: String,
    subject: i32,
    grade_level: i32,
    #[serde(default)]
    description: String,
    #[serde(default)]
    learning_objectives: Vec<String>,
    #[serde(default)]
    topics: Vec<String>,
    #[serde(default = "yes")]
    is_active: bool,
    course_admin_id: Option<Uuid>,
    board_name: Option<String>,
    module_name: Option<String>,
    #[serde(default)]
    metadata: serde_json::Map<String, Value>,
}

/// `PUT /v1/tenants/{tenant}/courses/{id}`: creates or replaces a course (global content,
/// same id in every tenant); invalidates `course:{id}:questions`. Content writers.
pub fn course_put(s: &SharedState) -> BoxedFilter<(Response,)> {
    let f = warp::path!("v1" / "tenants" / String / "courses" / String)
        .and(warp::put())
        .and(principal(s))
        .and(json_body::<CourseBody>(s))
        .and(with(s))
        .then(|t: String, id: String, who: Who, b: Result<CourseBody, Problem>, s: SharedState| async move {
            reply(
                async {
                    let sc = content_scope(&s, who, &t)?;
                    let b = b?;
                    let id = path_uuid(&id)?;
                    check_len("name", &b.name, 255)?;
                    check_len("code", &b.code, 50)?;
                    check_max("description", &b.description, 2000)?;
                    check_grade(b.grade_level)?;
                    check_opt("board_name", &b.board_name, 100)?;
                    check_opt("module_name", &b.module_name, 200)?;
                    // A missing course is cached as "not found" too.
                    let keys = [sc.key(&format!("course:{id}:questions"))];
                    let mut conn = s.pools.acquire(&sc.tenant).await.map_err(pool_problem)?;
                    let mut tx = begin_recording(&mut conn, &sc, &keys).await?;
                    let doc: Value = sqlx::query_scalar(
                        "INSERT INTO courses (id, name, code, subject, grade_level, description, learning_objectives, \
                         topics, is_active, course_admin_id, board_name, module_name, metadata) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) \
                         ON CONFLICT (id) DO UPDATE SET name = EXCLUDED.name, code = EXCLUDED.code, \
                         subject = EXCLUDED.subject, grade_level = EXCLUDED.grade_level, \
                         description = EXCLUDED.description, learning_objectives = EXCLUDED.learning_objectives, \
                         topics = EXCLUDED.topics, is_active = EXCLUDED.is_active, \
                         course_admin_id = EXCLUDED.course_admin_id, board_name = EXCLUDED.board_name, \
                         module_name = EXCLUDED.module_name, metadata = EXCLUDED.metadata, updated_at = now() \
                         RETURNING to_jsonb(courses.*)",
                    )
                    .bind(id)
                    .bind(&b.name)
                    .bind(&b.code)
                    .bind(b.subject)
                    .bind(b.grade_level)
                    .bind(&b.description)
                    .bind(json_text(&b.learning_objectives)?)
                    .bind(json_text(&b.topics)?)
                    .bind(b.is_active)
                    .bind(b.course_admin_id)
                    .bind(&b.board_name)
                    .bind(&b.module_name)
                    .bind(Value::Object(b.metadata))
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(db_problem)?;
                    tx.commit().await.map_err(db_problem)?;
                    s.cache.invalidate(&keys).await;
                    Ok(json_reply(StatusCode::OK, &typed::<wire::Course>(doc)?))
                }
                .await,
            )
        })
        .boxed();
    instrument(s, openapi::COURSE_PUT, f)
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct QuestionBody {
    course_id: Uuid,
    question_text: String,
    question_type: i32,
    subject: i32,
    grade_level: i32,
    difficulty_level: i32,
    #[serde(default)]
    topics: Vec<String>,
    #[serde(default)]
    learning_objectives: Vec<String>,
    /// The choices of a multiple-choice question.
    answer_options: Option<Vec<String>>,
    correct_answer: String,
    explanation: Option<String>,
    #[serde(default = "one")]
    points: i32,
    irt_discrimination: Option<f64>,
    irt_difficulty: Option<f64>,
    irt_guessing: Option<f64>,
    #[serde(default = "yes")]
    is_active: bool,
    #[serde(default)]
    is_ai_generated: bool,
    content_hash: Option<String>,
    board_name: Option<String>,
    module_name: Option<String>,
    #[serde(default)]
    metadata: serde_json::Map<String, Value>,
}

pub(super) fn one() -> i32 {
    1
}

/// `PUT /v1/tenants/{tenant}/questions/{id}`: creates or replaces a question; invalidates
/// the question list of its course (and of its previous course when it moved).
pub fn question_put(s: &SharedState) -> BoxedFilter<(Response,)> {
    let f = warp::path!("v1" / "tenants" / String / "questions" / String)
        .and(warp::put())
        .and(principal(s))
        .and(json_body::<QuestionBody>(s))
        .and(with(s))
        .then(|t: String, id: String, who: Who, b: Result<QuestionBody, Problem>, s: SharedState| async move {
            reply(
                async {
                    let sc = content_scope(&s, who, &t)?;
                    let b = b?;
                    let id = path_uuid(&id)?;
                    check_len("question_text", &b.question_text, 4000)?;
                    check_len("correct_answer", &b.correct_answer, 4000)?;
                    let answer_options = b.answer_options.as_ref().map(json_text).transpose()?;
                    check_opt("answer_options", &answer_options, 4000)?;
                    check_opt("explanation", &b.explanation, 4000)?;
                    check_opt("content_hash", &b.content_hash, 64)?;
                    check_opt("board_name", &b.board_name, 100)?;
                    check_opt("module_name", &b.module_name, 200)?;
                    check_grade(b.grade_level)?;
                    if b.points < 0 {
                        return Err(Problem::bad_request("points must be >= 0"));
                    }
                    if [b.irt_discrimination, b.irt_difficulty, b.irt_guessing]
                        .iter()
                        .flatten()
                        .any(|x| !x.is_finite())
                    {
                        return Err(Problem::bad_request("IRT parameters must be finite numbers"));
                    }
                    let mut conn = s.pools.acquire(&sc.tenant).await.map_err(pool_problem)?;
                    let mut tx = begin_scoped(&mut conn, &sc).await?;
                    let before: Option<Uuid> =
                        sqlx::query_scalar("SELECT course_id FROM questions WHERE id = $1 FOR UPDATE")
                            .bind(id)
                            .fetch_optional(&mut *tx)
                            .await
                            .map_err(db_problem)?;
                    let doc: Value = sqlx::query_scalar(
                        "INSERT INTO questions (id, course_id, question_text, question_type, subject, grade_level, \
                         difficulty_level, topics, learning_objectives, answer_options, correct_answer, explanation, \
                         points, irt_discrimination, irt_difficulty, irt_guessing, is_active, is_ai_generated, \
                         content_hash, board_name, module_name, metadata) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, \
                         $19, $20, $21, $22) \
                         ON CONFLICT (id) DO UPDATE SET course_id = EXCLUDED.course_id, \
                         question_text = EXCLUDED.question_text, question_type = EXCLUDED.question_type, \
                         subject = EXCLUDED.subject, grade_level = EXCLUDED.grade_level, \
                         difficulty_level = EXCLUDED.difficulty_level, topics = EXCLUDED.topics, \
                         learning_objectives = EXCLUDED.learning_objectives, answer_options = EXCLUDED.answer_options, \
                         correct_answer = EXCLUDED.correct_answer, explanation = EXCLUDED.explanation, \
                         points = EXCLUDED.points, irt_discrimination = EXCLUDED.irt_discrimination, \
                         irt_difficulty = EXCLUDED.irt_difficulty, irt_guessing = EXCLUDED.irt_guessing, \
                         is_active = EXCLUDED.is_active, is_ai_generated = EXCLUDED.is_ai_generated, \
                         content_hash = EXCLUDED.content_hash, board_name = EXCLUDED.board_name, \
                         module_name = EXCLUDED.module_name, metadata = EXCLUDED.metadata, updated_at = now() \
                         RETURNING to_jsonb(questions.*)",
                    )
                    .bind(id)
                    .bind(b.course_id)
                    .bind(&b.question_text)
                    .bind(b.question_type)
                    .bind(b.subject)
                    .bind(b.grade_level)
                    .bind(b.difficulty_level)
                    .bind(json_text(&b.topics)?)
                    .bind(json_text(&b.learning_objectives)?)
                    .bind(&answer_options)
                    .bind(&b.correct_answer)
                    .bind(&b.explanation)
                    .bind(b.points)
                    .bind(b.irt_discrimination)
                    .bind(b.irt_difficulty)
                    .bind(b.irt_guessing)
                    .bind(b.is_active)
                    .bind(b.is_ai_generated)
                    .bind(&b.content_hash)
                    .bind(&b.board_name)
                    .bind(&b.module_name)
                    .bind(Value::Object(b.metadata))
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(db_problem)?;
                    let mut keys = vec![sc.key(&format!("course:{}:questions", b.course_id))];
                    if let Some(old) = before.filter(|old| *old != b.course_id) {
                        keys.push(sc.key(&format!("course:{old}:questions")));
                    }
                    outbox::record(&mut tx, &keys).await.map_err(db_problem)?;
                    tx.commit().await.map_err(db_problem)?;
                    s.cache.invalidate(&keys).await;
                    Ok(json_reply(StatusCode::OK, &typed::<wire::Question>(doc)?))
                }
                .await,
            )
        })
        .boxed();
    instrument(s, openapi::QUESTION_PUT, f)
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct AssessmentBody {
    course_id: Uuid,
    school_id: Option<Uuid>,
    title: String,
    #[serde(default)]
    description: String,
    assessment_type: i32,
    subject: i32,
    grade_level: i32,
    #[serde(default)]
    topics: Vec<String>,
    #[serde(default)]
    question_ids: Vec<Uuid>,
    #[serde(default)]
    total_points: i32,
    time_limit_minutes: Option<i32>,
    #[serde(default = "seventy")]
    passing_score_percentage: i32,
    #[serde(default = "yes")]
    is_active: bool,
}

pub(super) fn seventy() -> i32 {
    70
}

/// `PUT /v1/tenants/{tenant}/assessments/{id}`: creates or replaces an assessment
/// (`school_id` null for global content, else this tenant's school); invalidates
/// `assessment:{id}:meta`. Content writers.
pub fn assessment_put(s: &SharedState) -> BoxedFilter<(Response,)> {
    let f = warp::path!("v1" / "tenants" / String / "assessments" / String)
        .and(warp::put())
        .and(principal(s))
        .and(json_body::<AssessmentBody>(s))
        .and(with(s))
        .then(|t: String, id: String, who: Who, b: Result<AssessmentBody, Problem>, s: SharedState| async move {
            reply(
                async {
                    let sc = content_scope(&s, who, &t)?;
                    let b = b?;
                    let id = path_uuid(&id)?;
                    check_len("title", &b.title, 255)?;
                    check_max("description", &b.description, 2000)?;
                    check_grade(b.grade_level)?;
                    if b.school_id.is_some() && b.school_id != sc.school_id() {
                        return Err(Problem::bad_request("school_id must be null or this tenant's school"));
                    }
                    if b.total_points < 0 {
                        return Err(Problem::bad_request("total_points must be >= 0"));
                    }
                    if b.time_limit_minutes.is_some_and(|m| m <= 0) {
                        return Err(Problem::bad_request("time_limit_minutes must be > 0"));
                    }
                    if !(0..=100).contains(&b.passing_score_percentage) {
                        return Err(Problem::bad_request("passing_score_percentage must be 0..=100"));
                    }
                    let keys = [sc.key(&format!("assessment:{id}:meta"))];
                    let mut conn = s.pools.acquire(&sc.tenant).await.map_err(pool_problem)?;
                    let mut tx = begin_recording(&mut conn, &sc, &keys).await?;
                    crate::validate::question_ids(&mut tx, &b.question_ids).await?;
                    let doc: Value = sqlx::query_scalar(
                        "INSERT INTO assessments (id, course_id, school_id, title, description, assessment_type, \
                         subject, grade_level, topics, question_ids, total_points, time_limit_minutes, \
                         passing_score_percentage, is_active) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14) \
                         ON CONFLICT (id) DO UPDATE SET course_id = EXCLUDED.course_id, school_id = EXCLUDED.school_id, \
                         title = EXCLUDED.title, description = EXCLUDED.description, \
                         assessment_type = EXCLUDED.assessment_type, subject = EXCLUDED.subject, \
                         grade_level = EXCLUDED.grade_level, topics = EXCLUDED.topics, \
                         question_ids = EXCLUDED.question_ids, total_points = EXCLUDED.total_points, \
                         time_limit_minutes = EXCLUDED.time_limit_minutes, \
                         passing_score_percentage = EXCLUDED.passing_score_percentage, \
                         is_active = EXCLUDED.is_active, updated_at = now() \
                         RETURNING to_jsonb(assessments.*)",
                    )
                    .bind(id)
                    .bind(b.course_id)
                    .bind(b.school_id)
                    .bind(&b.title)
                    .bind(&b.description)
                    .bind(b.assessment_type)
                    .bind(b.subject)
                    .bind(b.grade_level)
                    .bind(json_text(&b.topics)?)
                    .bind(json_text(&b.question_ids)?)
                    .bind(b.total_points)
                    .bind(b.time_limit_minutes)
                    .bind(b.passing_score_percentage)
                    .bind(b.is_active)
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(db_problem)?;
                    tx.commit().await.map_err(db_problem)?;
                    s.cache.invalidate(&keys).await;
                    Ok(json_reply(StatusCode::OK, &typed::<wire::Assessment>(doc)?))
                }
                .await,
            )
        })
        .boxed();
    instrument(s, openapi::ASSESSMENT_PUT, f)
}
