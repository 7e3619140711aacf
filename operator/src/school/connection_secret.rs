//! The School's connection Secret, built through the contract in
//! `edumind_crds::connection`.

use edumind_crds::School;
use edumind_crds::connection::{ConnectionSecret, Endpoint, Password, TenantRef, Tls};
use k8s_openapi::api::core::v1::Secret;
use kube::{Resource, ResourceExt};

use crate::config::TargetServer;
use crate::credentials::SecretString;

use super::desired::Desired;
use super::labels::label_value;

/// The school's connection Secret, as the contract (`edumind_crds::connection`) defines it.
pub fn connection_secret(
    d: &Desired,
    password: &SecretString,
    tls: Option<&Tls>,
) -> ConnectionSecret {
    ConnectionSecret {
        tenant: TenantRef::School {
            id: d.school_id,
            code_label: Some(label_value(&d.code)),
        },
        endpoint: endpoint(&d.server, &d.role, &d.database, password, tls),
    }
}

/// Where and as whom a tenant's clients connect: the server's client address, the role,
/// the database and its password, and the server's TLS settings. Shared by school and
/// self-service Secrets.
pub fn endpoint(
    server: &TargetServer,
    user: &str,
    db: &str,
    password: &SecretString,
    tls: Option<&Tls>,
) -> Endpoint {
    Endpoint {
        host: server.client_host().into(),
        port: server.client_port(),
        dbname: db.into(),
        username: user.into(),
        password: Password::new(password.expose()),
        tls: tls.cloned(),
    }
}

pub(crate) fn desired_secret(
    school: &School,
    d: &Desired,
    password: &SecretString,
    tls: Option<&Tls>,
) -> Secret {
    connection_secret(d, password, tls).to_secret(
        &d.secret_name,
        &d.namespace,
        school.controller_owner_ref(&()),
    )
}

pub(crate) fn secret_up_to_date(existing: &Secret, desired: &Secret) -> bool {
    let labels_ok = desired
        .metadata
        .labels
        .iter()
        .flatten()
        .all(|(k, v)| existing.labels().get(k) == Some(v));
    let owner_ok = desired
        .metadata
        .owner_references
        .iter()
        .flatten()
        .all(|o| existing.owner_references().iter().any(|e| e.uid == o.uid));
    labels_ok && owner_ok && existing.type_ == desired.type_ && existing.data == desired.data
}
