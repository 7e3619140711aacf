//! The school record, students and their (cached) progress.

use super::*;

/// The school and its students: this module's route group.
pub(super) fn routes(s: &SharedState) -> BoxedFilter<(Response,)> {
    any_of([
        school_get(s),
        students_list(s),
        students_create(s),
        student_progress(s),
    ])
}

/// `GET /v1/tenants/{tenant}/school`: the school's own record (school members, admins).
pub fn school_get(s: &SharedState) -> BoxedFilter<(Response,)> {
    let f = warp::path!("v1" / "tenants" / String / "school")
        .and(warp::get())
        .and(principal(s))
        .and(if_none_match())
        .and(with(s))
        .then(
            |t: String, who: Who, inm: Option<String>, s: SharedState| async move {
                reply(
                    async {
                        let sc = scope_where(&s, who, &t, |a| a != Access::Content)?;
                        let id = sc.school_id().ok_or_else(Problem::not_found)?;
                        let body = fetch_text(
                            &s,
                            &sc,
                            scoped!(concat!(
                                "SELECT ",
                                crate::sql_school!(),
                                "::text AS doc FROM schools r WHERE r.id = $3::uuid"
                            )),
                            &[json!(id.to_string())],
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
    instrument(s, openapi::SCHOOL_GET, f)
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct StudentsQuery {
    /// The previous page's `next_after`.
    after: Option<Uuid>,
    /// Page size (default 50).
    #[param(minimum = 1, maximum = 200)]
    limit: Option<i64>,
    grade_level: Option<i32>,
    subscription_tier: Option<i32>,
}

/// `GET /v1/tenants/{tenant}/students?after=&limit=&grade_level=&subscription_tier=`:
/// keyset-paginated by id. Students see only themselves.
pub fn students_list(s: &SharedState) -> BoxedFilter<(Response,)> {
    let f = warp::path!("v1" / "tenants" / String / "students")
        .and(warp::get())
        .and(query::<StudentsQuery>())
        .and(principal(s))
        .and(if_none_match())
        .and(with(s))
        .then(
            |t: String,
             q: Result<StudentsQuery, Problem>,
             who: Who,
             inm: Option<String>,
             s: SharedState| async move {
                reply(
                    async {
                        let sc = scope_where(&s, who, &t, |a| a.reads_all() || a.is_student())?;
                        let q = q?;
                        let limit = q.limit.unwrap_or(50);
                        if !(1..=200).contains(&limit) {
                            return Err(Problem::bad_request("limit must be between 1 and 200"));
                        }
                        let only_user = sc.access.is_student().then(|| sc.p.user_id.to_string());
                        let body = fetch_text(
                        &s,
                        &sc,
                        scoped!(crate::sql_page!(
                            crate::sql_student!(),
                            "r.id",
                            "$7::int",
                            "SELECT * FROM students s WHERE ($3::uuid IS NULL OR s.id > $3::uuid) \
                             AND ($4::int IS NULL OR s.grade_level = $4::int) \
                             AND ($5::int IS NULL OR s.subscription_tier = $5::int) \
                             AND ($6::uuid IS NULL OR s.user_id = $6::uuid) \
                             ORDER BY s.id LIMIT $7::int"
                        )),
                        &[
                            q.after.map(|a| json!(a.to_string())).unwrap_or(Value::Null),
                            q.grade_level.map(|g| json!(g)).unwrap_or(Value::Null),
                            q.subscription_tier.map(|g| json!(g)).unwrap_or(Value::Null),
                            only_user.map(Value::String).unwrap_or(Value::Null),
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
    instrument(s, openapi::STUDENTS_LIST, f)
}

/// Serves a cached reply ([`cache::Cache::reply_or_load`]): the stored bytes of
/// `variant` on a hit; else `render` of the document, read from Redis or loaded by the
/// scoped query (single flight). `seed` builds the key's seed only when Redis is read.
/// `render` gets `None` for "no such row" and decides what each variant sees.
#[allow(clippy::too_many_arguments)]
pub(super) async fn cached_reply(
    s: &SharedState,
    sc: &Scope,
    kind: &str,
    seed: impl FnOnce() -> String,
    variant: &str,
    ttl: std::time::Duration,
    sql: &'static str,
    binds: Vec<Value>,
    render: impl Fn(Option<&Value>) -> Result<cache::Stored, Problem>,
) -> Result<cache::Stored, Problem> {
    s.cache
        .reply_or_load(
            kind,
            || sc.key(&seed()),
            variant,
            ttl,
            || fetch_doc(s, sc, sql, &binds),
            |doc: &Option<Value>| render(doc.as_ref()),
            |doc: &Option<Value>| {
                doc.as_ref()
                    .map(Value::to_string)
                    .unwrap_or_else(|| "null".into())
            },
            |text: &str| {
                let v: Value = serde_json::from_str(text).map_err(|_| Problem::internal())?;
                Ok((!v.is_null()).then_some(v))
            },
        )
        .await
}

/// `GET /v1/tenants/{tenant}/students/{id}/progress`: level, XP, streak and attempt
/// counts; cached 5 minutes under `student:{id}:progress`. Students: their own only.
pub fn student_progress(s: &SharedState) -> BoxedFilter<(Response,)> {
    let f = warp::path!("v1" / "tenants" / String / "students" / String / "progress")
        .and(warp::get())
        .and(principal(s))
        .and(if_none_match())
        .and(with(s))
        .then(|t: String, id: String, who: Who, inm: Option<String>, s: SharedState| async move {
            reply(
                async {
                    let sc = scope_where(&s, who, &t, |a| a.reads_all() || a.is_student())?;
                    let id = path_uuid(&id)?;
                    // The cache is shared by everyone in the tenant: a student's reply is
                    // their own variant, whose render checks ownership (not only RLS).
                    let student = sc.access.is_student();
                    let me = sc.p.user_id;
                    let variant = if student { format!("u:{me}") } else { "all".to_owned() };
                    let stored = cached_reply(
                        &s,
                        &sc,
                        "progress",
                        || format!("student:{id}:progress"),
                        &variant,
                        cache::PROGRESS_TTL,
                        scoped!(
                            "SELECT jsonb_build_object('student_id', s.id, 'user_id', s.user_id, \
                             'level', s.level, 'xp_points', s.xp_points, 'daily_streak', s.daily_streak, \
                             'last_activity_date', s.last_activity_date, \
                             'attempts_completed', (SELECT count(*) FROM student_assessments a \
                                WHERE a.student_id = s.id AND a.status = 2), \
                             'attempts_passed', (SELECT count(*) FROM student_assessments a \
                                WHERE a.student_id = s.id AND a.status = 2 AND a.passed)) AS doc \
                             FROM students s WHERE s.id = $3::uuid"
                        ),
                        vec![json!(id.to_string())],
                        |doc| {
                            let Some(doc) = doc else {
                                return Ok(cache::Stored::NotFound);
                            };
                            let progress: wire::Progress = typed_ref(doc)?;
                            if student && progress.user_id != me {
                                return Ok(cache::Stored::NotFound);
                            }
                            rendered(&progress)
                        },
                    )
                    .await?;
                    stored_reply(stored, inm.as_deref())
                }
                .await,
            )
        })
        .boxed();
    instrument(s, openapi::STUDENT_PROGRESS, f)
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewStudent {
    user_id: Uuid,
    grade_level: i32,
    date_of_birth: Option<chrono::NaiveDate>,
    #[serde(default)]
    parental_consent_granted: bool,
    parent_email: Option<String>,
    #[serde(default)]
    subscription_tier: i32,
    subscription_expires_at: Option<chrono::DateTime<chrono::Utc>>,
}

impl NewStudent {
    /// Every field against its column (spec 2.2 `students`).
    fn validate(&self) -> Result<(), Problem> {
        if !(6..=12).contains(&self.grade_level) {
            return Err(Problem::bad_request("grade_level must be 6..=12"));
        }
        if let Some(e) = &self.parent_email {
            check_len("parent_email", e, 255)?;
            if !e.contains('@') || e.contains(char::is_whitespace) {
                return Err(Problem::bad_request("parent_email is not an address"));
            }
        }
        if self.subscription_tier < 0 {
            return Err(Problem::bad_request(
                "subscription_tier must not be negative",
            ));
        }
        Ok(())
    }
}

/// `POST /v1/tenants/{tenant}/students`: makes a user of this tenant whose role is Student
/// (0) a student, with level 1, no XP and no classes (the roster PUT adds classes). School
/// admins and admins; 400 when `user_id` is not a student user here, 409 when that user
/// already is a student.
pub fn students_create(s: &SharedState) -> BoxedFilter<(Response,)> {
    let f = warp::path!("v1" / "tenants" / String / "students")
        .and(warp::post())
        .and(principal(s))
        .and(json_body::<NewStudent>(s))
        .and(with(s))
        .then(
            |t: String, who: Who, body: Result<NewStudent, Problem>, s: SharedState| async move {
                reply(
                    async {
                        let sc = scope_where(&s, who, &t, Access::manages_school)?;
                        let n = body?;
                        n.validate()?;
                        let mut conn = s.pools.acquire(&sc.tenant).await.map_err(pool_problem)?;
                        let mut tx = begin_scoped(&mut conn, &sc).await?;
                        // The user must exist in this tenant's database with the Student role;
                        // the row's school is the tenant's (NULL in self-service).
                        let doc: Option<Value> = sqlx::query_scalar(
                        "INSERT INTO students (id, user_id, school_id, grade_level, date_of_birth, \
                             parental_consent_granted, parent_email, subscription_tier, \
                             subscription_expires_at) \
                         SELECT $1, u.id, $3, $4, $5, $6, $7, $8, $9 FROM users u \
                         WHERE u.id = $2 AND u.role = 0 \
                         RETURNING to_jsonb(students.*)",
                    )
                    .bind(Uuid::new_v4())
                    .bind(n.user_id)
                    .bind(sc.school_id())
                    .bind(n.grade_level)
                    .bind(n.date_of_birth)
                    .bind(n.parental_consent_granted)
                    .bind(&n.parent_email)
                    .bind(n.subscription_tier)
                    .bind(n.subscription_expires_at)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(db_problem)?;
                        let doc = doc.ok_or_else(|| {
                            Problem::bad_request(
                                "user_id must name a user of this tenant with the Student role",
                            )
                        })?;
                        let student: wire::Student = typed(doc)?;
                        tx.commit().await.map_err(db_problem)?;
                        Ok(json_reply(StatusCode::CREATED, &student))
                    }
                    .await,
                )
            },
        )
        .boxed();
    instrument(s, openapi::STUDENTS_CREATE, f)
}
