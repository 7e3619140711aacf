//! The route table and the OpenAPI 3.1 document built from it (`GET /openapi.json`).
//!
//! Each [`RouteDoc`] is one operation's whole contract: its query parameters (a
//! `utoipa::IntoParams` type), request body and success reply (`utoipa::ToSchema` types,
//! the same types the handlers decode and send, see [`crate::wire`]), whether it answers
//! with an `ETag` and `304`, and every error status it can answer with
//! (`application/problem+json`, one `Problem` schema).
//!
//! Drift guard: a route can only be mounted through [`crate::api`]'s `instrument`, which
//! takes its [`RouteDoc`] from this table, so an undocumented route does not compile;
//! `tests/openapi.rs` calls every documented method and path on the running server and
//! fails if any is not routed; and the schemathesis run (`tests/contract.rs`) checks that
//! what the server answers matches the documented statuses and schemas.

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};
use utoipa::openapi::path::{Parameter, ParameterIn};
use utoipa::{IntoParams, ToSchema};

use crate::api::attempts::{AnswerBody, StartBody};
use crate::api::classes::{ClassBody, RosterBody};
use crate::api::content::{AssessmentBody, CourseBody, QuestionBody, QuestionsQuery};
use crate::api::keyed::KeyQuery;
use crate::api::orchestration::{
    BreakerBody, DecisionBody, DecisionsQuery, StatsBody, WorkflowBody, WorkflowQuery,
};
use crate::api::students::{NewStudent, StudentsQuery};
use crate::api::users::{NewUser, UsersQuery};
use crate::problem::Problem;
use crate::wire::*;

/// Component schemas collected while the document is built, by name.
pub type Schemas = BTreeMap<String, Value>;

/// Registers a body's schema (and the schemas it references) and returns the schema to
/// put in the operation (usually a `$ref`).
pub type SchemaFn = fn(&mut Schemas) -> Value;

/// Query parameters of an operation.
pub type ParamsFn = fn() -> Vec<Parameter>;

/// The schema of `T` as a component, with everything it references.
pub fn schema<T: ToSchema>(out: &mut Schemas) -> Value {
    let name = T::name().into_owned();
    let mut deps = Vec::new();
    T::schemas(&mut deps);
    for (n, s) in deps {
        out.insert(n, serde_json::to_value(s).unwrap_or(Value::Null));
    }
    out.insert(
        name.clone(),
        serde_json::to_value(T::schema()).unwrap_or(Value::Null),
    );
    json!({"$ref": format!("#/components/schemas/{name}")})
}

fn query<T: IntoParams>() -> Vec<Parameter> {
    T::into_params(|| Some(ParameterIn::Query))
}

fn any_object(_: &mut Schemas) -> Value {
    json!({"type": "object", "additionalProperties": true})
}

fn text(_: &mut Schemas) -> Value {
    json!({"type": "string"})
}

/// One operation.
#[derive(Debug, Clone, Copy)]
pub struct RouteDoc {
    /// Operation id, also the `route` label of the metrics.
    pub id: &'static str,
    pub method: &'static str,
    /// OpenAPI path template (`{tenant}` is a school id or `selfservice`).
    pub path: &'static str,
    /// Whether a bearer token is required.
    pub auth: bool,
    pub summary: &'static str,
    pub query: Option<ParamsFn>,
    pub body: Option<SchemaFn>,
    /// The success status (200, 201 or 204) and its body.
    pub ok: u16,
    pub reply: Option<SchemaFn>,
    /// Media type of the success body.
    pub reply_type: &'static str,
    /// Strong `ETag` on the reply; `If-None-Match` answers `304`.
    pub etag: bool,
    /// Every error status the operation can answer with (problem+json).
    pub errors: &'static [u16],
    /// Also answers `503` with the success body (readiness: "not ready").
    pub unready: bool,
}

const fn op(
    id: &'static str,
    method: &'static str,
    path: &'static str,
    summary: &'static str,
) -> RouteDoc {
    RouteDoc {
        id,
        method,
        path,
        auth: true,
        summary,
        query: None,
        body: None,
        ok: 200,
        reply: None,
        reply_type: "application/json",
        etag: false,
        errors: &[],
        unready: false,
    }
}

