//! The route table and the OpenAPI 3 document built from it (`GET /openapi.json`).
//!
//! Drift guard: a route can only be mounted through [`crate::api`]'s `instrument`, which
//! takes its [`RouteDoc`] from this table, so an undocumented route does not compile; and
//! `tests/openapi.rs` calls every documented method and path on the running server and
//! fails if any is not routed.

use serde_json::{Map, Value, json};

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
}

macro_rules! routes {
    ($($name:ident = ($id:literal, $method:literal, $path:literal, $auth:literal, $summary:literal);)*) => {
        $(pub const $name: RouteDoc = RouteDoc { id: $id, method: $method, path: $path, auth: $auth, summary: $summary };)*
        /// Every route the service mounts.
        pub const ALL: &[RouteDoc] = &[$($name),*];
    };
}

routes! {
    HEALTHZ = ("healthz", "get", "/healthz", false, "Liveness: the process answers");
    READYZ = ("readyz", "get", "/readyz", false, "Readiness: ready or not, nothing more (the details are on the admin listener)");
    OPENAPI = ("openapi", "get", "/openapi.json", false, "This document");
    SCHOOL_GET = ("school.get", "get", "/v1/tenants/{tenant}/school", true, "The school's own record");
    USERS_LIST = ("users.list", "get", "/v1/tenants/{tenant}/users", true, "Users, keyset-paginated by id, filtered by role (staff and admins)");
    USERS_CREATE = ("users.create", "post", "/v1/tenants/{tenant}/users", true, "Create a user of this tenant (school admins: roles 0-2; admins: any)");
    STUDENTS_LIST = ("students.list", "get", "/v1/tenants/{tenant}/students", true, "Students, keyset-paginated by id (after, limit, grade_level, subscription_tier); students see themselves");
    STUDENTS_CREATE = ("students.create", "post", "/v1/tenants/{tenant}/students", true, "Make a Student-role user of this tenant a student (school admins, admins)");
    STUDENT_PROGRESS = ("students.progress", "get", "/v1/tenants/{tenant}/students/{id}/progress", true, "Level, XP, streak and attempt counts (cached 5 min)");
    ROSTER_GET = ("classes.roster.get", "get", "/v1/tenants/{tenant}/classes/{id}/roster", true, "A class's students (cached 10 min)");
    ROSTER_PUT = ("classes.roster.put", "put", "/v1/tenants/{tenant}/classes/{id}/roster", true, "Replace a class's roster");
    COURSE_QUESTIONS = ("courses.questions", "get", "/v1/tenants/{tenant}/courses/{id}/questions", true, "A course's active questions (cached 1 h; no answers for students)");
    ASSESSMENT_GET = ("assessments.get", "get", "/v1/tenants/{tenant}/assessments/{id}", true, "Assessment metadata (cached 15 min)");
    ATTEMPT_START = ("attempts.start", "post", "/v1/tenants/{tenant}/attempts", true, "Start an attempt (students)");
    ATTEMPT_ANSWER = ("attempts.answer", "post", "/v1/tenants/{tenant}/attempts/{id}/responses", true, "Answer one question of an attempt in progress");
    ATTEMPT_SUBMIT = ("attempts.submit", "post", "/v1/tenants/{tenant}/attempts/{id}/submit", true, "Score the attempt and update XP, level and streak (once)");
    ATTEMPT_GET = ("attempts.get", "get", "/v1/tenants/{tenant}/attempts/{id}", true, "An attempt with its responses");
    SESSION_PUT = ("session.put", "put", "/v1/session", true, "Store the caller's session (30-minute sliding expiry)");
    SESSION_GET = ("session.get", "get", "/v1/session", true, "Read the caller's session and slide its expiry");
    SESSION_DELETE = ("session.delete", "delete", "/v1/session", true, "End the caller's session");
    WORKFLOWS_LIST = ("workflows.list", "get", "/v1/tenants/{tenant}/workflow-executions", true, "Orchestration runs, keyset-paginated (platform admins)");
    WORKFLOWS_CREATE = ("workflows.create", "post", "/v1/tenants/{tenant}/workflow-executions", true, "Record an orchestration run (platform admins)");
    BREAKERS_LIST = ("breakers.list", "get", "/v1/tenants/{tenant}/circuit-breakers", true, "Circuit breaker states, keyset-paginated by agent_key (platform admins)");
    BREAKERS_GET = ("breakers.get", "get", "/v1/tenants/{tenant}/circuit-breakers/{agent_key}", true, "One agent's circuit breaker state (platform admins)");
    BREAKERS_PUT = ("breakers.put", "put", "/v1/tenants/{tenant}/circuit-breakers/{agent_key}", true, "Create or replace an agent's circuit breaker state: Closed, Open or HalfOpen (platform admins)");
    DECISIONS_LIST = ("decisions.list", "get", "/v1/tenants/{tenant}/routing-decisions", true, "Routing decisions, keyset-paginated by id, filtered by tenant_id and task_id (platform admins)");
    DECISIONS_CREATE = ("decisions.create", "post", "/v1/tenants/{tenant}/routing-decisions", true, "Record a routing decision (platform admins)");
    DECISIONS_GET = ("decisions.get", "get", "/v1/tenants/{tenant}/routing-decisions/{id}", true, "One routing decision (platform admins)");
    STATS_LIST = ("stats.list", "get", "/v1/tenants/{tenant}/routing-statistics", true, "Per-agent routing statistics, keyset-paginated by agent_key (platform admins)");
    STATS_GET = ("stats.get", "get", "/v1/tenants/{tenant}/routing-statistics/{agent_key}", true, "One agent's routing statistics (platform admins)");
    COURSE_PUT = ("courses.put", "put", "/v1/tenants/{tenant}/courses/{id}", true, "Create or replace a course by id (global content; course, business and system admins); invalidates its cached question list");
    QUESTION_PUT = ("questions.put", "put", "/v1/tenants/{tenant}/questions/{id}", true, "Create or replace a question by id (global content); invalidates its course's cached question list");
    ASSESSMENT_PUT = ("assessments.put", "put", "/v1/tenants/{tenant}/assessments/{id}", true, "Create or replace an assessment by id (global content); invalidates its cached metadata");
    CLASS_PUT = ("classes.put", "put", "/v1/tenants/{tenant}/classes/{id}", true, "Create or replace a class by id (school admins, platform admins); invalidates its cached roster");
    CLASS_DELETE = ("classes.delete", "delete", "/v1/tenants/{tenant}/classes/{id}", true, "Delete a class of this school (school admins, platform admins); 204; drops its cached roster");
    COURSE_DELETE = ("courses.delete", "delete", "/v1/tenants/{tenant}/courses/{id}", true, "Delete a course (content writers); 204, or 409 while questions or assessments reference it");
    QUESTION_DELETE = ("questions.delete", "delete", "/v1/tenants/{tenant}/questions/{id}", true, "Delete a question (content writers); 204, or 409 while responses or an assessment's question_ids reference it");
    ASSESSMENT_DELETE = ("assessments.delete", "delete", "/v1/tenants/{tenant}/assessments/{id}", true, "Delete an assessment (content writers); 204, or 409 while attempts reference it");
    STATS_PUT = ("stats.put", "put", "/v1/tenants/{tenant}/routing-statistics/{agent_key}", true, "Create or replace an agent's routing statistics (platform admins)");
}

