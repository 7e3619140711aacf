//! A stand-in Kubernetes API server for process-level tests (feature `kubeapi`): plain
//! HTTP/1.1 on a loopback port, speaking the subset of the REST API that the operator and
//! the data plane use, with **watch**.
//!
//! * Discovery (`/api`, `/apis`, `/api/v1`, `/apis/{group}/{version}`) of the built-in
//!   types in [`builtin_types`] and of the CustomResourceDefinitions given to
//!   [`KubeApi::start`].
//! * get, list (label and field selectors), create (also `generateName`), replace (with
//!   resourceVersion preconditions: 409 Conflict), merge patch (strategic merge patch is
//!   treated as merge patch), JSON patch, server-side apply (subset: see below), the
//!   `status` subresource of types that have one, delete (a finalizer leaves a
//!   `deletionTimestamp`; the object goes when its last finalizer does) with owner-reference
//!   garbage collection, deletecollection.
//! * watch: `?watch=true` streams newline-separated JSON events from a resourceVersion
//!   (replayed from a bounded event history; older than the history answers a `410 Gone`
//!   ERROR event, as the real server does), bookmarks when `allowWatchBookmarks=true`,
//!   `timeoutSeconds`, selector transitions (an object leaving a selector is DELETED for that
//!   watch, entering it ADDED), `sendInitialEvents`.
//! * Custom resources are defaulted and validated against their CRD's OpenAPI schema
//!   (structural JSON Schema: types, required, enums, patterns, lengths, ranges) and their
//!   `x-kubernetes-validations` CEL rules (with `oldSelf` on updates), 422 Invalid on failure.
//! * Every request is recorded ([`KubeApi::requests`]): verb (including `watch`), path,
//!   query, user agent.
//! * Faults for tests: [`KubeApi::break_watches`] closes every open watch stream;
//!   [`KubeApi::compact`] forgets the event history, so resuming answers 410.
//!
//! Not emulated (see docs/testing.md): authentication and authorisation (every request is
//! allowed; RBAC is checked from the recorded requests instead), admission webhooks, full
//! server-side apply (no managed fields or field ownership: an apply creates the object or
//! merges the applied configuration into it, removing nothing), strategic-merge list
//! semantics, paging (`limit` is ignored: a list returns everything, which the API allows),
//! protobuf, HTTP/2, TLS, controllers (no Job controller, kubelet, or namespace lifecycle:
//! namespaces need not exist), foreground deletion (all deletion is background).

mod selectors;
mod store;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::Frame;
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};

pub use selectors::{FieldSelector, LabelSelector};
pub use store::Change;
use store::{Key, Store, name_of, now, ns_of};

type Body = BoxBody<Bytes, Infallible>;

/// A resource type the server serves.
pub struct ResourceType {
    pub group: String,
    pub version: String,
    pub plural: String,
    pub kind: String,
    pub namespaced: bool,
    /// Has a `status` subresource: the main resource ignores status changes, the
    /// subresource changes nothing else.
    pub status: bool,
    /// The CRD's `openAPIV3Schema`, for validation and defaulting.
    pub schema: Option<Value>,
    validator: Option<jsonschema::Validator>,
}

impl ResourceType {
    pub fn new(group: &str, version: &str, plural: &str, kind: &str, status: bool) -> Self {
        Self {
            group: group.into(),
            version: version.into(),
            plural: plural.into(),
            kind: kind.into(),
            namespaced: true,
            status,
            schema: None,
            validator: None,
        }
    }

    fn key(&self) -> String {
        format!("{}/{}", self.group, self.plural)
    }

    fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// The type a CustomResourceDefinition (as JSON) declares (its first served version).
    pub fn from_crd(crd: &Value) -> Result<Self, String> {
        let spec = &crd["spec"];
        let version = spec["versions"]
            .as_array()
            .and_then(|v| v.iter().find(|v| v["served"] != json!(false)))
            .ok_or("CRD without a served version")?;
        let schema = version["schema"]["openAPIV3Schema"].clone();
        let validator = jsonschema::options()
            .with_draft(jsonschema::Draft::Draft4)
            .build(&structural_to_json_schema(&schema))
            .map_err(|e| format!("CRD schema: {e}"))?;
        let str_at = |v: &Value| v.as_str().unwrap_or_default().to_string();
        Ok(Self {
            group: str_at(&spec["group"]),
            version: str_at(&version["name"]),
            plural: str_at(&spec["names"]["plural"]),
            kind: str_at(&spec["names"]["kind"]),
            namespaced: spec["scope"] != json!("Cluster"),
            status: version["subresources"]["status"].is_object(),
            schema: Some(schema),
            validator: Some(validator),
        })
    }

