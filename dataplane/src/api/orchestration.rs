//! Orchestration tables (platform admins): workflow executions, circuit breakers, routing decisions and statistics.

use super::*;

/// Orchestration state: workflows, circuit breakers, decisions, agent stats: this module's route group.
pub(super) fn routes(s: &SharedState) -> BoxedFilter<(Response,)> {
    any_of([
        workflows_list(s),
        workflows_create(s),
        breakers_list(s),
        breakers_get(s),
        breakers_put(s),
        decisions_list(s),
        decisions_create(s),
        decisions_get(s),
        stats_list(s),
        stats_get(s),
        stats_put(s),
    ])
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct WorkflowQuery {
    /// The previous page's `next_after`.
    after: Option<String>,
    /// Page size (default 50).
    #[param(minimum = 1, maximum = 200)]
    limit: Option<i64>,
    status: Option<String>,
}

pub(super) const WORKFLOW_STATUSES: [&str; 4] = ["Pending", "Running", "Completed", "Failed"];

/// `GET /v1/tenants/{tenant}/workflow-executions?after=&limit=&status=`: orchestration
/// runs, keyset-paginated by `execution_id`. Platform admins only.
pub fn workflows_list(s: &SharedState) -> BoxedFilter<(Response,)> {
    let f = warp::path!("v1" / "tenants" / String / "workflow-executions")
        .and(warp::get())
        .and(query::<WorkflowQuery>())
        .and(principal(s))
        .and(if_none_match())
        .and(with(s))
        .then(|t: String, q: Result<WorkflowQuery, Problem>, who: Who, inm: Option<String>, s: SharedState| async move {
            reply(
                async {
                    let sc = scope_where(&s, who, &t, |a| a == Access::Admin)?;
                    let q = q?;
                    let limit = page_limit(q.limit)?;
                    if q.status.as_deref().is_some_and(|st| !WORKFLOW_STATUSES.contains(&st)) {
                        return Err(Problem::bad_request("status must be Pending, Running, Completed or Failed"));
                    }
                    let body = fetch_text(
                        &s,
                        &sc,
                        scoped!(crate::sql_page!(
                            crate::sql_workflow!(),
                            "r.execution_id",
                            "$5::int",
                            "SELECT * FROM workflow_executions WHERE ($3::text IS NULL OR execution_id > $3::text) \
                             AND ($4::text IS NULL OR status = $4::text) ORDER BY execution_id LIMIT $5::int"
                        )),
                        &[
                            q.after.map(Value::String).unwrap_or(Value::Null),
                            q.status.map(Value::String).unwrap_or(Value::Null),
                            json!(limit),
                        ],
                    )
                    .await?
                    .ok_or_else(Problem::internal)?;
                    Ok(etagged(body, inm.as_deref()))
                }
                .await,
            )
        })
        .boxed();
    instrument(s, openapi::WORKFLOWS_LIST, f)
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct WorkflowBody {
    execution_id: String,
    workflow_name: String,
    status: String,
    workflow_definition_json: String,
    initiated_by: String,
    tags: Option<String>,
}

pub(super) fn check_len(field: &str, v: &str, max: usize) -> Result<(), Problem> {
    if v.is_empty() || v.chars().count() > max {
        return Err(Problem::bad_request(format!(
            "{field} must be 1..={max} characters"
        )));
    }
    Ok(())
}

/// `POST /v1/tenants/{tenant}/workflow-executions`: records an orchestration run
/// (`tenant_id` is the path's tenant). Platform admins only.
pub fn workflows_create(s: &SharedState) -> BoxedFilter<(Response,)> {
    let f = warp::path!("v1" / "tenants" / String / "workflow-executions")
        .and(warp::post())
        .and(principal(s))
        .and(json_body::<WorkflowBody>(s))
        .and(with(s))
        .then(|t: String, who: Who, b: Result<WorkflowBody, Problem>, s: SharedState| async move {
            reply(
                async {
                    let sc = scope(&s, who, &t)?;
                    let b = b?;
                    if sc.access != Access::Admin {
                        return Err(Problem::forbidden());
                    }
                    check_len("execution_id", &b.execution_id, 100)?;
                    check_len("workflow_name", &b.workflow_name, 200)?;
                    check_len("initiated_by", &b.initiated_by, 100)?;
                    if let Some(tags) = &b.tags {
                        check_len("tags", tags, 500)?;
                    }
                    if !WORKFLOW_STATUSES.contains(&b.status.as_str()) {
                        return Err(Problem::bad_request("status must be Pending, Running, Completed or Failed"));
                    }
                    let doc: Value = in_scoped_tx(&s, &sc, async |tx| {
                        sqlx::query_scalar(
                            "INSERT INTO workflow_executions (execution_id, tenant_id, workflow_name, status, \
                             workflow_definition_json, initiated_by, tags) VALUES ($1, $2, $3, $4, $5, $6, $7) \
                             RETURNING to_jsonb(workflow_executions.*)",
                        )
                        .bind(&b.execution_id)
                        .bind(sc.tenant.id.to_string())
                        .bind(&b.workflow_name)
                        .bind(&b.status)
                        .bind(&b.workflow_definition_json)
                        .bind(&b.initiated_by)
                        .bind(&b.tags)
                        .fetch_one(&mut *tx)
                        .await
                        .map_err(db_problem)
                    })
                    .await?;
                    Ok(json_reply(StatusCode::CREATED, &typed::<wire::WorkflowExecution>(doc)?))
                }
                .await,
            )
        })
        .boxed();
    instrument(s, openapi::WORKFLOWS_CREATE, f)
}

pub(super) fn check_opt(field: &str, v: &Option<String>, max: usize) -> Result<(), Problem> {
    match v {
        Some(v) => check_len(field, v, max),
        None => Ok(()),
    }
}

/// An agent key from the path (`varchar(200)`): URL-safe characters only, so the raw
/// segment is the key itself (no percent-decoding ambiguity).
pub(super) fn path_agent_key(raw: &str) -> Result<String, Problem> {
    check_len("agent_key", raw, 200)?;
    if !raw
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "-_.:@~".contains(c))
    {
        return Err(Problem::bad_request(
            "agent_key may only hold letters, digits and - _ . : @ ~",
        ));
    }
    Ok(raw.to_owned())
}

pub(super) fn page_limit(limit: Option<i64>) -> Result<i64, Problem> {
    let limit = limit.unwrap_or(50);
    if !(1..=200).contains(&limit) {
        return Err(Problem::bad_request("limit must be between 1 and 200"));
    }
    Ok(limit)
}

pub(super) fn admin_scope(s: &SharedState, who: Who, t: &str) -> Result<Scope, Problem> {
    scope_where(s, who, t, |a| a == Access::Admin)
}

pub(super) const BREAKER_STATES: [&str; 3] = ["Closed", "Open", "HalfOpen"];

/// `GET /v1/tenants/{tenant}/circuit-breakers?after=&limit=`: circuit breaker states,
/// keyset-paginated by `agent_key`. Platform admins only.
pub fn breakers_list(s: &SharedState) -> BoxedFilter<(Response,)> {
    agent_keyed_list(
        s,
        openapi::BREAKERS_LIST,
        "circuit-breakers",
        scoped!(crate::sql_page!(
            crate::sql_breaker!(),
            "r.agent_key",
            "$4::int",
            "SELECT * FROM circuit_breaker_states WHERE ($3::text IS NULL OR agent_key > $3::text) \
             ORDER BY agent_key LIMIT $4::int"
        )),
    )
}

/// `GET /v1/tenants/{tenant}/circuit-breakers/{agent_key}`. Platform admins only.
pub fn breakers_get(s: &SharedState) -> BoxedFilter<(Response,)> {
    keyed_get(
        s,
        openapi::BREAKERS_GET,
        "circuit-breakers",
        PathKey::Agent,
        scoped!(concat!(
            "SELECT ",
            crate::sql_breaker!(),
            "::text AS doc FROM circuit_breaker_states r WHERE r.agent_key = $3::text"
        )),
    )
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct BreakerBody {
    state: String,
    #[serde(default)]
    failure_count: i32,
    /// RFC 3339 timestamp.
    last_failure_at: Option<String>,
}

/// `PUT /v1/tenants/{tenant}/circuit-breakers/{agent_key}`: creates or replaces the state
/// (`tenant_id` is the path's tenant). Platform admins only.
pub fn breakers_put(s: &SharedState) -> BoxedFilter<(Response,)> {
    let f = warp::path!("v1" / "tenants" / String / "circuit-breakers" / String)
        .and(warp::put())
        .and(principal(s))
        .and(json_body::<BreakerBody>(s))
        .and(with(s))
        .then(|t: String, k: String, who: Who, b: Result<BreakerBody, Problem>, s: SharedState| async move {
            reply(
                async {
                    let sc = admin_scope(&s, who, &t)?;
                    let b = b?;
                    let k = path_agent_key(&k)?;
                    if !BREAKER_STATES.contains(&b.state.as_str()) {
                        return Err(Problem::bad_request("state must be Closed, Open or HalfOpen"));
                    }
                    if b.failure_count < 0 {
                        return Err(Problem::bad_request("failure_count must be >= 0"));
                    }
                    let last_failure_at =
                        crate::validate::utc_timestamp("last_failure_at", b.last_failure_at.as_deref())?;
                    let doc: Value = in_scoped_tx(&s, &sc, async |tx| {
                        sqlx::query_scalar(
                            "INSERT INTO circuit_breaker_states (agent_key, tenant_id, state, failure_count, \
                             last_failure_at, last_updated) VALUES ($1, $2, $3, $4, $5, now()) \
                             ON CONFLICT (agent_key) DO UPDATE SET tenant_id = EXCLUDED.tenant_id, \
                             state = EXCLUDED.state, failure_count = EXCLUDED.failure_count, \
                             last_failure_at = EXCLUDED.last_failure_at, last_updated = now() \
                             RETURNING to_jsonb(circuit_breaker_states.*)",
                        )
                        .bind(&k)
                        .bind(sc.tenant.id.to_string())
                        .bind(&b.state)
                        .bind(b.failure_count)
                        .bind(last_failure_at)
                        .fetch_one(&mut *tx)
                        .await
                        .map_err(db_problem)
                    })
                    .await?;
                    Ok(json_reply(StatusCode::OK, &typed::<wire::CircuitBreaker>(doc)?))
                }
                .await,
            )
        })
        .boxed();
    instrument(s, openapi::BREAKERS_PUT, f)
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct DecisionsQuery {
    /// The previous page's `next_after`.
    after: Option<Uuid>,
    /// Page size (default 50).
    #[param(minimum = 1, maximum = 200)]
    limit: Option<i64>,
    tenant_id: Option<String>,
    task_id: Option<String>,
}

/// `GET /v1/tenants/{tenant}/routing-decisions?after=&limit=&tenant_id=&task_id=`:
/// routing decisions, keyset-paginated by id. Platform admins only.
pub fn decisions_list(s: &SharedState) -> BoxedFilter<(Response,)> {
    let f = warp::path!("v1" / "tenants" / String / "routing-decisions")
        .and(warp::get())
        .and(query::<DecisionsQuery>())
        .and(principal(s))
        .and(if_none_match())
        .and(with(s))
        .then(|t: String, q: Result<DecisionsQuery, Problem>, who: Who, inm: Option<String>, s: SharedState| async move {
            reply(
                async {
                    let sc = admin_scope(&s, who, &t)?;
                    let q = q?;
                    let limit = page_limit(q.limit)?;
                    check_opt("tenant_id", &q.tenant_id, 100)?;
                    check_opt("task_id", &q.task_id, 100)?;
                    let body = fetch_text(
                        &s,
                        &sc,
                        scoped!(crate::sql_page!(
                            crate::sql_decision!(),
                            "r.id",
                            "$6::int",
                            "SELECT * FROM routing_decisions WHERE ($3::uuid IS NULL OR id > $3::uuid) \
                             AND ($4::text IS NULL OR tenant_id = $4::text) \
                             AND ($5::text IS NULL OR task_id = $5::text) ORDER BY id LIMIT $6::int"
                        )),
                        &[
                            q.after.map(|a| json!(a.to_string())).unwrap_or(Value::Null),
                            q.tenant_id.map(Value::String).unwrap_or(Value::Null),
                            q.task_id.map(Value::String).unwrap_or(Value::Null),
                            json!(limit),
                        ],
                    )
                    .await?
                    .ok_or_else(Problem::internal)?;
                    Ok(etagged(body, inm.as_deref()))
                }
                .await,
            )
        })
        .boxed();
    instrument(s, openapi::DECISIONS_LIST, f)
}

/// `GET /v1/tenants/{tenant}/routing-decisions/{id}`. Platform admins only.
pub fn decisions_get(s: &SharedState) -> BoxedFilter<(Response,)> {
    keyed_get(
        s,
        openapi::DECISIONS_GET,
        "routing-decisions",
        PathKey::Uuid,
        scoped!(concat!(
            "SELECT ",
            crate::sql_decision!(),
            "::text AS doc FROM routing_decisions r WHERE r.id = $3::uuid"
        )),
    )
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct DecisionBody {
    task_id: String,
    task_type: String,
    required_capability: String,
    selected_agent: String,
    reason: String,
    routing_score: f64,
    workflow_execution_id: Option<String>,
    workflow_step_id: Option<String>,
}

/// `POST /v1/tenants/{tenant}/routing-decisions`: records a routing decision (new id,
/// `tenant_id` is the path's tenant). Platform admins only.
pub fn decisions_create(s: &SharedState) -> BoxedFilter<(Response,)> {
    let f = warp::path!("v1" / "tenants" / String / "routing-decisions")
        .and(warp::post())
        .and(principal(s))
        .and(json_body::<DecisionBody>(s))
        .and(with(s))
        .then(|t: String, who: Who, b: Result<DecisionBody, Problem>, s: SharedState| async move {
            reply(
                async {
                    let sc = admin_scope(&s, who, &t)?;
                    let b = b?;
                    check_len("task_id", &b.task_id, 100)?;
                    check_len("task_type", &b.task_type, 100)?;
                    check_len("required_capability", &b.required_capability, 100)?;
                    check_len("selected_agent", &b.selected_agent, 200)?;
                    check_len("reason", &b.reason, 8000)?;
                    check_opt("workflow_execution_id", &b.workflow_execution_id, 100)?;
                    check_opt("workflow_step_id", &b.workflow_step_id, 100)?;
                    if !b.routing_score.is_finite() {
                        return Err(Problem::bad_request("routing_score must be a finite number"));
                    }
                    let doc: Value = in_scoped_tx(&s, &sc, async |tx| {
                        sqlx::query_scalar(
                            "INSERT INTO routing_decisions (id, tenant_id, task_id, task_type, required_capability, \
                             selected_agent, reason, routing_score, workflow_execution_id, workflow_step_id) \
                             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) RETURNING to_jsonb(routing_decisions.*)",
                        )
                        .bind(Uuid::new_v4())
                        .bind(sc.tenant.id.to_string())
                        .bind(&b.task_id)
                        .bind(&b.task_type)
                        .bind(&b.required_capability)
                        .bind(&b.selected_agent)
                        .bind(&b.reason)
                        .bind(b.routing_score)
                        .bind(&b.workflow_execution_id)
                        .bind(&b.workflow_step_id)
                        .fetch_one(&mut *tx)
                        .await
                        .map_err(db_problem)
                    })
                    .await?;
                    Ok(json_reply(StatusCode::CREATED, &typed::<wire::RoutingDecision>(doc)?))
                }
                .await,
            )
        })
        .boxed();
    instrument(s, openapi::DECISIONS_CREATE, f)
}

/// `GET /v1/tenants/{tenant}/routing-statistics?after=&limit=`: per-agent statistics,
/// keyset-paginated by `agent_key`. Platform admins only.
pub fn stats_list(s: &SharedState) -> BoxedFilter<(Response,)> {
    agent_keyed_list(
        s,
        openapi::STATS_LIST,
        "routing-statistics",
        scoped!(crate::sql_page!(
            crate::sql_statistics!(),
            "r.agent_key",
            "$4::int",
            "SELECT * FROM routing_statistics WHERE ($3::text IS NULL OR agent_key > $3::text) \
             ORDER BY agent_key LIMIT $4::int"
        )),
    )
}

/// `GET /v1/tenants/{tenant}/routing-statistics/{agent_key}`. Platform admins only.
pub fn stats_get(s: &SharedState) -> BoxedFilter<(Response,)> {
    keyed_get(
        s,
        openapi::STATS_GET,
        "routing-statistics",
        PathKey::Agent,
        scoped!(concat!(
            "SELECT ",
            crate::sql_statistics!(),
            "::text AS doc FROM routing_statistics r WHERE r.agent_key = $3::text"
        )),
    )
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct StatsBody {
    total_tasks: i32,
    successful_tasks: i32,
    failed_tasks: i32,
    average_duration_ms: i32,
    /// Fraction of successful tasks, 0..=1.
    success_rate: f64,
}

/// `PUT /v1/tenants/{tenant}/routing-statistics/{agent_key}`: creates or replaces an
/// agent's statistics (`tenant_id` is the path's tenant). Platform admins only.
pub fn stats_put(s: &SharedState) -> BoxedFilter<(Response,)> {
    let f = warp::path!("v1" / "tenants" / String / "routing-statistics" / String)
        .and(warp::put())
        .and(principal(s))
        .and(json_body::<StatsBody>(s))
        .and(with(s))
        .then(|t: String, k: String, who: Who, b: Result<StatsBody, Problem>, s: SharedState| async move {
            reply(
                async {
                    let sc = admin_scope(&s, who, &t)?;
                    let b = b?;
                    let k = path_agent_key(&k)?;
                    if b.total_tasks < 0 || b.successful_tasks < 0 || b.failed_tasks < 0 || b.average_duration_ms < 0 {
                        return Err(Problem::bad_request("task counts and average_duration_ms must be >= 0"));
                    }
                    if !(b.success_rate.is_finite() && (0.0..=1.0).contains(&b.success_rate)) {
                        return Err(Problem::bad_request("success_rate must be between 0 and 1"));
                    }
                    let doc: Value = in_scoped_tx(&s, &sc, async |tx| {
                        sqlx::query_scalar(
                            "INSERT INTO routing_statistics (agent_key, tenant_id, total_tasks, successful_tasks, \
                             failed_tasks, average_duration_ms, success_rate, last_updated) \
                             VALUES ($1, $2, $3, $4, $5, $6, $7, now()) \
                             ON CONFLICT (agent_key) DO UPDATE SET tenant_id = EXCLUDED.tenant_id, \
                             total_tasks = EXCLUDED.total_tasks, successful_tasks = EXCLUDED.successful_tasks, \
                             failed_tasks = EXCLUDED.failed_tasks, average_duration_ms = EXCLUDED.average_duration_ms, \
                             success_rate = EXCLUDED.success_rate, last_updated = now() \
                             RETURNING to_jsonb(routing_statistics.*)",
                        )
                        .bind(&k)
                        .bind(sc.tenant.id.to_string())
                        .bind(b.total_tasks)
                        .bind(b.successful_tasks)
                        .bind(b.failed_tasks)
                        .bind(b.average_duration_ms)
                        .bind(b.success_rate)
                        .fetch_one(&mut *tx)
                        .await
                        .map_err(db_problem)
                    })
                    .await?;
                    Ok(json_reply(StatusCode::OK, &typed::<wire::RoutingStatistics>(doc)?))
                }
                .await,
            )
        })
        .boxed();
    instrument(s, openapi::STATS_PUT, f)
}
