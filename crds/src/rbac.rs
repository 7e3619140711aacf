//! The one list of Kubernetes API permissions each component needs.
//!
//! The Helm chart renders its Roles and ClusterRoles from exactly these entries
//! (`scripts/check-chart.sh` compares the rendered RBAC with `edumind-operator rbac`:
//! nothing missing, nothing extra), and `operator/tests/it/rbac.rs` records every API call the
//! reconciler makes against the in-memory API and asserts each one is covered here. When
//! code starts calling a new resource or verb, add it here, then to
//! `charts/edumind/templates/*rbac.yaml`.
//!
//! An entry may be marked [`Rule::pending`] while no code on a branch calls it yet (work in
//! flight, so that the chart is ready when it lands); `operator/tests/it/rbac.rs` then does
//! not require it to be used. Whoever lands that work removes the marker. None is pending.

use serde::Serialize;

/// Where a rule applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Scope {
    /// In the namespaces whose Schools the operator watches: a ClusterRole bound with a
    /// ClusterRoleBinding when it watches every namespace, otherwise a Role and RoleBinding
    /// in each watched namespace.
    Watched,
    /// In the namespace the component runs in (the Helm release namespace).
    Release,
    /// In the namespace of the self-service tenant's Secret (the release namespace unless
    /// configured otherwise); only when the self-service tenant is enabled.
    SelfService,
}

/// One RBAC rule: `verbs` on `resources` of `api_group` ("" is the core group).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Rule {
    pub api_group: &'static str,
    pub resources: &'static [&'static str],
    pub verbs: &'static [&'static str],
    /// Restricts the rule to these object names (empty: any name).
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    pub resource_names: &'static [&'static str],
    pub scope: Scope,
    /// Why the component needs it: the code that makes the call.
    pub why: &'static str,
    /// `Some(work)` when no code on this branch calls it yet (see the module docs).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pending: Option<&'static str>,
}

const fn rule(
    api_group: &'static str,
    resources: &'static [&'static str],
    verbs: &'static [&'static str],
    scope: Scope,
    why: &'static str,
) -> Rule {
    Rule {
        api_group,
        resources,
        verbs,
        resource_names: &[],
        scope,
        why,
        pending: None,
    }
}

/// Name of the operator's leader-election Lease (also `edumind_operator::run::LEASE_NAME`).
pub const LEADER_LEASE: &str = "edumind-operator-leader";

/// What `edumind-operator run` calls.
pub const OPERATOR_RULES: &[Rule] = &[
    rule(
        "edumind.ai",
        &["schools"],
        &["list", "watch", "patch"],
        Scope::Watched,
        "controller list/watch; JSON patch of metadata.finalizers (reconcile::patch_school)",
    ),
    rule(
        "edumind.ai",
        &["schools/status"],
        &["patch"],
        Scope::Watched,
        "server-side apply of status (reconcile::patch_status)",
    ),
    rule(
        "edumind.ai",
        &["schools/finalizers"],
        &["update"],
        Scope::Watched,
        "connection Secrets carry a controller owner reference with blockOwnerDeletion, \
         which OwnerReferencesPermissionEnforcement checks against this subresource",
    ),
    rule(
        "",
        &["secrets"],
        &["get", "list", "watch", "create", "patch"],
        Scope::Watched,
        "connection Secrets: read (get_opt), controller watch of owned Secrets, \
         server-side apply (which needs create when the Secret does not exist yet)",
    ),
    rule(
        "events.k8s.io",
        &["events"],
        &["create", "patch"],
        Scope::Watched,
        "kube::runtime::events::Recorder (creates, then patches repeated events)",
    ),
    rule(
        "",
        &["secrets"],
        &["get"],
        Scope::Release,
        "target servers' admin Secrets (school::OperatorContext::server)",
    ),
    rule(
        "coordination.k8s.io",
        &["leases"],
        &["create"],
        Scope::Release,
        "leader election: first replica creates the Lease (run::try_acquire); \
         create cannot be limited by name",
    ),
    Rule {
        resource_names: &[LEADER_LEASE],
        ..rule(
            "coordination.k8s.io",
            &["leases"],
            &["get", "update"],
            Scope::Release,
            "leader election: read and compare-and-swap renew/release (run::try_acquire, run::release)",
        )
    },
    rule(
        "",
        &["secrets"],
        &["get", "create", "update"],
        Scope::SelfService,
        "self-service tenant Secret: read, create, replace (selfservice::ensure)",
    ),
    // Backups: School CronJobs and final backups, SchoolBackup, SchoolRestore.
    rule(
        "edumind.ai",
        &["schools"],
        &["get"],
        Scope::Watched,
        "SchoolRestore reconciler reads the School it restores",
    ),
    rule(
        "",
        &["secrets"],
        &["delete"],
        Scope::Watched,
        "restore credentials Secret removed after a restore",
    ),
    rule(
        "batch",
        &["cronjobs", "jobs"],
        &["get", "list", "watch", "create", "patch", "delete"],
        Scope::Watched,
        "backup CronJob per School (server-side apply; deleted when storage is removed), \
         on-demand, restore and final-backup Jobs (server-side apply; the final one deleted \
         after the drop), Controller watches of both",
    ),
    rule(
        "",
        &["pods"],
        &["list"],
        Scope::Watched,
        "read backup pods' termination messages",
    ),
    rule(
        "edumind.ai",
        &["schoolbackups"],
        &["list", "watch"],
        Scope::Watched,
        "SchoolBackup controller",
    ),
    rule(
        "edumind.ai",
        &["schoolrestores"],
        &["get", "list", "watch", "patch"],
        Scope::Watched,
        "SchoolRestore controller (patch: finalizer edumind.ai/restore)",
    ),
    rule(
        "edumind.ai",
        &["schoolbackups/status", "schoolrestores/status"],
        &["patch"],
        Scope::Watched,
        "SchoolBackup and SchoolRestore status (server-side apply)",
    ),
];