    /// Defaults, then validates `object` against the schema and its CEL rules (transition
    /// rules against `old`, the stored object, on updates), as the server does on every
    /// create and update. The error lists each violation as `path: message`.
    pub fn admit(&self, object: &mut Value, old: Option<&Value>) -> Result<(), String> {
        let Some(schema) = &self.schema else {
            return Ok(());
        };
        *object = kube_cel::apply_defaults(schema, object);
        if let Some(validator) = &self.validator {
            let errors: Vec<String> = validator
                .iter_errors(object)
                .map(|e| format!("{}: {e}", e.instance_path()))
                .collect();
            if !errors.is_empty() {
                return Err(errors.join("; "));
            }
        }
        kube_cel::validate(schema, object, old).map_err(|errors| {
            errors
                .as_slice()
                .iter()
                .map(|e| format!("{}: {}", e.field_path, e.message))
                .collect::<Vec<_>>()
                .join("; ")
        })
    }
}

/// OpenAPI v3 structural schema → JSON Schema: `nullable` becomes a `null` type, and the
/// Kubernetes extensions are dropped (`x-kubernetes-int-or-string` accepts both).
fn structural_to_json_schema(schema: &Value) -> Value {
    match schema {
        Value::Object(map) => {
            let mut out = serde_json::Map::new();
            for (k, v) in map {
                match k.as_str() {
                    "properties" | "patternProperties" | "definitions" => {
                        let props = v
                            .as_object()
                            .map(|p| {
                                p.iter()
                                    .map(|(name, s)| (name.clone(), structural_to_json_schema(s)))
                                    .collect()
                            })
                            .unwrap_or_default();
                        out.insert(k.clone(), Value::Object(props));
                    }
                    "items" | "additionalProperties" | "not" => {
                        out.insert(k.clone(), structural_to_json_schema(v));
                    }
                    "allOf" | "anyOf" | "oneOf" => {
                        let list = v
                            .as_array()
                            .map(|a| a.iter().map(structural_to_json_schema).collect())
                            .unwrap_or_default();
                        out.insert(k.clone(), Value::Array(list));
                    }
                    "nullable" | "format" | "default" | "description" | "example" => {}
                    k if k.starts_with("x-kubernetes-") => {}
                    _ => {
                        out.insert(k.clone(), v.clone());
                    }
                }
            }
            if map.get("x-kubernetes-int-or-string") == Some(&json!(true)) {
                out.remove("type");
                out.insert("type".into(), json!(["integer", "string"]));
            }
            if map.get("nullable") == Some(&json!(true))
                && let Some(t) = out.get("type").cloned()
            {
                let mut types = match t {
                    Value::Array(a) => a,
                    other => vec![other],
                };
                types.push(json!("null"));
                out.insert("type".into(), Value::Array(types));
                if let Some(Value::Array(values)) = out.get_mut("enum") {
                    values.push(Value::Null);
                }
            }
            Value::Object(out)
        }
        other => other.clone(),
    }
}

/// The built-in types the operator and the data plane use.
pub fn builtin_types() -> Vec<ResourceType> {
    vec![
        ResourceType::new("", "v1", "secrets", "Secret", false),
        ResourceType::new("", "v1", "configmaps", "ConfigMap", false),
        ResourceType::new("", "v1", "pods", "Pod", true),
        ResourceType::new("", "v1", "events", "Event", false),
        ResourceType::new(
            "",
            "v1",
            "persistentvolumeclaims",
            "PersistentVolumeClaim",
            true,
        ),
        ResourceType::new("batch", "v1", "jobs", "Job", true),
        ResourceType::new("batch", "v1", "cronjobs", "CronJob", true),
        ResourceType::new("coordination.k8s.io", "v1", "leases", "Lease", false),
        ResourceType::new("events.k8s.io", "v1", "events", "Event", false),
    ]
}

/// One recorded request.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// The Kubernetes verb: get, list, watch, create, update, patch, delete,
    /// deletecollection (or `discovery`).
    pub verb: String,
    pub method: String,
    pub path: String,
    pub query: String,
    pub user_agent: String,
    /// `""` for the core group.
    pub group: String,
    /// `plural` or `plural/subresource`.
    pub resource: String,
    /// `""` for cluster-wide requests.
    pub namespace: String,
    pub name: String,
    /// When it arrived, relative to the server's start.
    pub at: Duration,
    /// The HTTP status answered (200 for watches that started).
    pub status: u16,
}

impl Recorded {
    /// Whether the request changed (or tried to change) state.
    pub fn is_write(&self) -> bool {
        matches!(
            self.verb.as_str(),
            "create" | "update" | "patch" | "delete" | "deletecollection"
        )
    }
}

struct State {
    types: Vec<ResourceType>,
    store: Mutex<Store>,
    requests: Mutex<Vec<Recorded>>,
    started: Instant,
    bookmark_every: Duration,
    /// Bumped to close every open watch stream.
    breaker: watch::Sender<u64>,
}

/// Settings of a [`KubeApi`].
pub struct Options {
    /// How many change events are kept for resuming watches.
    pub history: usize,
    /// How often open watches with `allowWatchBookmarks` get a BOOKMARK.
    pub bookmark_every: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            history: 10_000,
            bookmark_every: Duration::from_secs(5),
        }
    }
}

