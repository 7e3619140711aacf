//! Attempts: start, answer, submit (scoring, XP, streak) and read.

use super::*;

/// Assessment attempts: this module's route group.
pub(super) fn routes(s: &SharedState) -> BoxedFilter<(Response,)> {
    any_of([
        attempt_start(s),
        attempt_answer(s),
        attempt_submit(s),
        attempt_get(s),
    ])
}

pub(super) const ME_SQL: &str =
    scoped!("SELECT to_jsonb(s) AS doc FROM students s WHERE s.user_id = $1::uuid");

/// Opens a transaction whose first statement tells PostgreSQL who is asking (the
/// settings last until commit), for writes that need several statements.
pub(super) async fn begin_scoped<'c>(
    conn: &'c mut sqlx::PgConnection,
    sc: &Scope,
) -> Result<sqlx::Transaction<'c, sqlx::Postgres>, Problem> {
    let mut tx = conn.begin().await.map_err(db_problem)?;
    let (uid, adm) = sc.params();
    let _: Option<Value> = sqlx::query_scalar(scoped!("SELECT '{}'::jsonb AS doc"))
        .bind(uid)
        .bind(adm)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db_problem)?;
    Ok(tx)
}

/// [`begin_scoped`] for a write whose invalidated `keys` are known before it starts: the
/// same first statement also records them in the cache outbox (no round trip of its own;
/// `outbox::record` is then not called).
pub(super) async fn begin_recording<'c>(
    conn: &'c mut sqlx::PgConnection,
    sc: &Scope,
    keys: &[String],
) -> Result<sqlx::Transaction<'c, sqlx::Postgres>, Problem> {
    if keys.is_empty() || !outbox::recording() {
        return begin_scoped(conn, sc).await;
    }
    let (uid, adm) = sc.params();
    outbox::begin_recording(conn, uid, adm, keys)
        .await
        .map_err(db_problem)
}

/// Opens a transaction whose first statement tells PostgreSQL who is asking (row-level
/// security in the self-service database) and returns the caller's student row.
pub(super) async fn begin_as_student<'c>(
    conn: &'c mut sqlx::PgConnection,
    sc: &Scope,
) -> Result<(sqlx::Transaction<'c, sqlx::Postgres>, Uuid), Problem> {
    let mut tx = conn.begin().await.map_err(db_problem)?;
    let (uid, adm) = sc.params();
    let me: Option<Value> = sqlx::query_scalar(ME_SQL)
        .bind(uid)
        .bind(adm)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db_problem)?;
    let id = me
        .as_ref()
        .and_then(|m| m.get("id"))
        .and_then(Value::as_str)
        .and_then(|s| Uuid::parse_str(s).ok())
        .ok_or_else(Problem::not_found)?;
    Ok((tx, id))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct StartBody {
    assessment_id: Uuid,
    class_id: Option<Uuid>,
}