/// What `edumind-dataplane` calls.
pub const DATAPLANE_RULES: &[Rule] = &[
    rule(
        "",
        &["secrets"],
        &["list", "watch"],
        Scope::Watched,
        "tenant discovery: initial list, then a watch (reflector) of the operator's labelled \
         connection Secrets (edumind_dataplane::kube_source)",
    ),
    rule(
        "",
        &["secrets"],
        &["list", "watch"],
        Scope::SelfService,
        "tenant discovery: the self-service tenant's Secret (list, then watch)",
    ),
];

/// Both lists, as printed by `edumind-operator rbac`.
#[derive(Debug, Serialize)]
pub struct Permissions {
    pub operator: &'static [Rule],
    pub dataplane: &'static [Rule],
}

pub const PERMISSIONS: Permissions = Permissions {
    operator: OPERATOR_RULES,
    dataplane: DATAPLANE_RULES,
};

impl Rule {
    /// Whether this rule allows `verb` on `resource` (`"schools/status"` for a subresource)
    /// in `api_group`.
    pub fn allows(&self, api_group: &str, resource: &str, verb: &str) -> bool {
        self.api_group == api_group
            && self.resources.contains(&resource)
            && self.verbs.contains(&verb)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn every_rule_is_well_formed() {
        const VERBS: &[&str] = &[
            "get",
            "list",
            "watch",
            "create",
            "update",
            "patch",
            "delete",
            "deletecollection",
        ];
        for r in OPERATOR_RULES.iter().chain(DATAPLANE_RULES) {
            assert!(!r.resources.is_empty() && !r.verbs.is_empty(), "{r:?}");
            assert!(r.verbs.iter().all(|v| VERBS.contains(v)), "{r:?}");
            assert!(!r.why.is_empty(), "{r:?}");
            // A name restriction cannot apply to create, list, watch (Kubernetes ignores it).
            if !r.resource_names.is_empty() {
                assert!(
                    r.verbs
                        .iter()
                        .all(|v| !["create", "list", "watch", "deletecollection"].contains(v)),
                    "{r:?}"
                );
            }
        }
    }

    #[test]
    fn serialises_for_the_chart_check() {
        let json = serde_json::to_value(&PERMISSIONS).unwrap();
        assert_eq!(json["operator"][0]["apiGroup"], "edumind.ai");
        assert_eq!(json["operator"][0]["scope"], "watched");
        assert!(json["operator"][0].get("pending").is_none());
    }
}