/// The admin listener's operations (`admin_listen`): not part of the public document.
pub const ADMIN_METRICS: RouteDoc = RouteDoc {
    id: "admin.metrics",
    method: "get",
    path: "/metrics",
    auth: false,
    summary: "Prometheus metrics",
};
/// Detailed readiness on the admin listener.
pub const ADMIN_READYZ: RouteDoc = RouteDoc {
    id: "admin.readyz",
    method: "get",
    path: "/readyz",
    auth: false,
    summary: "Readiness: PostgreSQL (per server) and Redis, reported separately",
};
/// Liveness on the admin listener.
pub const ADMIN_HEALTHZ: RouteDoc = RouteDoc {
    id: "admin.healthz",
    method: "get",
    path: "/healthz",
    auth: false,
    summary: "Liveness: the process answers",
};

fn params(path: &str) -> Vec<Value> {
    path.split('/')
        .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
        .map(|name| {
            json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"},
                   "description": match name { "tenant" => "school id (UUID) or `selfservice`", "agent_key" => "agent key (1-200 of A-Z a-z 0-9 - _ . : @ ~)", _ => "UUID" }})
        })
        .collect()
}

/// The OpenAPI 3.0 document of every route in [`ALL`].
pub fn document() -> Value {
    let mut paths = Map::new();
    for r in ALL {
        let mut responses = json!({
            "200": {"description": "OK"},
            "400": {"$ref": "#/components/responses/Problem"},
            "404": {"$ref": "#/components/responses/Problem"},
            "503": {"$ref": "#/components/responses/Problem"}
        });
        if r.method == "delete" && r.path.starts_with("/v1/tenants/") {
            responses["204"] = json!({"description": "Deleted"});
            responses["409"] = json!({"$ref": "#/components/responses/Problem"});
        }
        if r.auth {
            responses["401"] = json!({"$ref": "#/components/responses/Problem"});
            responses["403"] = json!({"$ref": "#/components/responses/Problem"});
        }
        let mut op = json!({
            "operationId": r.id,
            "summary": r.summary,
            "parameters": params(r.path),
            "responses": responses,
        });
        if r.auth {
            op["security"] = json!([{"bearer": []}]);
        }
        if matches!(r.method, "put" | "post") {
            op["requestBody"] =
                json!({"content": {"application/json": {"schema": {"type": "object"}}}});
        }
        let entry = paths.entry(r.path.to_owned()).or_insert_with(|| json!({}));
        entry[r.method] = op;
    }
    json!({
        "openapi": "3.0.3",
        "info": {"title": "EduMind data plane", "version": env!("CARGO_PKG_VERSION")},
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}},
            "responses": {"Problem": {"description": "RFC 9457 problem details",
                "content": {"application/problem+json": {"schema": {"type": "object",
                    "properties": {"type": {"type": "string"}, "title": {"type": "string"},
                                   "status": {"type": "integer"}, "detail": {"type": "string"}}}}}}}
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
}