impl RouteDoc {
    const fn public(mut self) -> Self {
        self.auth = false;
        self
    }
    const fn query(mut self, q: ParamsFn) -> Self {
        self.query = Some(q);
        self
    }
    const fn body(mut self, b: SchemaFn) -> Self {
        self.body = Some(b);
        self
    }
    const fn reply(mut self, status: u16, r: SchemaFn) -> Self {
        self.ok = status;
        self.reply = Some(r);
        self
    }
    const fn no_content(mut self) -> Self {
        self.ok = 204;
        self.reply = None;
        self
    }
    const fn media(mut self, t: &'static str) -> Self {
        self.reply_type = t;
        self
    }
    const fn etag(mut self) -> Self {
        self.etag = true;
        self
    }
    const fn errors(mut self, e: &'static [u16]) -> Self {
        self.errors = e;
        self
    }
    const fn unready(mut self) -> Self {
        self.unready = true;
        self
    }
}

/// A read of a tenant's data: a malformed header is 400, an unknown tenant or id 404.
const READ: &[u16] = &[400, 401, 403, 404, 503];
/// A write with a JSON body (411 without `Content-Length`, 413 over the body limit).
const WRITE: &[u16] = &[400, 401, 403, 404, 411, 413, 503];
/// A write that can collide with existing rows or state.
const WRITE_CONFLICT: &[u16] = &[400, 401, 403, 404, 409, 411, 413, 503];
/// A delete: 409 while the row is referenced.
const DELETE: &[u16] = &[400, 401, 403, 404, 409, 503];

macro_rules! routes {
    ($($name:ident = $doc:expr;)*) => {
        $(pub const $name: RouteDoc = $doc;)*
        /// Every route the service mounts.
        pub const ALL: &[RouteDoc] = &[$($name),*];
    };
}