/// The running server; stops when dropped.
pub struct KubeApi {
    pub addr: SocketAddr,
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for KubeApi {
    fn drop(&mut self) {
        self.task.abort();
        let _ = self.state.breaker.send(u64::MAX);
    }
}

impl KubeApi {
    /// Starts a server on a free loopback port serving the built-in types and `crds`
    /// (CustomResourceDefinitions as JSON).
    pub async fn start(crds: &[Value], options: Options) -> Result<Self, String> {
        let mut types = builtin_types();
        for crd in crds {
            types.push(ResourceType::from_crd(crd)?);
        }
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
            .await
            .map_err(|e| e.to_string())?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        let state = Arc::new(State {
            types,
            store: Mutex::new(Store::new(options.history)),
            requests: Mutex::new(Vec::new()),
            started: Instant::now(),
            bookmark_every: options.bookmark_every,
            breaker: watch::channel(0).0,
        });
        let serving = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let state = serving.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let state = state.clone();
                        async move { Ok::<_, Infallible>(handle(&state, req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok(Self { addr, state, task })
    }

    /// `http://127.0.0.1:{port}`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Writes a kubeconfig for this server (default namespace `namespace`) into `dir`.
    pub fn write_kubeconfig(
        &self,
        dir: &std::path::Path,
        namespace: &str,
    ) -> std::io::Result<std::path::PathBuf> {
        let path = dir.join("kubeconfig");
        std::fs::write(
            &path,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: stand-in\n  cluster:\n    server: {}\n\
                 users:\n- name: tester\n  user:\n    token: stand-in\ncontexts:\n- name: stand-in\n  context:\n    \
                 cluster: stand-in\n    user: tester\n    namespace: {namespace}\ncurrent-context: stand-in\n",
                self.url()
            ),
        )?;
        Ok(path)
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<Recorded> {
        self.state
            .requests
            .lock()
            .map(|r| r.clone())
            .unwrap_or_default()
    }

    /// Forgets the recorded requests.
    pub fn clear_requests(&self) {
        if let Ok(mut r) = self.state.requests.lock() {
            r.clear();
        }
    }

    /// Closes every open watch stream (the clients see the stream end and re-watch).
    pub fn break_watches(&self) {
        self.state.breaker.send_modify(|g| *g += 1);
    }

    /// Forgets the event history: resuming a watch from any resourceVersion handed out
    /// so far answers 410 Gone, and the client must relist.
    pub fn compact(&self) {
        if let Ok(mut store) = self.state.store.lock() {
            store.compact_all();
        }
    }

    /// The current global resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.state.store.lock().map(|s| s.rv).unwrap_or_default()
    }

    /// A stored object, by `group/plural`, namespace and name.
    pub fn object(&self, type_key: &str, namespace: &str, name: &str) -> Option<Value> {
        let store = self.state.store.lock().ok()?;
        store
            .objects
            .get(&(type_key.into(), namespace.into(), name.into()))
            .cloned()
    }
}

fn status_body(code: u16, reason: &str, message: impl Into<String>) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message.into(), "reason": reason, "code": code})
}

fn respond(code: u16, body: &Value) -> Response<Body> {
    let mut response = Response::new(
        Full::new(Bytes::from(body.to_string()))
            .map_err(|e| match e {})
            .boxed(),
    );
    *response.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::OK);
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    response
}

struct ApiError(u16, &'static str, String);

impl ApiError {
    fn not_found(what: &str) -> Self {
        Self(404, "NotFound", format!("{what} not found"))
    }
    fn bad(message: impl Into<String>) -> Self {
        Self(400, "BadRequest", message.into())
    }
}

/// A parsed resource path.
struct Target<'a> {
    ty: &'a ResourceType,
    namespace: String,
    name: Option<String>,
    subresource: Option<String>,
}

