//! The in-cluster tenant source: the connection Secrets the operator labels, listed
//! through the Kubernetes API in the configured namespaces.
//!
//! **Decision: list-polling, not a watch.** Every `tenant_poll_ms` the source lists the
//! Secrets matching `label_selector` in each namespace (`resourceVersion=0`, so the API
//! server answers from its watch cache instead of etcd), and [`TenantDirectory::replace`]
//! diffs the result against the current snapshot: added tenants appear, deleted ones
//! disappear (404), a changed Secret (rotated password) retires the tenant's connections.
//! Reasons: the directory already works on complete snapshots (the file source), a full
//! list is the only way to notice deletions missed while disconnected anyway (a watcher
//! would need this relist as its safety net), and the number of Secrets is one per school
//! — a selector-filtered list per namespace every two seconds is small next to what the
//! operator itself does. A watch would cut the delay from `tenant_poll_ms` to near zero;
//! `kube_runtime::watcher` could feed the same `replace` if that delay ever matters.
//! A failed list of any namespace fails the whole poll, which keeps the last known set:
//! an API outage must not drop every tenant.
//!
//! `[kubernetes] all_namespaces = true` lists every namespace instead, in one cluster-wide
//! list: the match for an operator that watches every namespace.
//!
//! RBAC: `list` on `secrets` (core group) in each configured namespace, or cluster-wide
//! when the list is empty — nothing else (`edumind_crds::rbac::DATAPLANE_RULES`).
//!
//! [`TenantDirectory::replace`]: crate::tenants::TenantDirectory::replace

use k8s_openapi::api::core::v1::Secret as KubeSecret;
use kube::api::{Api, ListParams};

use edumind_crds::connection::ParseError;

use crate::tenants::{SourceError, Tenant, TenantSource};

/// The default label selector: every Secret the operator manages
/// (`{LABEL_MANAGED_BY}={MANAGED_BY}`, checked by a unit test).
pub const DEFAULT_SELECTOR: &str = "app.kubernetes.io/managed-by=edumind-operator";

/// Lists the operator's Secrets in `namespaces` (empty: in every namespace; the settings
/// only allow that with `kubernetes.all_namespaces = true`).
#[derive(Clone)]
pub struct KubeTenantSource {
    pub client: kube::Client,
    pub namespaces: Vec<String>,
    pub label_selector: String,
}

impl TenantSource for KubeTenantSource {
    async fn snapshot(&self) -> Result<Vec<Tenant>, SourceError> {
        let params = ListParams::default()
            .labels(&self.label_selector)
            .match_any();
        let mut out = Vec::new();
        if self.namespaces.is_empty() {
            let api: Api<KubeSecret> = Api::all(self.client.clone());
            let list = api
                .list(&params)
                .await
                .map_err(|e| SourceError::Kube("(all namespaces)".into(), e.to_string()))?;
            for s in &list.items {
                let ns = s.metadata.namespace.as_deref().unwrap_or_default();
                out.extend(tenants_from_secrets(ns, std::slice::from_ref(s)));
            }
            return Ok(out);
        }
        for ns in &self.namespaces {
            let api: Api<KubeSecret> = Api::namespaced(self.client.clone(), ns);
            let list = api
                .list(&params)
                .await
                .map_err(|e| SourceError::Kube(ns.clone(), e.to_string()))?;
            out.extend(tenants_from_secrets(ns, &list.items));
        }
        Ok(out)
    }
}

/// The tenants among `secrets`; Secrets that are not ours are skipped silently, broken
/// ones are logged by name with a reason that never includes a value.
pub fn tenants_from_secrets(namespace: &str, secrets: &[KubeSecret]) -> Vec<Tenant> {
    let mut out = Vec::new();
    for s in secrets {
        match tenant_from_secret(s) {
            Ok(Some(t)) => out.push(t),
            Ok(None) => {}
            Err(reason) => tracing::warn!(
                namespace,
                secret = s.metadata.name.as_deref().unwrap_or(""),
                %reason,
                "skipping tenant Secret"
            ),
        }
    }
    out
}

