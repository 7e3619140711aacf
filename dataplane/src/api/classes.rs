//! Classes: the (cached) roster and the class upsert.

use super::*;

/// Classes and their rosters: this module's route group.
pub(super) fn routes(s: &SharedState) -> BoxedFilter<(Response,)> {
    any_of([roster_get(s), roster_put(s), class_put(s)])
}

pub(super) const ROSTER_SQL: &str = scoped!(
    "SELECT jsonb_build_object('class_id', c.id, 'code', c.code, 'name', c.name, \
     'students', coalesce((SELECT jsonb_agg(jsonb_build_object('id', s.id, 'user_id', s.user_id, \
       'grade_level', s.grade_level, 'level', s.level) ORDER BY s.id) FROM students s \
       WHERE s.id::text IN (SELECT jsonb_array_elements_text(c.student_ids::jsonb))), '[]'::jsonb)) AS doc \
     FROM classes c WHERE c.id = $3::uuid"
);

/// `GET /v1/tenants/{tenant}/classes/{id}/roster`: the class's students; cached 10
/// minutes under `class:{id}:roster`. Teachers, school admins, admins.
pub fn roster_get(s: &SharedState) -> BoxedFilter<(Response,)> {
    let f = warp::path!("v1" / "tenants" / String / "classes" / String / "roster")
        .and(warp::get())
        .and(principal(s))
        .and(if_none_match())
        .and(with(s))
        .then(
            |t: String, id: String, who: Who, inm: Option<String>, s: SharedState| async move {
                reply(
                    async {
                        let sc = scope_where(&s, who, &t, Access::reads_all)?;
                        let id = path_uuid(&id)?;
                        // Every caller allowed here sees the same reply: one variant.
                        let stored = cached_reply(
                            &s,
                            &sc,
                            "roster",
                            || format!("class:{id}:roster"),
                            "all",
                            cache::ROSTER_TTL,
                            ROSTER_SQL,
                            vec![json!(id.to_string())],
                            |doc| match doc {
                                Some(doc) => rendered(&typed_ref::<wire::Roster>(doc)?),
                                None => Ok(cache::Stored::NotFound),
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
    instrument(s, openapi::ROSTER_GET, f)
}

/// Removes `class` from the `class_ids` of every student not in `ids`. With `ids` empty,
/// the class leaves every student (the class is being deleted).
pub(super) const LEAVE_CLASS_SQL: &str = "UPDATE students SET class_ids = (SELECT coalesce(jsonb_agg(c ORDER BY c), '[]'::jsonb) \
     FROM jsonb_array_elements_text(class_ids::jsonb) c WHERE c <> $1::text)::text, updated_at = now() \
     WHERE class_ids::jsonb ? $1::text AND NOT (id = ANY($2))";

/// Keeps `students.class_ids` true to the rosters, in the roster change's transaction:
/// `class` leaves the students no longer on it and joins the students now on it.
pub(super) async fn sync_class_ids(
    tx: &mut sqlx::PgConnection,
    class: Uuid,
    ids: &[Uuid],
) -> Result<(), Problem> {
    sqlx::query(LEAVE_CLASS_SQL)
        .bind(class.to_string())
        .bind(ids)
        .execute(&mut *tx)
        .await
        .map_err(db_problem)?;
    sqlx::query(
        "UPDATE students SET class_ids = (SELECT jsonb_agg(x.c ORDER BY x.c) FROM \
         (SELECT jsonb_array_elements_text(class_ids::jsonb) AS c UNION SELECT $1::text) x)::text, \
         updated_at = now() WHERE id = ANY($2) AND NOT class_ids::jsonb ? $1::text",
    )
    .bind(class.to_string())
    .bind(ids)
    .execute(&mut *tx)
    .await
    .map_err(db_problem)?;
    Ok(())
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RosterBody {
    student_ids: Vec<Uuid>,
}

/// `PUT /v1/tenants/{tenant}/classes/{id}/roster` `{"student_ids": [...]}`: replaces the
/// roster (every id must be a student of this tenant) and invalidates the cached roster.
pub fn roster_put(s: &SharedState) -> BoxedFilter<(Response,)> {
    let f =
        warp::path!("v1" / "tenants" / String / "classes" / String / "roster")
            .and(warp::put())
            .and(principal(s))
            .and(json_body::<RosterBody>(s))
            .and(with(s))
            .then(
                |t: String,
                 id: String,
                 who: Who,
                 body: Result<RosterBody, Problem>,
                 s: SharedState| async move {
                    reply(
                        async {
                            let sc = scope(&s, who, &t)?;
                            let body = body?;
                            if !sc.access.reads_all() {
                                return Err(Problem::forbidden());
                            }
                            let id = path_uuid(&id)?;
                            let mut ids = body.student_ids;
                            ids.sort();
                            ids.dedup();
                            if ids.len() > 1000 {
                                return Err(Problem::bad_request(
                                    "a roster holds at most 1000 students",
                                ));
                            }
                            let list =
                                serde_json::to_string(&ids).map_err(|_| Problem::internal())?;
                            let keys = [sc.key(&format!("class:{id}:roster"))];
                            let mut conn =
                                s.pools.acquire(&sc.tenant).await.map_err(pool_problem)?;
                            let mut tx = begin_recording(&mut conn, &sc, &keys).await?;
                            let known: i64 = sqlx::query_scalar(
                                "SELECT count(*) FROM students WHERE id = ANY($1)",
                            )
                            .bind(&ids)
                            .fetch_one(&mut *tx)
                            .await
                            .map_err(db_problem)?;
                            let updated = sqlx::query(
                            "UPDATE classes SET student_ids = $2, updated_at = now() WHERE id = $1",
                        )
                        .bind(id)
                        .bind(&list)
                        .execute(&mut *tx)
                        .await
                        .map_err(db_problem)?
                        .rows_affected();
                            if updated == 0 {
                                return Err(Problem::not_found());
                            }
                            if known != ids.len() as i64 {
                                return Err(Problem::bad_request(
                                    "every student id must be a student of this tenant",
                                ));
                            }
                            sync_class_ids(&mut tx, id, &ids).await?;
                            tx.commit().await.map_err(db_problem)?;
                            s.cache.invalidate(&keys).await;
                            Ok(json_reply(
                                StatusCode::OK,
                                &wire::RosterUpdate {
                                    class_id: id,
                                    student_ids: ids,
                                },
                            ))
                        }
                        .await,
                    )
                },
            )
            .boxed();
    instrument(s, openapi::ROSTER_PUT, f)
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ClassBody {
    name: String,
    code: String,
    grade_level: i32,
    subject: i32,
    #[serde(default)]
    teacher_ids: Vec<Uuid>,
    academic_year: String,
    #[serde(default = "yes")]
    is_active: bool,
}

/// `PUT /v1/tenants/{tenant}/classes/{id}`: creates or replaces a class of this school
/// (students stay as they are: the roster has its own endpoint); invalidates
/// `class:{id}:roster`. School admins and platform admins.
pub fn class_put(s: &SharedState) -> BoxedFilter<(Response,)> {
    let f = warp::path!("v1" / "tenants" / String / "classes" / String)
        .and(warp::put())
        .and(principal(s))
        .and(json_body::<ClassBody>(s))
        .and(with(s))
        .then(|t: String, id: String, who: Who, b: Result<ClassBody, Problem>, s: SharedState| async move {
            reply(
                async {
                    let sc = scope_where(&s, who, &t, Access::manages_school)?;
                    let school = sc.school_id().ok_or_else(Problem::not_found)?;
                    let b = b?;
                    let id = path_uuid(&id)?;
                    check_len("name", &b.name, 255)?;
                    check_len("code", &b.code, 50)?;
                    check_len("academic_year", &b.academic_year, 20)?;
                    check_grade(b.grade_level)?;
                    if b.teacher_ids.len() > 100 {
                        return Err(Problem::bad_request("a class has at most 100 teachers"));
                    }
                    let keys = [sc.key(&format!("class:{id}:roster"))];
                    let mut conn = s.pools.acquire(&sc.tenant).await.map_err(pool_problem)?;
                    let mut tx = begin_recording(&mut conn, &sc, &keys).await?;
                    crate::validate::staff_ids(&mut tx, &b.teacher_ids).await?;
                    let doc: Value = sqlx::query_scalar(
                        "INSERT INTO classes (id, school_id, name, code, grade_level, subject, teacher_ids, \
                         academic_year, is_active) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
                         ON CONFLICT (id) DO UPDATE SET name = EXCLUDED.name, code = EXCLUDED.code, \
                         grade_level = EXCLUDED.grade_level, subject = EXCLUDED.subject, \
                         teacher_ids = EXCLUDED.teacher_ids, academic_year = EXCLUDED.academic_year, \
                         is_active = EXCLUDED.is_active, updated_at = now() \
                         WHERE classes.school_id = EXCLUDED.school_id \
                         RETURNING to_jsonb(classes.*)",
                    )
                    .bind(id)
                    .bind(school)
                    .bind(&b.name)
                    .bind(&b.code)
                    .bind(b.grade_level)
                    .bind(b.subject)
                    .bind(json_text(&b.teacher_ids)?)
                    .bind(&b.academic_year)
                    .bind(b.is_active)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(db_problem)?
                    .ok_or_else(Problem::not_found)?;
                    tx.commit().await.map_err(db_problem)?;
                    s.cache.invalidate(&keys).await;
                    Ok(json_reply(StatusCode::OK, &typed::<wire::Class>(doc)?))
                }
                .await,
            )
        })
        .boxed();
    instrument(s, openapi::CLASS_PUT, f)
}