fn query_map(query: &str) -> BTreeMap<String, String> {
    url::form_urlencoded::parse(query.as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

async fn handle(state: &Arc<State>, req: Request<hyper::body::Incoming>) -> Response<Body> {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or_default().to_string();
    let user_agent = req
        .headers()
        .get(hyper::header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let content_type = req
        .headers()
        .get(hyper::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let params = query_map(&query);
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return respond(400, &status_body(400, "BadRequest", e.to_string())),
    };
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let mut record = Recorded {
        verb: String::new(),
        method: method.to_string(),
        path: path.clone(),
        query: query.clone(),
        user_agent,
        group: String::new(),
        resource: String::new(),
        namespace: String::new(),
        name: String::new(),
        at: state.started.elapsed(),
        status: 200,
    };
    let response = match discovery(state, &segments) {
        Some(body) => {
            record.verb = "discovery".into();
            respond(200, &body)
        }
        None => match parse_target(state, &segments) {
            Err(e) => respond(e.0, &status_body(e.0, e.1, e.2)),
            Ok(target) => {
                record.group = target.ty.group.clone();
                record.resource = match &target.subresource {
                    Some(s) => format!("{}/{s}", target.ty.plural),
                    None => target.ty.plural.clone(),
                };
                record.namespace = target.namespace.clone();
                record.name = target.name.clone().unwrap_or_default();
                let watching = params.get("watch").is_some_and(|w| w == "true" || w == "1");
                record.verb = match (&method, target.name.is_some()) {
                    (&Method::GET, _) if watching => "watch",
                    (&Method::GET, true) => "get",
                    (&Method::GET, false) => "list",
                    (&Method::POST, _) => "create",
                    (&Method::PUT, _) => "update",
                    (&Method::PATCH, _) => "patch",
                    (&Method::DELETE, true) => "delete",
                    (&Method::DELETE, false) => "deletecollection",
                    _ => "unknown",
                }
                .into();
                let result = match record.verb.as_str() {
                    "watch" => start_watch(state, &target, &params),
                    "get" => get(state, &target),
                    "list" => list(state, &target, &params).map(|v| respond(200, &v)),
                    "create" => create(state, &target, &body).map(|v| respond(201, &v)),
                    "update" => update(state, &target, &body),
                    "patch" => patch(state, &target, &content_type, &body),
                    "delete" => delete(state, &target, &body),
                    "deletecollection" => delete_collection(state, &target, &params),
                    _ => Err(ApiError(
                        405,
                        "MethodNotAllowed",
                        "method not allowed".into(),
                    )),
                };
                match result {
                    Ok(r) => r,
                    Err(e) => respond(e.0, &status_body(e.0, e.1, e.2)),
                }
            }
        },
    };
    record.status = response.status().as_u16();
    if let Ok(mut r) = state.requests.lock() {
        r.push(record);
    }
    response
}

fn discovery(state: &State, segments: &[&str]) -> Option<Value> {
    let resources = |group: &str, version: &str| {
        let list: Vec<Value> = state
            .types
            .iter()
            .filter(|t| t.group == group && t.version == version)
            .flat_map(|t| {
                let verbs = json!(["create", "delete", "deletecollection", "get", "list", "patch",
                    "update", "watch"]);
                let mut out = vec![json!({"name": t.plural, "singularName": t.kind.to_lowercase(),
                    "namespaced": t.namespaced, "kind": t.kind, "verbs": verbs})];
                if t.status {
                    out.push(json!({"name": format!("{}/status", t.plural), "singularName": "",
                        "namespaced": t.namespaced, "kind": t.kind, "verbs": ["get", "patch", "update"]}));
                }
                out
            })
            .collect();
        let gv = if group.is_empty() {
            version.to_string()
        } else {
            format!("{group}/{version}")
        };
        json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": list})
    };
    match segments {
        ["api"] => Some(json!({"kind": "APIVersions", "versions": ["v1"],
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}]})),
        ["api", "v1"] => Some(resources("", "v1")),
        ["apis"] => {
            let mut groups: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
            for t in state.types.iter().filter(|t| !t.group.is_empty()) {
                let versions = groups.entry(&t.group).or_default();
                if !versions.contains(&t.version.as_str()) {
                    versions.push(&t.version);
                }
            }
            let groups: Vec<Value> = groups
                .into_iter()
                .map(|(g, vs)| {
                    let versions: Vec<Value> = vs
                        .iter()
                        .map(|v| json!({"groupVersion": format!("{g}/{v}"), "version": v}))
                        .collect();
                    json!({"name": g, "versions": versions, "preferredVersion": versions[0]})
                })
                .collect();
            Some(json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}))
        }
        ["apis", group, version] => Some(resources(group, version)),
        _ => None,
    }
}

fn parse_target<'a>(state: &'a State, segments: &[&str]) -> Result<Target<'a>, ApiError> {
    let (group, version, rest) = match segments {
        ["api", version, rest @ ..] => ("", *version, rest),
        ["apis", group, version, rest @ ..] => (*group, *version, rest),
        _ => return Err(ApiError::not_found("path")),
    };
    let (namespace, rest) = match rest {
        ["namespaces", ns, rest @ ..] if !rest.is_empty() => (ns.to_string(), rest),
        _ => (String::new(), rest),
    };
    let (plural, name, subresource) = match rest {
        [plural] => (*plural, None, None),
        [plural, name] => (*plural, Some(name.to_string()), None),
        [plural, name, sub] => (*plural, Some(name.to_string()), Some(sub.to_string())),
        _ => return Err(ApiError::not_found("path")),
    };
    let ty = state
        .types
        .iter()
        .find(|t| t.group == group && t.version == version && t.plural == plural)
        .ok_or_else(|| {
            ApiError::not_found(&format!(
                "the server could not find the requested resource {group}/{version}/{plural}"
            ))
        })?;
    if let Some(sub) = &subresource
        && !(sub == "status" && ty.status)
    {
        return Err(ApiError::not_found(&format!("subresource {sub}")));
    }
    if ty.namespaced && name.is_some() && namespace.is_empty() {
        return Err(ApiError::not_found("namespace"));
    }
    Ok(Target {
        ty,
        namespace,
        name,
        subresource,
    })
}