routes! {
    HEALTHZ = op("healthz", "get", "/healthz", "Liveness: the process answers")
        .public().reply(200, schema::<Health>);
    READYZ = op("readyz", "get", "/readyz", "Readiness: ready (200) or not (503, same body), nothing more (the details are on the admin listener)")
        .public().reply(200, schema::<Health>).unready();
    OPENAPI = op("openapi", "get", "/openapi.json", "This document")
        .public().reply(200, any_object);
    SCHOOL_GET = op("school.get", "get", "/v1/tenants/{tenant}/school", "The school's own record (school members, admins)")
        .reply(200, schema::<School>).etag().errors(READ);
    USERS_LIST = op("users.list", "get", "/v1/tenants/{tenant}/users", "Users, keyset-paginated by id, filtered by role (staff and admins)")
        .query(query::<UsersQuery>).reply(200, schema::<UserPage>).etag().errors(READ);
    USERS_CREATE = op("users.create", "post", "/v1/tenants/{tenant}/users", "Create a user of this tenant (school admins: roles 0-2; admins: any); 409 when the email or external id is taken")
        .body(schema::<NewUser>).reply(201, schema::<User>).errors(WRITE_CONFLICT);
    STUDENTS_LIST = op("students.list", "get", "/v1/tenants/{tenant}/students", "Students, keyset-paginated by id; students see themselves")
        .query(query::<StudentsQuery>).reply(200, schema::<StudentPage>).etag().errors(READ);
    STUDENTS_CREATE = op("students.create", "post", "/v1/tenants/{tenant}/students", "Make a Student-role user of this tenant a student (school admins, admins); 409 when already one")
        .body(schema::<NewStudent>).reply(201, schema::<Student>).errors(WRITE_CONFLICT);
    STUDENT_PROGRESS = op("students.progress", "get", "/v1/tenants/{tenant}/students/{id}/progress", "Level, XP, streak and attempt counts (cached 5 min)")
        .reply(200, schema::<Progress>).etag().errors(READ);
    ROSTER_GET = op("classes.roster.get", "get", "/v1/tenants/{tenant}/classes/{id}/roster", "A class's students (cached 10 min)")
        .reply(200, schema::<Roster>).etag().errors(READ);
    ROSTER_PUT = op("classes.roster.put", "put", "/v1/tenants/{tenant}/classes/{id}/roster", "Replace a class's roster; the students' class_ids follow in the same transaction")
        .body(schema::<RosterBody>).reply(200, schema::<RosterUpdate>).errors(WRITE);
    COURSE_QUESTIONS = op("courses.questions", "get", "/v1/tenants/{tenant}/courses/{id}/questions", "A course's active questions, keyset-paginated by id (cached 1 h; no answers for students)")
        .query(query::<QuestionsQuery>).reply(200, schema::<QuestionPage>).etag().errors(READ);
    ASSESSMENT_GET = op("assessments.get", "get", "/v1/tenants/{tenant}/assessments/{id}", "Assessment metadata (cached 15 min); students see active ones only")
        .reply(200, schema::<Assessment>).etag().errors(READ);
    ATTEMPT_START = op("attempts.start", "post", "/v1/tenants/{tenant}/attempts", "Start an attempt (students)")
        .body(schema::<StartBody>).reply(201, schema::<Attempt>).errors(WRITE);
    ATTEMPT_ANSWER = op("attempts.answer", "post", "/v1/tenants/{tenant}/attempts/{id}/responses", "Answer one question of an attempt in progress (no correctness until submitted); 409 when not in progress")
        .body(schema::<AnswerBody>).reply(200, schema::<AnswerReceipt>).errors(WRITE_CONFLICT);
    ATTEMPT_SUBMIT = op("attempts.submit", "post", "/v1/tenants/{tenant}/attempts/{id}/submit", "Score the attempt and update XP, level and streak (once; 409 after)")
        .reply(200, schema::<Submission>).errors(&[400, 401, 403, 404, 409, 503]);
    ATTEMPT_GET = op("attempts.get", "get", "/v1/tenants/{tenant}/attempts/{id}", "An attempt with its responses; a student sees correctness only once submitted")
        .reply(200, schema::<AttemptDetail>).etag().errors(READ);
    SESSION_PUT = op("session.put", "put", "/v1/session", "Store the caller's session, a JSON object of at most 4 KiB (30-minute sliding expiry)")
        .body(any_object).reply(200, any_object).errors(&[400, 401, 411, 413, 415, 503]);
    SESSION_GET = op("session.get", "get", "/v1/session", "Read the caller's session and slide its expiry")
        .reply(200, any_object).errors(&[400, 401, 404, 503]);
    SESSION_DELETE = op("session.delete", "delete", "/v1/session", "End the caller's session")
        .no_content().errors(&[400, 401, 503]);
    WORKFLOWS_LIST = op("workflows.list", "get", "/v1/tenants/{tenant}/workflow-executions", "Orchestration runs, keyset-paginated by execution_id (platform admins)")
        .query(query::<WorkflowQuery>).reply(200, schema::<WorkflowPage>).etag().errors(READ);
    WORKFLOWS_CREATE = op("workflows.create", "post", "/v1/tenants/{tenant}/workflow-executions", "Record an orchestration run (platform admins); 409 when the execution id exists")
        .body(schema::<WorkflowBody>).reply(201, schema::<WorkflowExecution>).errors(WRITE_CONFLICT);
    BREAKERS_LIST = op("breakers.list", "get", "/v1/tenants/{tenant}/circuit-breakers", "Circuit breaker states, keyset-paginated by agent_key (platform admins)")
        .query(query::<KeyQuery>).reply(200, schema::<BreakerPage>).etag().errors(READ);
    BREAKERS_GET = op("breakers.get", "get", "/v1/tenants/{tenant}/circuit-breakers/{agent_key}", "One agent's circuit breaker state (platform admins)")
        .reply(200, schema::<CircuitBreaker>).etag().errors(READ);
    BREAKERS_PUT = op("breakers.put", "put", "/v1/tenants/{tenant}/circuit-breakers/{agent_key}", "Create or replace an agent's circuit breaker state: Closed, Open or HalfOpen (platform admins)")
        .body(schema::<BreakerBody>).reply(200, schema::<CircuitBreaker>).errors(WRITE);
    DECISIONS_LIST = op("decisions.list", "get", "/v1/tenants/{tenant}/routing-decisions", "Routing decisions, keyset-paginated by id, filtered by tenant_id and task_id (platform admins)")
        .query(query::<DecisionsQuery>).reply(200, schema::<DecisionPage>).etag().errors(READ);
    DECISIONS_CREATE = op("decisions.create", "post", "/v1/tenants/{tenant}/routing-decisions", "Record a routing decision (platform admins)")
        .body(schema::<DecisionBody>).reply(201, schema::<RoutingDecision>).errors(WRITE);
    DECISIONS_GET = op("decisions.get", "get", "/v1/tenants/{tenant}/routing-decisions/{id}", "One routing decision (platform admins)")
        .reply(200, schema::<RoutingDecision>).etag().errors(READ);
    STATS_LIST = op("stats.list", "get", "/v1/tenants/{tenant}/routing-statistics", "Per-agent routing statistics, keyset-paginated by agent_key (platform admins)")
        .query(query::<KeyQuery>).reply(200, schema::<StatisticsPage>).etag().errors(READ);
    STATS_GET = op("stats.get", "get", "/v1/tenants/{tenant}/routing-statistics/{agent_key}", "One agent's routing statistics (platform admins)")
        .reply(200, schema::<RoutingStatistics>).etag().errors(READ);
    COURSE_PUT = op("courses.put", "put", "/v1/tenants/{tenant}/courses/{id}", "Create or replace a course by id (global content; course, business and system admins); invalidates its cached question list; 409 when the code is taken")
        .body(schema::<CourseBody>).reply(200, schema::<Course>).errors(WRITE_CONFLICT);
    QUESTION_PUT = op("questions.put", "put", "/v1/tenants/{tenant}/questions/{id}", "Create or replace a question by id (global content); invalidates its course's cached question list")
        .body(schema::<QuestionBody>).reply(200, schema::<Question>).errors(WRITE);
    ASSESSMENT_PUT = op("assessments.put", "put", "/v1/tenants/{tenant}/assessments/{id}", "Create or replace an assessment by id (global content); invalidates its cached metadata")
        .body(schema::<AssessmentBody>).reply(200, schema::<Assessment>).errors(WRITE);
    CLASS_PUT = op("classes.put", "put", "/v1/tenants/{tenant}/classes/{id}", "Create or replace a class by id (school admins, platform admins); invalidates its cached roster; 409 when the code is taken in this school")
        .body(schema::<ClassBody>).reply(200, schema::<Class>).errors(WRITE_CONFLICT);
    CLASS_DELETE = op("classes.delete", "delete", "/v1/tenants/{tenant}/classes/{id}", "Delete a class of this school (school admins, platform admins); drops its cached roster and removes it from its students' class_ids")
        .no_content().errors(DELETE);
    COURSE_DELETE = op("courses.delete", "delete", "/v1/tenants/{tenant}/courses/{id}", "Delete a course (content writers); 409 while questions or assessments reference it")
        .no_content().errors(DELETE);
    QUESTION_DELETE = op("questions.delete", "delete", "/v1/tenants/{tenant}/questions/{id}", "Delete a question (content writers); 409 while responses or an assessment's question_ids reference it")
        .no_content().errors(DELETE);
    ASSESSMENT_DELETE = op("assessments.delete", "delete", "/v1/tenants/{tenant}/assessments/{id}", "Delete an assessment (content writers); 409 while attempts reference it")
        .no_content().errors(DELETE);
    STATS_PUT = op("stats.put", "put", "/v1/tenants/{tenant}/routing-statistics/{agent_key}", "Create or replace an agent's routing statistics (platform admins)")
        .body(schema::<StatsBody>).reply(200, schema::<RoutingStatistics>).errors(WRITE);
}

