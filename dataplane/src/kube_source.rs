//! The in-cluster tenant source: the connection Secrets the operator labels, read through
//! the Kubernetes API in the configured namespaces.
//!
//! **Decision: a watch, with the watcher's relist as its safety net.** At start the source
//! lists the Secrets matching `label_selector` once ([`TenantSource::snapshot`]; the
//! service does not start without that list). Then [`KubeTenantSource::spawn_watch`] runs
//! one `kube_runtime::watcher` per namespace (or one cluster-wide), each feeding a
//! reflector store ([`SecretStores`]); after every change, once every watch has completed
//! its initial list, the tenants of all stores go to [`TenantDirectory::replace`], which
//! diffs them against the current snapshot: added tenants appear, deleted ones disappear
//! (404), a changed Secret (rotated password) retires the tenant's connections. A new
//! School's Secret is served as soon as the watch event arrives (well under a second),
//! and no replica re-reads every password every two seconds. When a watch breaks, the
//! watcher retries with backoff and relists (a relist replaces its store atomically, so
//! deletions missed while disconnected are noticed); meanwhile the last known set stays:
//! an API outage must not drop every tenant.
//!
//! `[kubernetes] all_namespaces = true` watches every namespace instead, in one
//! cluster-wide watch: the match for an operator that watches every namespace.
//!
//! RBAC: `list` and `watch` on `secrets` (core group) in each configured namespace, or
//! cluster-wide when the list is empty — nothing else (`edumind_crds::rbac::DATAPLANE_RULES`).
//!
//! Any other [`TenantSource`] (and this one, when passed to
//! `Application::build_with_source`, as the tests over the in-memory API do: it has no
//! watch) is polled every `tenant_poll_ms` instead.
//!
//! [`TenantDirectory::replace`]: crate::tenants::TenantDirectory::replace

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Secret as KubeSecret;
use kube::api::{Api, ListParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::reflector::{self, Store, store::Writer};
use kube::runtime::watcher::{self, Event};

use edumind_crds::connection::ParseError;

use crate::tenants::{Changes, SourceError, Tenant, TenantDirectory, TenantSource};

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

impl KubeTenantSource {
    /// Keeps `directory` in step with the Secrets through watches until `shutdown` fires;
    /// `on_change` hears about added, removed and rotated tenants.
    pub fn spawn_watch<F>(
        self,
        directory: TenantDirectory,
        mut on_change: F,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
    ) -> tokio::task::JoinHandle<()>
    where
        F: FnMut(&Changes) + Send + 'static,
    {
        let apis: Vec<Api<KubeSecret>> = if self.namespaces.is_empty() {
            vec![Api::all(self.client.clone())]
        } else {
            self.namespaces
                .iter()
                .map(|ns| Api::namespaced(self.client.clone(), ns))
                .collect()
        };
        let config = watcher::Config::default().labels(&self.label_selector);
        let mut stores = SecretStores::new(apis.len());
        let streams = apis.into_iter().enumerate().map(|(i, api)| {
            watcher::watcher(api, config.clone())
                .default_backoff()
                .map(move |event| (i, event))
                .boxed()
        });
        let mut events = futures_util::stream::select_all(streams);
        tokio::spawn(async move {
            loop {
                let next = tokio::select! {
                    next = events.next() => next,
                    _ = shutdown.changed() => return,
                };
                let Some((i, event)) = next else { return };
                match event {
                    Ok(event) => {
                        if let Some(tenants) = stores.apply(i, &event) {
                            directory.publish(tenants, &mut on_change);
                        }
                    }
                    Err(e) => {
                        directory.note_source_error("kubernetes");
                        tracing::warn!(
                            error = %e,
                            "tenant Secret watch failed; retrying, the current tenants stay"
                        )
                    }
                }
            }
        })
    }
}

/// The Secrets one watch per namespace has seen, each in a reflector store.
pub struct SecretStores {
    stores: Vec<(Writer<KubeSecret>, Store<KubeSecret>, bool)>,
}

impl SecretStores {
    /// Stores for `watches` watches, none listed yet.
    pub fn new(watches: usize) -> Self {
        SecretStores {
            stores: (0..watches)
                .map(|_| {
                    let (reader, writer) = reflector::store();
                    (writer, reader, false)
                })
                .collect(),
        }
    }

    /// Applies one event of watch `i`. Returns the complete tenant set when it may have
    /// changed and every watch has completed its initial list; `None` otherwise (a relist
    /// in progress is buffered by the store and published when it is done).
    pub fn apply(&mut self, i: usize, event: &Event<KubeSecret>) -> Option<Vec<Tenant>> {
        let (writer, _, listed) = self.stores.get_mut(i)?;
        writer.apply_watcher_event(event);
        match event {
            Event::Init | Event::InitApply(_) => return None,
            Event::InitDone => *listed = true,
            Event::Apply(_) | Event::Delete(_) => {}
        }
        if !self.stores.iter().all(|(_, _, listed)| *listed) {
            return None;
        }
        let mut out = Vec::new();
        for (_, reader, _) in &self.stores {
            for s in reader.state() {
                let ns = s.metadata.namespace.as_deref().unwrap_or_default();
                out.extend(tenants_from_secrets(ns, std::slice::from_ref(&*s)));
            }
        }
        Some(out)
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
            tls: None,
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

    fn ids(tenants: Option<Vec<Tenant>>) -> Option<Vec<TenantId>> {
        tenants.map(|ts| {
            let mut ids: Vec<_> = ts.into_iter().map(|t| t.id).collect();
            ids.sort();
            ids
        })
    }

    #[test]
    fn watch_events_reach_the_directory_once_every_watch_has_listed() {
        let a = tenant(TenantId::School(Uuid::new_v4()), "1");
        let b = tenant(TenantId::SelfService, "1");
        let sa = kube_secret("a", "schools", &a);
        let sb = kube_secret("b", "system", &b);
        let mut stores = SecretStores::new(2);
        // Watch 0 lists a; nothing is published while watch 1 has not listed.
        assert_eq!(stores.apply(0, &Event::Init), None);
        assert_eq!(stores.apply(0, &Event::InitApply(sa.clone())), None);
        assert_eq!(stores.apply(0, &Event::InitDone), None);
        assert_eq!(stores.apply(1, &Event::Init), None);
        assert_eq!(stores.apply(1, &Event::InitDone), Some(vec![a.clone()]));
        // A new Secret is published by its own event.
        let mut both = vec![a.id, b.id];
        both.sort();
        assert_eq!(ids(stores.apply(1, &Event::Apply(sb.clone()))), Some(both));
        let dir = TenantDirectory::default();
        dir.replace(stores.apply(1, &Event::Apply(sb.clone())).unwrap());
        assert_eq!(dir.len(), 2);
        // Rotation and deletion.
        let a2 = tenant(a.id, "2");
        let rotated = stores.apply(0, &Event::Apply(kube_secret("a", "schools", &a2)));
        assert_eq!(dir.replace(rotated.unwrap()).changed, vec![a.id]);
        let gone = stores.apply(1, &Event::Delete(sb.clone()));
        assert_eq!(dir.replace(gone.unwrap()).removed, vec![b.id]);
        // A relist buffers until it is done, then drops what it no longer lists.
        assert_eq!(stores.apply(0, &Event::Init), None);
        assert_eq!(dir.len(), 1);
        let relisted = stores.apply(0, &Event::InitDone).unwrap();
        assert_eq!(dir.replace(relisted).removed, vec![a.id]);
        // Foreign and deleting Secrets in a store are not tenants.
        let mut foreign = kube_secret("f", "schools", &a);
        foreign.metadata.labels = None;
        assert_eq!(stores.apply(0, &Event::Apply(foreign)), Some(vec![]));
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