fn key_of(target: &Target) -> Key {
    (
        target.ty.key(),
        target.namespace.clone(),
        target.name.clone().unwrap_or_default(),
    )
}

fn lock(state: &State) -> Result<std::sync::MutexGuard<'_, Store>, ApiError> {
    state
        .store
        .lock()
        .map_err(|_| ApiError(500, "InternalError", "store poisoned".into()))
}

fn get(state: &State, target: &Target) -> Result<Response<Body>, ApiError> {
    let store = lock(state)?;
    store
        .objects
        .get(&key_of(target))
        .map(|o| respond(200, o))
        .ok_or_else(|| not_found(target))
}

fn not_found(target: &Target) -> ApiError {
    ApiError(
        404,
        "NotFound",
        format!(
            "{}.{} \"{}\" not found",
            target.ty.plural,
            target.ty.group,
            target.name.as_deref().unwrap_or_default()
        ),
    )
}

fn selectors(
    params: &BTreeMap<String, String>,
) -> Result<(LabelSelector, FieldSelector), ApiError> {
    let labels = LabelSelector::parse(params.get("labelSelector").map_or("", String::as_str))
        .map_err(ApiError::bad)?;
    let fields = FieldSelector::parse(params.get("fieldSelector").map_or("", String::as_str))
        .map_err(ApiError::bad)?;
    Ok((labels, fields))
}

fn in_scope(target: &Target, type_key: &str, namespace: &str) -> bool {
    type_key == target.ty.key() && (target.namespace.is_empty() || target.namespace == namespace)
}

fn list(
    state: &State,
    target: &Target,
    params: &BTreeMap<String, String>,
) -> Result<Value, ApiError> {
    let (labels, fields) = selectors(params)?;
    let store = lock(state)?;
    let items: Vec<Value> = store
        .objects
        .iter()
        .filter(|((t, ns, _), o)| in_scope(target, t, ns) && labels.matches(o) && fields.matches(o))
        .map(|(_, o)| o.clone())
        .collect();
    Ok(
        json!({"kind": format!("{}List", target.ty.kind), "apiVersion": target.ty.api_version(),
        "metadata": {"resourceVersion": store.rv.to_string()}, "items": items}),
    )
}

fn parse_body(body: &[u8]) -> Result<Value, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::bad(format!("body: {e}")))
}

/// Everything but metadata and status: a change bumps `metadata.generation`.
fn spec_part(object: &Value) -> Value {
    let mut v = object.clone();
    if let Some(m) = v.as_object_mut() {
        m.remove("metadata");
        m.remove("status");
    }
    v
}

fn invalid(target: &Target, message: String) -> ApiError {
    ApiError(
        422,
        "Invalid",
        format!(
            "{}.{} \"{}\" is invalid: {message}",
            target.ty.plural,
            target.ty.group,
            target.name.as_deref().unwrap_or_default()
        ),
    )
}

fn create(state: &State, target: &Target, body: &[u8]) -> Result<Value, ApiError> {
    let object = parse_body(body)?;
    let mut store = lock(state)?;
    create_locked(&mut store, target, object)
}

/// The API server refuses a body whose apiVersion or kind differs from the request's.
fn check_type(target: &Target, object: &Value) -> Result<(), ApiError> {
    if !object.is_object() {
        return Err(ApiError::bad("not an object"));
    }
    let expected = target.ty.api_version();
    if let Some(v) = object.get("apiVersion").and_then(Value::as_str)
        && v != expected
    {
        return Err(ApiError::bad(format!(
            "the API version in the data ({v}) does not match the expected API version ({expected})"
        )));
    }
    if let Some(k) = object.get("kind").and_then(Value::as_str)
        && k != target.ty.kind
    {
        return Err(ApiError::bad(format!(
            "the kind in the data ({k}) does not match the expected kind ({})",
            target.ty.kind
        )));
    }
    Ok(())
}