/// The admin listener's operations (`admin_listen`): not part of the public document.
pub const ADMIN_METRICS: RouteDoc = op("admin.metrics", "get", "/metrics", "Prometheus metrics")
    .public()
    .reply(200, text)
    .media("text/plain");
/// Detailed readiness on the admin listener.
pub const ADMIN_READYZ: RouteDoc = op(
    "admin.readyz",
    "get",
    "/readyz",
    "Readiness: PostgreSQL (per server) and Redis, reported separately",
)
.public()
.reply(200, any_object)
.unready();
/// Liveness on the admin listener.
pub const ADMIN_HEALTHZ: RouteDoc = op(
    "admin.healthz",
    "get",
    "/healthz",
    "Liveness: the process answers",
)
.public()
.reply(200, schema::<Health>);

/// The pattern of an agent key in a path.
pub const AGENT_KEY_PATTERN: &str = "^[A-Za-z0-9._:@~-]{1,200}$";

fn path_params(path: &str) -> Vec<Value> {
    path.split('/')
        .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
        .map(|name| {
            let (schema, description) = match name {
                "tenant" => (
                    json!({"type": "string"}),
                    "school id (UUID) or `selfservice`",
                ),
                "agent_key" => (
                    json!({"type": "string", "pattern": AGENT_KEY_PATTERN}),
                    "agent key (1-200 of A-Z a-z 0-9 - _ . : @ ~)",
                ),
                _ => (json!({"type": "string", "format": "uuid"}), "UUID"),
            };
            json!({"name": name, "in": "path", "required": true, "schema": schema,
                   "description": description})
        })
        .collect()
}

fn etag_header() -> Value {
    json!({"description": "Strong entity tag of the reply body", "schema": {"type": "string"}})
}