/// `POST /v1/tenants/{tenant}/attempts` `{"assessment_id", "class_id"?}`: a student starts
/// an attempt (status 1 = in progress).
pub fn attempt_start(s: &SharedState) -> BoxedFilter<(Response,)> {
    let f = warp::path!("v1" / "tenants" / String / "attempts")
        .and(warp::post())
        .and(principal(s))
        .and(json_body::<StartBody>(s))
        .and(with(s))
        .then(|t: String, who: Who, body: Result<StartBody, Problem>, s: SharedState| async move {
            reply(
                async {
                    let sc = scope(&s, who, &t)?;
                    let body = body?;
                    if !sc.access.is_student() {
                        return Err(Problem::forbidden());
                    }
                    let mut conn = s.pools.acquire(&sc.tenant).await.map_err(pool_problem)?;
                    let (mut tx, student) = begin_as_student(&mut conn, &sc).await?;
                    crate::validate::attempt_class(&mut tx, body.class_id, student).await?;
                    let id = Uuid::new_v4();
                    let doc: Option<Value> = sqlx::query_scalar(
                        "INSERT INTO student_assessments (id, student_id, assessment_id, school_id, class_id, \
                         status, started_at, max_score) \
                         SELECT $1, $2, a.id, $3, $4, 1, now(), a.total_points FROM assessments a \
                         WHERE a.id = $5 AND a.is_active RETURNING to_jsonb(student_assessments.*)",
                    )
                    .bind(id)
                    .bind(student)
                    .bind(sc.school_id())
                    .bind(body.class_id)
                    .bind(body.assessment_id)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(db_problem)?;
                    let attempt: wire::Attempt = typed(doc.ok_or_else(Problem::not_found)?)?;
                    tx.commit().await.map_err(db_problem)?;
                    Ok(json_reply(StatusCode::CREATED, &attempt))
                }
                .await,
            )
        })
        .boxed();
    instrument(s, openapi::ATTEMPT_START, f)
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct AnswerBody {
    question_id: Uuid,
    answer: String,
    #[serde(default)]
    time_spent_seconds: i32,
}

/// Whether `answer` matches `correct`: equal JSON values, or (for plain text) equal after
/// trimming, ignoring case.
pub fn is_correct(answer: &str, correct: &str) -> bool {
    let parse = |s: &str| {
        serde_json::from_str::<Value>(s).unwrap_or_else(|_| Value::String(s.trim().to_owned()))
    };
    match (parse(answer), parse(correct)) {
        (Value::String(a), Value::String(c)) => a.trim().eq_ignore_ascii_case(c.trim()),
        (a, c) => a == c,
    }
}

/// `POST /v1/tenants/{tenant}/attempts/{id}/responses` `{"question_id", "answer",
/// "time_spent_seconds"}`: records (or replaces) the answer to one question of an attempt
/// in progress.
pub fn attempt_answer(s: &SharedState) -> BoxedFilter<(Response,)> {
    let f = warp::path!("v1" / "tenants" / String / "attempts" / String / "responses")
        .and(warp::post())
        .and(principal(s))
        .and(json_body::<AnswerBody>(s))
        .and(with(s))
        .then(|t: String, id: String, who: Who, body: Result<AnswerBody, Problem>, s: SharedState| async move {
            reply(
                async {
                    let sc = scope(&s, who, &t)?;
                    let body = body?;
                    if !sc.access.is_student() {
                        return Err(Problem::forbidden());
                    }
                    let attempt = path_uuid(&id)?;
                    if body.answer.chars().count() > 4000 {
                        return Err(Problem::bad_request("answer is longer than 4000 characters"));
                    }
                    if !(0..=86_400).contains(&body.time_spent_seconds) {
                        return Err(Problem::bad_request("time_spent_seconds must be 0..=86400"));
                    }
                    let mut conn = s.pools.acquire(&sc.tenant).await.map_err(pool_problem)?;
                    let (mut tx, student) = begin_as_student(&mut conn, &sc).await?;
                    let row: Option<(i32, String)> = sqlx::query_as(
                        "SELECT sa.status, a.question_ids FROM student_assessments sa \
                         JOIN assessments a ON a.id = sa.assessment_id \
                         WHERE sa.id = $1 AND sa.student_id = $2",
                    )
                    .bind(attempt)
                    .bind(student)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(db_problem)?;
                    let (status, qids) = row.ok_or_else(Problem::not_found)?;
                    if status != 1 {
                        return Err(Problem::conflict("the attempt is not in progress"));
                    }
                    let qids: Vec<Uuid> = serde_json::from_str(&qids).unwrap_or_default();
                    let order = qids
                        .iter()
                        .position(|q| *q == body.question_id)
                        .ok_or_else(|| Problem::bad_request("the question is not part of this assessment"))?;
                    let q: Option<(String, i32)> =
                        sqlx::query_as("SELECT correct_answer, points FROM questions WHERE id = $1")
                            .bind(body.question_id)
                            .fetch_optional(&mut *tx)
                            .await
                            .map_err(db_problem)?;
                    let (correct, points) =
                        q.ok_or_else(|| Problem::bad_request("the question does not exist"))?;
                    let ok = is_correct(&body.answer, &correct);
                    let doc: Value = sqlx::query_scalar(
                        "INSERT INTO student_responses (id, student_assessment_id, student_id, question_id, \
                         school_id, student_answer, is_correct, points_earned, max_points, time_spent_seconds, \
                         question_order) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) \
                         ON CONFLICT (student_assessment_id, question_id) DO UPDATE SET \
                         student_answer = EXCLUDED.student_answer, is_correct = EXCLUDED.is_correct, \
                         points_earned = EXCLUDED.points_earned, time_spent_seconds = EXCLUDED.time_spent_seconds, \
                         submitted_at = now() \
                         RETURNING jsonb_build_object('id', id, 'question_id', question_id, 'is_correct', is_correct, \
                           'points_earned', points_earned, 'max_points', max_points)",
                    )
                    .bind(Uuid::new_v4())
                    .bind(attempt)
                    .bind(student)
                    .bind(body.question_id)
                    .bind(sc.school_id())
                    .bind(&body.answer)
                    .bind(ok)
                    .bind(if ok { points } else { 0 })
                    .bind(points)
                    .bind(body.time_spent_seconds)
                    .bind(order as i32)
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(db_problem)?;
                    // Only a student answers, and only while the attempt is in progress:
                    // correctness waits for the submission.
                    let mut receipt: wire::AnswerReceipt = typed(doc)?;
                    receipt.is_correct = None;
                    receipt.points_earned = None;
                    tx.commit().await.map_err(db_problem)?;
                    Ok(json_reply(StatusCode::OK, &receipt))
                }
                .await,
            )
        })
        .boxed();
    instrument(s, openapi::ATTEMPT_ANSWER, f)
}

/// XP for a submitted attempt: 10 per correct answer, 50 more for a pass.
pub fn xp_for(correct: i64, passed: bool) -> i64 {
    correct * 10 + if passed { 50 } else { 0 }
}

/// `POST /v1/tenants/{tenant}/attempts/{id}/submit`: scores the attempt and updates the
/// student's XP, level and daily streak in one transaction. Holds
/// `lock:assessment:{id}` meanwhile; the conditional `UPDATE ... WHERE status <> 2` makes
/// PostgreSQL itself allow one submission only, with or without Redis.
pub fn attempt_submit(s: &SharedState) -> BoxedFilter<(Response,)> {
    let f = warp::path!("v1" / "tenants" / String / "attempts" / String / "submit")
        .and(warp::post())
        .and(principal(s))
        .and(with(s))
        .then(
            |t: String, id: String, who: Who, s: SharedState| async move {
                reply(
                    async {
                        let sc = scope_where(&s, who, &t, Access::is_student)?;
                        let attempt = path_uuid(&id)?;
                        let lock_key = sc.key(&format!("lock:assessment:{attempt}"));
                        let token = match s.cache.lock_acquire(&lock_key, cache::LOCK_TTL).await {
                            Ok(Some(token)) => Some(token),
                            Ok(None) => {
                                return Err(Problem::conflict("this attempt is being submitted"));
                            }
                            Err(_) => None, // Redis down: the database guard below still holds
                        };
                        let result = submit(&s, &sc, attempt).await;
                        if let Some(token) = token {
                            let _ = s.cache.lock_release(&lock_key, &token).await;
                        }
                        result
                    }
                    .await,
                )
            },
        )
        .boxed();
    instrument(s, openapi::ATTEMPT_SUBMIT, f)
}

/// status, max score, passing %, question ids, answered, correct, score, seconds.
type SubmitRow = (i32, i32, i32, String, i64, i64, i64, i64);

pub(super) async fn submit(
    s: &SharedState,
    sc: &Scope,
    attempt: Uuid,
) -> Result<Response, Problem> {
    let mut conn = s.pools.acquire(&sc.tenant).await.map_err(pool_problem)?;
    let (mut tx, student) = begin_as_student(&mut conn, sc).await?;
    let row: Option<SubmitRow> = sqlx::query_as(
        "SELECT sa.status, sa.max_score, a.passing_score_percentage, a.question_ids, \
         (SELECT count(*) FROM student_responses r WHERE r.student_assessment_id = sa.id), \
         (SELECT count(*) FROM student_responses r WHERE r.student_assessment_id = sa.id AND r.is_correct), \
         (SELECT coalesce(sum(points_earned), 0) FROM student_responses r WHERE r.student_assessment_id = sa.id), \
         (SELECT coalesce(sum(time_spent_seconds), 0) FROM student_responses r WHERE r.student_assessment_id = sa.id) \
         FROM student_assessments sa JOIN assessments a ON a.id = sa.assessment_id \
         WHERE sa.id = $1 AND sa.student_id = $2",
    )
    .bind(attempt)
    .bind(student)
    .fetch_optional(&mut *tx)
    .await
    .map_err(db_problem)?;
    let (status, max_score, passing, qids, answered, correct, score, secs) =
        row.ok_or_else(Problem::not_found)?;
    if status == 2 {
        return Err(Problem::conflict("the attempt was already submitted"));
    }
    let questions = serde_json::from_str::<Vec<Uuid>>(&qids)
        .map(|v| v.len() as i64)
        .unwrap_or(0);
    let incorrect = answered - correct;
    let skipped = (questions - answered).max(0);
    let passed = if max_score > 0 {
        score * 100 >= i64::from(max_score) * i64::from(passing)
    } else {
        passing == 0
    };
    let xp = xp_for(correct, passed);
    let updated: Option<Value> = sqlx::query_scalar(
        "UPDATE student_assessments SET status = 2, completed_at = now(), score = $3, passed = $4, \
         correct_answers = $5, incorrect_answers = $6, skipped_questions = $7, xp_earned = $8, \
         time_spent_seconds = $9, updated_at = now() \
         WHERE id = $1 AND student_id = $2 AND status <> 2 RETURNING to_jsonb(student_assessments.*)",
    )
    .bind(attempt)
    .bind(student)
    .bind(score as i32)
    .bind(passed)
    .bind(correct as i32)
    .bind(incorrect as i32)
    .bind(skipped as i32)
    .bind(xp as i32)
    .bind(secs.min(i64::from(i32::MAX)) as i32)
    .fetch_optional(&mut *tx)
    .await
    .map_err(db_problem)?;
    let Some(updated) = updated else {
        return Err(Problem::conflict("the attempt was already submitted"));
    };
    let attempt: wire::Attempt = typed(updated)?;
    let progress: Value = sqlx::query_scalar(
        "UPDATE students SET xp_points = xp_points + $2, level = 1 + (xp_points + $2) / 100, \
         daily_streak = CASE WHEN last_activity_date = current_date THEN greatest(daily_streak, 1) \
                             WHEN last_activity_date = current_date - 1 THEN daily_streak + 1 ELSE 1 END, \
         last_activity_date = current_date, updated_at = now() WHERE id = $1 \
         RETURNING jsonb_build_object('xp_points', xp_points, 'level', level, 'daily_streak', daily_streak)",
    )
    .bind(student)
    .bind(xp as i32)
    .fetch_one(&mut *tx)
    .await
    .map_err(db_problem)?;
    let keys = [sc.key(&format!("student:{student}:progress"))];
    outbox::record(&mut tx, &keys).await.map_err(db_problem)?;
    tx.commit().await.map_err(db_problem)?;
    s.cache.invalidate(&keys).await;
    let student: wire::StudentTotals = typed(progress)?;
    Ok(json_reply(
        StatusCode::OK,
        &wire::Submission { attempt, student },
    ))
}

/// `GET /v1/tenants/{tenant}/attempts/{id}`: an attempt with its responses. Students see
/// their own; teachers, school admins and admins any in the tenant.
pub fn attempt_get(s: &SharedState) -> BoxedFilter<(Response,)> {
    let f = warp::path!("v1" / "tenants" / String / "attempts" / String)
        .and(warp::get())
        .and(principal(s))
        .and(if_none_match())
        .and(with(s))
        .then(
            |t: String, id: String, who: Who, inm: Option<String>, s: SharedState| async move {
                reply(
                    async {
                        let sc = scope_where(&s, who, &t, |a| a.reads_all() || a.is_student())?;
                        let id = path_uuid(&id)?;
                        let only_user = sc.access.is_student().then(|| sc.p.user_id.to_string());
                        const _: () = assert!(wire::SUBMITTED == 2);
                        // The reply is built by PostgreSQL and sent as it is. A student learns
                        // which answers were right only once the attempt is submitted (status 2,
                        // `wire::SUBMITTED`): `$5` hides `is_correct`/`points_earned` until then.
                        let body = fetch_text(
                            &s,
                            &sc,
                            scoped!(concat!(
                                "SELECT json_build_object(",
                                crate::sql_attempt_fields!(),
                                ", 'responses', coalesce((SELECT json_agg(",
                                crate::sql_attempt_response!("($5::bool AND r.status <> 2)"),
                                " ORDER BY x.question_order) FROM student_responses x \
                             WHERE x.student_assessment_id = r.id), '[]'::json))::text AS doc \
                             FROM student_assessments r WHERE r.id = $3::uuid \
                             AND ($4::uuid IS NULL OR r.student_id IN \
                               (SELECT id FROM students WHERE user_id = $4::uuid))"
                            )),
                            &[
                                json!(id.to_string()),
                                only_user.map(Value::String).unwrap_or(Value::Null),
                                json!(sc.access.is_student()),
                            ],
                        )
                        .await?
                        .ok_or_else(Problem::not_found)?;
                        Ok(etagged(body, inm.as_deref()))
                    }
                    .await,
                )
            },
        )
        .boxed();
    instrument(s, openapi::ATTEMPT_GET, f)
}