fn create_locked(store: &mut Store, target: &Target, mut object: Value) -> Result<Value, ApiError> {
    check_type(target, &object)?;
    let mut name = object
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .map(str::to_string)
        .or_else(|| target.name.clone())
        .unwrap_or_default();
    if name.is_empty()
        && let Some(prefix) = object
            .pointer("/metadata/generateName")
            .and_then(Value::as_str)
    {
        name = format!("{prefix}{}", crate::random_token(5));
    }
    if name.is_empty() {
        return Err(ApiError(
            422,
            "Invalid",
            "metadata.name: Required value".into(),
        ));
    }
    let meta = object["metadata"].as_object().cloned().unwrap_or_default();
    let mut metadata = meta.clone();
    metadata.insert("name".into(), json!(name));
    if target.ty.namespaced {
        let ns = meta
            .get("namespace")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if !ns.is_empty() && !target.namespace.is_empty() && ns != target.namespace {
            return Err(ApiError::bad(
                "the namespace of the object does not match the request",
            ));
        }
        let ns = if target.namespace.is_empty() {
            ns
        } else {
            &target.namespace
        };
        if ns.is_empty() {
            return Err(ApiError::bad("namespace required"));
        }
        metadata.insert("namespace".into(), json!(ns));
    } else {
        metadata.remove("namespace");
    }
    for k in [
        "resourceVersion",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "managedFields",
    ] {
        metadata.remove(k);
    }
    metadata.insert("uid".into(), json!(uuid::Uuid::new_v4().to_string()));
    metadata.insert("creationTimestamp".into(), json!(now()));
    if object.get("spec").is_some() {
        metadata.insert("generation".into(), json!(1));
    } else {
        metadata.remove("generation");
    }
    object["metadata"] = Value::Object(metadata);
    object["apiVersion"] = json!(target.ty.api_version());
    object["kind"] = json!(target.ty.kind);
    if target.ty.status
        && let Some(m) = object.as_object_mut()
    {
        m.remove("status");
    }
    let key = (target.ty.key(), ns_of(&object), name_of(&object));
    if store.objects.contains_key(&key) {
        return Err(ApiError(
            409,
            "AlreadyExists",
            format!(
                "{}.{} \"{}\" already exists",
                target.ty.plural, target.ty.group, key.2
            ),
        ));
    }
    let named = Target {
        ty: target.ty,
        namespace: key.1.clone(),
        name: Some(key.2.clone()),
        subresource: None,
    };
    target
        .ty
        .admit(&mut object, None)
        .map_err(|e| invalid(&named, e))?;
    Ok(store.put(&target.ty.key(), object, None))
}

/// Stores `new` in place of the current object as an update of the main resource or of
/// its status subresource would.
fn write_locked(
    store: &mut Store,
    target: &Target,
    mut new: Value,
    check_rv: bool,
) -> Result<Value, ApiError> {
    let key = key_of(target);
    let current = store
        .objects
        .get(&key)
        .cloned()
        .ok_or_else(|| not_found(target))?;
    if check_rv
        && let Some(rv) = new
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str)
        && !rv.is_empty()
        && current
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str)
            != Some(rv)
    {
        return Err(ApiError(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {}.{} \"{}\": the object has been modified; please apply your changes to the latest version and try again",
                target.ty.plural, target.ty.group, key.2
            ),
        ));
    }
    let status_only = target.subresource.as_deref() == Some("status");
    if status_only {
        let status = new.get("status").cloned();
        new = current.clone();
        match status {
            Some(s) => new["status"] = s,
            None => {
                if let Some(m) = new.as_object_mut() {
                    m.remove("status");
                }
            }
        }
    } else {
        // Immutable and server-owned metadata.
        let mut metadata = new["metadata"].as_object().cloned().unwrap_or_default();
        for k in [
            "uid",
            "creationTimestamp",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "generation",
            "name",
            "namespace",
        ] {
            match current["metadata"].get(k) {
                Some(v) => metadata.insert(k.into(), v.clone()),
                None => metadata.remove(k),
            };
        }
        new["metadata"] = Value::Object(metadata);
        if target.ty.status {
            match current.get("status") {
                Some(s) => new["status"] = s.clone(),
                None => {
                    if let Some(m) = new.as_object_mut() {
                        m.remove("status");
                    }
                }
            }
        }
        if spec_part(&new) != spec_part(&current) {
            let generation = current
                .pointer("/metadata/generation")
                .and_then(Value::as_i64)
                .unwrap_or(0);
            new["metadata"]["generation"] = json!(generation + 1);
        }
    }
    new["apiVersion"] = json!(target.ty.api_version());
    new["kind"] = json!(target.ty.kind);
    new["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"].clone();
    if current.pointer("/metadata/deletionTimestamp").is_some() {
        let adds_finalizer = new
            .pointer("/metadata/finalizers")
            .and_then(Value::as_array)
            .is_some_and(|f| {
                let old = current
                    .pointer("/metadata/finalizers")
                    .and_then(Value::as_array);
                f.iter().any(|x| !old.is_some_and(|o| o.contains(x)))
            });
        if adds_finalizer {
            return Err(invalid(target, "metadata.finalizers: no new finalizers can be added if the object is being deleted".into()));
        }
    }
    target
        .ty
        .admit(&mut new, Some(&current))
        .map_err(|e| invalid(target, e))?;
    if new == current {
        return Ok(current);
    }
    let gone = current.pointer("/metadata/deletionTimestamp").is_some()
        && new
            .pointer("/metadata/finalizers")
            .and_then(Value::as_array)
            .is_none_or(|f| f.is_empty());
    let stored = store.put(&target.ty.key(), new, Some(current));
    if gone {
        store.remove(&key);
    }
    Ok(stored)
}

fn update(state: &State, target: &Target, body: &[u8]) -> Result<Response<Body>, ApiError> {
    let new = parse_body(body)?;
    check_type(target, &new)?;
    let mut store = lock(state)?;
    write_locked(&mut store, target, new, true).map(|v| respond(200, &v))
}