/// One Secret from the API → a tenant. `Ok(None)`: not managed by the operator, or being
/// deleted.
pub fn tenant_from_secret(s: &KubeSecret) -> Result<Option<Tenant>, ParseError> {
    if s.metadata.deletion_timestamp.is_some() {
        return Ok(None);
    }
    crate::tenants::tenant_from_secret(s)
}

/// A Secret in the operator's shape for `tenant` (tests and local setups), built by the
/// contract's own builder.
pub fn kube_secret(name: &str, namespace: &str, tenant: &Tenant) -> KubeSecret {
    tenant
        .to_connection_secret()
        .to_secret(name, namespace, None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::Secret;
    use crate::tenants::{TenantDirectory, TenantId};
    use edumind_crds::connection::{LABEL_MANAGED_BY, MANAGED_BY};
    use uuid::Uuid;

    fn tenant(id: TenantId, password: &str) -> Tenant {
        Tenant {
            id,
            code: Some("c1".into()),
            host: "db".into(),
            port: 5432,
            dbname: "edumind_school_c1".into(),
            username: "school_c1".into(),
            password: Secret::new(password),
        }
    }

    #[test]
    fn default_selector_is_the_contracts_managed_by_label() {
        assert_eq!(DEFAULT_SELECTOR, format!("{LABEL_MANAGED_BY}={MANAGED_BY}"));
    }

    #[test]
    fn secret_round_trips_school_and_self_service() {
        let school = tenant(TenantId::School(Uuid::new_v4()), "pw");
        let s = kube_secret("s", "ns", &school);
        assert_eq!(tenant_from_secret(&s).unwrap(), Some(school));
        let mut ss = tenant(TenantId::SelfService, "pw");
        ss.code = None;
        let s = kube_secret("edumind-selfservice", "ns", &ss);
        assert_eq!(tenant_from_secret(&s).unwrap(), Some(ss));
    }

    #[test]
    fn string_data_wins_and_foreign_or_deleting_secrets_are_skipped() {
        let t = tenant(TenantId::School(Uuid::new_v4()), "old");
        let mut s = kube_secret("s", "ns", &t);
        s.string_data = Some([("password".to_owned(), "new".to_owned())].into());
        assert_eq!(
            tenant_from_secret(&s).unwrap().unwrap().password.expose(),
            "new"
        );
        let mut foreign = s.clone();
        foreign
            .metadata
            .labels
            .as_mut()
            .unwrap()
            .insert(LABEL_MANAGED_BY.into(), "helm".into());
        assert_eq!(tenant_from_secret(&foreign).unwrap(), None);
        let mut deleting = s.clone();
        deleting.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
            ));
        assert_eq!(tenant_from_secret(&deleting).unwrap(), None);
    }

    #[test]
    fn broken_secrets_report_without_values_and_are_skipped() {
        let t = tenant(TenantId::School(Uuid::new_v4()), "s3cret");
        let mut s = kube_secret("s", "ns", &t);
        s.data.as_mut().unwrap().remove("host");
        assert_eq!(
            tenant_from_secret(&s).unwrap_err(),
            ParseError::MissingKey("host")
        );
        let good = kube_secret("g", "ns", &tenant(TenantId::SelfService, "x"));
        assert_eq!(tenants_from_secrets("ns", &[s, good]).len(), 1);
    }

    #[test]
    fn snapshots_diff_into_added_rotated_removed() {
        let dir = TenantDirectory::default();
        let a = tenant(TenantId::School(Uuid::new_v4()), "1");
        let b = tenant(TenantId::SelfService, "1");
        let list = |ts: &[&Tenant]| {
            let secrets: Vec<_> = ts.iter().map(|t| kube_secret("x", "ns", t)).collect();
            tenants_from_secrets("ns", &secrets)
        };
        let c = dir.replace(list(&[&a, &b]));
        assert_eq!(c.added.len(), 2);
        let a2 = tenant(a.id, "2");
        let c = dir.replace(list(&[&a2]));
        assert_eq!(c.changed, vec![a.id]);
        assert_eq!(c.removed, vec![b.id]);
        assert!(c.added.is_empty());
    }
}
