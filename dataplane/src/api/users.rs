//! Users of a tenant: list and create.

use super::*;

/// Users: this module's route group.
pub(super) fn routes(s: &SharedState) -> BoxedFilter<(Response,)> {
    any_of([users_list(s), users_create(s)])
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct UsersQuery {
    /// The previous page's `next_after`.
    after: Option<Uuid>,
    /// Page size (default 50).
    #[param(minimum = 1, maximum = 200)]
    limit: Option<i64>,
    role: Option<i32>,
}

/// `GET /v1/tenants/{tenant}/users?after=&limit=&role=`: the tenant's users,
/// keyset-paginated by id, filtered on the indexed `role`. Staff and admins.
pub fn users_list(s: &SharedState) -> BoxedFilter<(Response,)> {
    let f = warp::path!("v1" / "tenants" / String / "users")
        .and(warp::get())
        .and(query::<UsersQuery>())
        .and(principal(s))
        .and(if_none_match())
        .and(with(s))
        .then(
            |t: String,
             q: Result<UsersQuery, Problem>,
             who: Who,
             inm: Option<String>,
             s: SharedState| async move {
                reply(
                    async {
                        let sc = scope_where(&s, who, &t, Access::reads_all)?;
                        let q = q?;
                        let limit = q.limit.unwrap_or(50);
                        if !(1..=200).contains(&limit) {
                            return Err(Problem::bad_request("limit must be between 1 and 200"));
                        }
                        if q.role.is_some_and(|r| !(0..=5).contains(&r)) {
                            return Err(Problem::bad_request("role must be 0..=5"));
                        }
                        // The whole page, built by PostgreSQL, goes out as it is.
                        let body = fetch_text(
                            &s,
                            &sc,
                            scoped!(crate::sql_page!(
                                crate::sql_user!(),
                                "r.id",
                                "$5::int",
                                "SELECT * FROM users u WHERE ($3::uuid IS NULL OR u.id > $3::uuid) \
                             AND ($4::int IS NULL OR u.role = $4::int) ORDER BY u.id LIMIT $5::int"
                            )),
                            &[
                                q.after.map(|a| json!(a.to_string())).unwrap_or(Value::Null),
                                q.role.map(|r| json!(r)).unwrap_or(Value::Null),
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
    instrument(s, openapi::USERS_LIST, f)
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewUser {
    email: String,
    full_name: String,
    role: i32,
    external_id: Option<String>,
    #[serde(default = "yes")]
    is_active: bool,
}

pub(super) fn yes() -> bool {
    true
}

impl NewUser {
    /// Every field against its column (spec 2.2 `users`), and the roles a school admin
    /// may hand out (not the platform roles).
    fn validate(&self, access: Access) -> Result<(), Problem> {
        check_len("email", &self.email, 255)?;
        let at = self.email.find('@');
        if at.is_none_or(|i| i == 0 || i + 1 == self.email.len())
            || self.email.contains(char::is_whitespace)
        {
            return Err(Problem::bad_request("email is not an address"));
        }
        check_len("full_name", &self.full_name, 255)?;
        if let Some(x) = &self.external_id {
            check_len("external_id", x, 255)?;
        }
        let max_role = if access == Access::Admin { 5 } else { 2 };
        if !(0..=max_role).contains(&self.role) {
            return Err(Problem::bad_request(format!("role must be 0..={max_role}")));
        }
        Ok(())
    }
}

/// `POST /v1/tenants/{tenant}/users`: creates a user of this tenant (school admins and
/// admins); 409 when the email or external id is taken.
pub fn users_create(s: &SharedState) -> BoxedFilter<(Response,)> {
    let f = warp::path!("v1" / "tenants" / String / "users")
        .and(warp::post())
        .and(principal(s))
        .and(json_body::<NewUser>(s))
        .and(with(s))
        .then(|t: String, who: Who, body: Result<NewUser, Problem>, s: SharedState| async move {
            reply(
                async {
                    let sc = scope_where(&s, who, &t, Access::manages_school)?;
                    let u = body?;
                    u.validate(sc.access)?;
                    let doc: Value = in_scoped_tx(&s, &sc, async |tx| {
                        sqlx::query_scalar(
                            "INSERT INTO users (id, email, full_name, role, school_id, is_active, external_id) \
                             VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING to_jsonb(users.*)",
                        )
                        .bind(Uuid::new_v4())
                        .bind(&u.email)
                        .bind(&u.full_name)
                        .bind(u.role)
                        .bind(sc.school_id())
                        .bind(u.is_active)
                        .bind(&u.external_id)
                        .fetch_one(&mut *tx)
                        .await
                        .map_err(db_problem)
                    })
                    .await?;
                    Ok(json_reply(StatusCode::CREATED, &typed::<wire::User>(doc)?))
                }
                .await,
            )
        })
        .boxed();
    instrument(s, openapi::USERS_CREATE, f)
}