fn patch(
    state: &State,
    target: &Target,
    content_type: &str,
    body: &[u8],
) -> Result<Response<Body>, ApiError> {
    let mut store = lock(state)?;
    let current = store.objects.get(&key_of(target)).cloned();
    let media = content_type.split(';').next().unwrap_or_default().trim();
    let patched = match media {
        "application/apply-patch+yaml" => {
            let applied = parse_body(body)?;
            check_type(target, &applied)?;
            match current {
                // Server-side apply of a new object creates it.
                None if target.subresource.is_none() => {
                    return create_locked(&mut store, target, applied).map(|v| respond(201, &v));
                }
                None => return Err(not_found(target)),
                Some(mut current) => {
                    let mut applied = applied;
                    if let Some(m) = applied.get_mut("metadata").and_then(Value::as_object_mut) {
                        m.remove("resourceVersion");
                    }
                    json_patch::merge(&mut current, &applied);
                    current
                }
            }
        }
        "application/merge-patch+json" | "application/strategic-merge-patch+json" => {
            let mut current = current.ok_or_else(|| not_found(target))?;
            json_patch::merge(&mut current, &parse_body(body)?);
            current
        }
        "application/json-patch+json" => {
            let mut current = current.ok_or_else(|| not_found(target))?;
            let ops: json_patch::Patch = serde_json::from_slice(body)
                .map_err(|e| ApiError::bad(format!("JSON patch: {e}")))?;
            json_patch::patch(&mut current, &ops)
                .map_err(|e| ApiError(422, "Invalid", format!("JSON patch: {e}")))?;
            current
        }
        other => {
            return Err(ApiError(
                415,
                "UnsupportedMediaType",
                format!("unsupported patch type {other}"),
            ));
        }
    };
    write_locked(&mut store, target, patched, true).map(|v| respond(200, &v))
}

fn delete(state: &State, target: &Target, body: &[u8]) -> Result<Response<Body>, ApiError> {
    let options: Value = if body.is_empty() {
        json!({})
    } else {
        parse_body(body)?
    };
    let mut store = lock(state)?;
    let key = key_of(target);
    let current = store
        .objects
        .get(&key)
        .cloned()
        .ok_or_else(|| not_found(target))?;
    if let Some(uid) = options
        .pointer("/preconditions/uid")
        .and_then(Value::as_str)
        && current.pointer("/metadata/uid").and_then(Value::as_str) != Some(uid)
    {
        return Err(ApiError(
            409,
            "Conflict",
            "precondition failed: UID mismatch".into(),
        ));
    }
    if options["propagationPolicy"] == json!("Orphan") {
        orphan_dependents(&mut store, &current);
    }
    let result = store.delete(&key).ok_or_else(|| not_found(target))?;
    if store.objects.contains_key(&key) {
        // Still there: finalizers hold it.
        Ok(respond(200, &result))
    } else {
        Ok(respond(
            200,
            &json!({"kind": "Status", "apiVersion": "v1", "metadata": {},
            "status": "Success", "details": {"name": key.2, "kind": target.ty.plural}}),
        ))
    }
}

fn orphan_dependents(store: &mut Store, owner: &Value) {
    let uid = owner.pointer("/metadata/uid").cloned().unwrap_or_default();
    let dependents: Vec<(Key, Value)> = store
        .objects
        .iter()
        .filter(|(_, o)| {
            o.pointer("/metadata/ownerReferences")
                .and_then(Value::as_array)
                .is_some_and(|r| r.iter().any(|r| r["uid"] == uid))
        })
        .map(|(k, o)| (k.clone(), o.clone()))
        .collect();
    for (key, object) in dependents {
        let mut freed = object.clone();
        if let Some(refs) = freed["metadata"]["ownerReferences"].as_array_mut() {
            refs.retain(|r| r["uid"] != uid);
        }
        store.put(&key.0, freed, Some(object));
    }
}

fn delete_collection(
    state: &State,
    target: &Target,
    params: &BTreeMap<String, String>,
) -> Result<Response<Body>, ApiError> {
    let (labels, fields) = selectors(params)?;
    let mut store = lock(state)?;
    let keys: Vec<Key> = store
        .objects
        .iter()
        .filter(|((t, ns, _), o)| in_scope(target, t, ns) && labels.matches(o) && fields.matches(o))
        .map(|(k, _)| k.clone())
        .collect();
    let mut items = Vec::new();
    for key in keys {
        if let Some(o) = store.delete(&key) {
            items.push(o);
        }
    }
    Ok(respond(
        200,
        &json!({"kind": format!("{}List", target.ty.kind),
        "apiVersion": target.ty.api_version(), "metadata": {}, "items": items}),
    ))
}

/// What one watch sends for a change, given its selectors (None: nothing).
fn translate(change: &Change, labels: &LabelSelector, fields: &FieldSelector) -> Option<Value> {
    let selected = |o: &Value| labels.matches(o) && fields.matches(o);
    let now_in = selected(&change.object);
    let kind = match (change.kind, change.old.as_ref().map(selected)) {
        ("MODIFIED", Some(false)) if now_in => "ADDED",
        ("MODIFIED", Some(true)) if !now_in => "DELETED",
        (k, _) if now_in => k,
        _ => return None,
    };
    Some(json!({"type": kind, "object": change.object}))
}