fn status_text(code: u16) -> &'static str {
    match code {
        400 => "Invalid input: the detail names the field",
        401 => "Missing or invalid bearer token",
        403 => "Your role may not do this",
        404 => "No such tenant or record, or not yours (identical replies)",
        409 => "Conflicts with existing data or state",
        411 => "Content-Length required",
        413 => "Request body too large",
        415 => "Send application/json",
        503 => "A dependency is unavailable; retry after Retry-After seconds",
        _ => "Error",
    }
}

/// One operation of the document.
fn operation(r: &RouteDoc, schemas: &mut Schemas) -> Value {
    let mut params = path_params(r.path);
    if let Some(q) = r.query {
        params.extend(
            q().iter()
                .map(|p| serde_json::to_value(p).unwrap_or(Value::Null)),
        );
    }
    if r.etag {
        params.push(
            json!({"name": "If-None-Match", "in": "header", "required": false,
            "schema": {"type": "string"},
            "description": "An ETag of an earlier reply: 304 when it still matches"}),
        );
    }
    let mut responses = Map::new();
    let mut ok =
        json!({"description": match r.ok { 201 => "Created", 204 => "No content", _ => "OK" }});
    if let Some(reply) = r.reply {
        ok["content"] = json!({r.reply_type: {"schema": reply(schemas)}});
    }
    if r.etag {
        ok["headers"] = json!({"ETag": etag_header()});
        responses.insert(
            "304".into(),
            json!({"description": "Not modified (If-None-Match matched)",
                   "headers": {"ETag": etag_header()}}),
        );
    }
    if r.unready {
        let mut not_ready = ok.clone();
        not_ready["description"] = json!("Not ready");
        responses.insert("503".into(), not_ready);
    }
    responses.insert(r.ok.to_string(), ok);
    for code in r
        .errors
        .iter()
        .chain(if r.auth { &[401u16][..] } else { &[] })
    {
        let mut e = json!({"description": status_text(*code),
            "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}});
        if *code == 503 {
            e["headers"] = json!({"Retry-After": {"description": "Seconds to wait before retrying",
                "schema": {"type": "integer"}}});
        }
        if *code == 401 {
            e["headers"] = json!({"WWW-Authenticate": {"schema": {"type": "string"}}});
        }
        responses.insert(code.to_string(), e);
    }
    let mut o = json!({
        "operationId": r.id,
        "summary": r.summary,
        "parameters": params,
        "responses": responses,
    });
    if r.auth {
        o["security"] = json!([{"bearer": []}]);
    }
    if let Some(body) = r.body {
        o["requestBody"] =
            json!({"required": true, "content": {"application/json": {"schema": body(schemas)}}});
    }
    o
}

/// The OpenAPI 3.1 document of every route in [`ALL`].
pub fn document() -> Value {
    let mut paths = Map::new();
    let mut schemas = Schemas::new();
    schema::<Problem>(&mut schemas);
    for r in ALL {
        let entry = paths.entry(r.path.to_owned()).or_insert_with(|| json!({}));
        entry[r.method] = operation(r, &mut schemas);
    }
    json!({
        "openapi": "3.1.0",
        "info": {"title": "EduMind data plane", "version": env!("CARGO_PKG_VERSION"),
                 "description": "Tenant-isolated API over the per-school databases. Every error is application/problem+json. Lists are keyset-paginated: `limit` (1-200, default 50), `after` (the previous page's `next_after`), `next_after` (null on the last page)."},
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}},
            "schemas": schemas,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_and_every_route_is_in_the_document() {
        let mut ids: Vec<&str> = ALL.iter().map(|r| r.id).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), ALL.len());
        let doc = document();
        for r in ALL {
            assert_eq!(doc["paths"][r.path][r.method]["operationId"], r.id);
        }
    }

    /// Every body and reply has a schema, and every `$ref` resolves.
    #[test]
    fn every_body_is_typed_and_every_reference_resolves() {
        let doc = document();
        for r in ALL {
            let o = &doc["paths"][r.path][r.method];
            if matches!(r.method, "put" | "post") && r.id != "attempts.submit" {
                assert!(
                    o["requestBody"]["content"]["application/json"]["schema"].is_object(),
                    "{}",
                    r.id
                );
            }
            if r.ok != 204 {
                assert!(
                    o["responses"][r.ok.to_string()]["content"].is_object(),
                    "{}",
                    r.id
                );
            }
        }
        let text = doc.to_string();
        for part in text.split("\"#/components/schemas/").skip(1) {
            let name = part.split('"').next().unwrap_or_default();
            assert!(
                doc["components"]["schemas"][name].is_object(),
                "{name} is not defined"
            );
        }
    }
}