fn start_watch(
    state: &Arc<State>,
    target: &Target,
    params: &BTreeMap<String, String>,
) -> Result<Response<Body>, ApiError> {
    let (labels, fields) = selectors(params)?;
    let bookmarks = params
        .get("allowWatchBookmarks")
        .is_some_and(|v| v == "true");
    let initial_events = params.get("sendInitialEvents").is_some_and(|v| v == "true");
    let timeout = params
        .get("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .map(Duration::from_secs);
    let requested = params.get("resourceVersion").cloned().unwrap_or_default();
    let (type_key, namespace) = (target.ty.key(), target.namespace.clone());
    let bookmark_object = |rv: u64, initial_end: bool| {
        let mut meta = json!({"resourceVersion": rv.to_string()});
        if initial_end {
            meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
        }
        json!({"type": "BOOKMARK", "object": {"kind": target.ty.kind,
            "apiVersion": target.ty.api_version(), "metadata": meta}})
    };
    // Under the store lock: the replay and the subscription see the same history.
    let (mut first, mut rx, start_rv) = {
        let store = lock(state)?;
        let mut first: Vec<Value> = Vec::new();
        let start_rv;
        if requested.is_empty() || requested == "0" || initial_events {
            for ((t, ns, _), o) in &store.objects {
                if t == &type_key
                    && (namespace.is_empty() || ns == &namespace)
                    && labels.matches(o)
                    && fields.matches(o)
                {
                    first.push(json!({"type": "ADDED", "object": o}));
                }
            }
            start_rv = store.rv;
            if initial_events {
                first.push(bookmark_object(store.rv, true));
            }
        } else {
            let from: u64 = requested
                .parse()
                .map_err(|_| ApiError::bad(format!("invalid resourceVersion {requested}")))?;
            if from < store.compacted {
                let gone = status_body(
                    410,
                    "Expired",
                    format!("too old resource version: {from} ({})", store.compacted),
                );
                first.push(json!({"type": "ERROR", "object": gone}));
                let lines: String = first.iter().map(|v| format!("{v}\n")).collect();
                return Ok(respond_stream_once(lines));
            }
            for change in store.history.iter().filter(|c| c.rv > from) {
                if change.type_key == type_key
                    && (namespace.is_empty() || change.namespace == namespace)
                    && let Some(event) = translate(change, &labels, &fields)
                {
                    first.push(event);
                }
            }
            start_rv = store.rv.max(from);
        }
        (first, store.tx.subscribe(), start_rv)
    };
    let (tx, out) = mpsc::channel::<Result<Frame<Bytes>, Infallible>>(256);
    let mut breaker = state.breaker.subscribe();
    let bookmark_every = state.bookmark_every;
    let (kind, api_version) = (target.ty.kind.clone(), target.ty.api_version());
    tokio::spawn(async move {
        let send = |v: Value| {
            let tx = tx.clone();
            async move {
                tx.send(Ok(Frame::data(Bytes::from(format!("{v}\n")))))
                    .await
                    .is_ok()
            }
        };
        for event in first.drain(..) {
            if !send(event).await {
                return;
            }
        }
        let deadline = tokio::time::sleep(timeout.unwrap_or(Duration::from_secs(3600)));
        tokio::pin!(deadline);
        let mut ticker = tokio::time::interval(bookmark_every);
        ticker.tick().await;
        let mut seen = start_rv;
        breaker.borrow_and_update();
        loop {
            tokio::select! {
                _ = &mut deadline => return,
                _ = breaker.changed() => return,
                _ = ticker.tick(), if bookmarks => {
                    let bm = json!({"type": "BOOKMARK", "object": {"kind": kind,
                        "apiVersion": api_version, "metadata": {"resourceVersion": seen.to_string()}}});
                    if !send(bm).await {
                        return;
                    }
                }
                change = rx.recv() => match change {
                    Ok(change) => {
                        if change.rv <= seen {
                            continue;
                        }
                        seen = change.rv;
                        if change.type_key == type_key
                            && (namespace.is_empty() || change.namespace == namespace)
                            && let Some(event) = translate(&change, &labels, &fields)
                            && !send(event).await
                        {
                            return;
                        }
                    }
                    // Lagged or closed: end the stream; the client resumes from its last
                    // resourceVersion, which the history still holds.
                    Err(_) => return,
                },
            }
        }
    });
    let stream = futures_util::stream::unfold(out, |mut out| async move {
        out.recv().await.map(|item| (item, out))
    });
    let mut response = Response::new(BodyExt::boxed(StreamBody::new(stream)));
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    Ok(response)
}

fn respond_stream_once(lines: String) -> Response<Body> {
    let mut response = Response::new(
        Full::new(Bytes::from(lines))
            .map_err(|e| match e {})
            .boxed(),
    );
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    response
}
