//! Step 1, validate and build (pure): a School and the configured servers become the
//! [`Desired`] state, or an `InvalidSpec`/`UnknownTargetServer` error.

use edumind_crds::School;
use kube::ResourceExt;
use uuid::Uuid;

use crate::backupjobs::{self};
use crate::config::{TargetServer, TargetServers};
use crate::naming;
use crate::pg::{self, Claim};

use super::error::Error;
use super::labels::ANNOTATION_ROTATE;

/// The outcome of validation: everything the apply steps need, derived purely.
#[derive(Debug, Clone, PartialEq)]
pub struct Desired {
    pub namespace: String,
    pub name: String,
    pub school_id: Uuid,
    pub code: String,
    pub server: TargetServer,
    pub database: String,
    pub role: String,
    pub secret_name: String,
    /// `true` unless `spec.active` is false.
    pub login: bool,
    /// A rotation request not acted upon yet (the annotation's value).
    pub rotate: Option<String>,
    /// Whether status says the database was created before (then it must exist).
    pub recorded: bool,
    /// The school's own row in its database, from the spec.
    pub record: pg::SchoolRecord,
    /// A SchoolRestore of this School is in progress: logins stay blocked.
    pub restoring: bool,
}

impl Desired {
    pub(crate) fn claim(&self) -> Claim {
        Claim {
            kind: "school".into(),
            school_id: self.school_id.to_string(),
            code: self.code.clone(),
            owner: format!("{}/{}", self.namespace, self.name),
        }
    }
}

/// Validates a School and derives names (pure: no I/O).
pub fn validate(school: &School, servers: &TargetServers) -> Result<Desired, Error> {
    let invalid = |m: String| Err(Error::InvalidSpec(m));
    let name = school.metadata.name.clone().unwrap_or_default();
    let namespace = school.metadata.namespace.clone().unwrap_or_default();
    if name.is_empty() || namespace.is_empty() {
        return invalid("the School has no name or namespace".into());
    }
    let spec = &school.spec;
    let status = school.status.clone().unwrap_or_default();
    let code = &spec.code;
    if code.trim().is_empty() {
        return invalid("spec.code must not be blank".into());
    }
    if code.chars().count() > edumind_crds::MAX_CODE_CHARS {
        return invalid(format!(
            "spec.code is {} characters long; at most {} are allowed",
            code.chars().count(),
            edumind_crds::MAX_CODE_CHARS
        ));
    }
    if code.chars().any(char::is_control) {
        return invalid("spec.code must not contain control characters".into());
    }
    if spec.name.trim().is_empty() || spec.name.chars().count() > 255 {
        return invalid("spec.name must be 1 to 255 characters".into());
    }
    if spec.address.chars().count() > 500 {
        return invalid("spec.address must be at most 500 characters".into());
    }
    if !spec.contact_email.contains('@') || spec.contact_email.chars().count() > 255 {
        return invalid(
            "spec.contactEmail must be an e-mail address of at most 255 characters".into(),
        );
    }
    if spec
        .contact_phone
        .as_ref()
        .is_some_and(|p| p.chars().count() > 50)
    {
        return invalid("spec.contactPhone must be at most 50 characters".into());
    }
    if !edumind_crds::RETENTION_DAYS.contains(&spec.backup.retention_days) {
        return invalid(format!(
            "spec.backup.retentionDays must be between 7 and 35, not {}",
            spec.backup.retention_days
        ));
    }
    if let Some(storage) = &spec.backup.storage
        && let Err(why) = backupjobs::check_storage(storage)
    {
        return invalid(why);
    }
    if spec.backup.schedule.split_whitespace().count() != 5 {
        return invalid(format!(
            "spec.backup.schedule {:?} is not a 5-field cron expression",
            spec.backup.schedule
        ));
    }
    let school_id = match &spec.school_id {
        Some(id) => match Uuid::parse_str(id) {
            Ok(id) => id,
            Err(_) => return invalid(format!("spec.schoolId {id:?} is not a UUID")),
        },
        None => naming::derived_school_id(&namespace, &name),
    };
    if let Some(recorded) = &status.school_id
        && *recorded != school_id.to_string()
    {
        return invalid(format!(
            "spec.schoolId changed from {recorded}; the school id is immutable"
        ));
    }
    let server = servers
        .resolve(spec.target_server.as_deref())
        .ok_or_else(|| {
            Error::UnknownServer(
                spec.target_server
                    .clone()
                    .unwrap_or_else(|| "(default)".into()),
            )
        })?
        .clone();
    if let Some(recorded) = &status.server
        && *recorded != server.name
    {
        return invalid(format!(
            "the target server changed from {recorded} to {}; it is immutable",
            server.name
        ));
    }
    // Names recorded in status win: they never change once created.
    let computed = naming::school_database(code, school_id);
    let database = status.database.clone().unwrap_or_else(|| computed.clone());
    let role = status.role.clone().unwrap_or(computed);
    if !naming::is_generated_identifier(&database) || !naming::is_generated_identifier(&role) {
        return invalid(
            "status names a database or role the operator could not have generated".into(),
        );
    }
    let rotate = school
        .annotations()
        .get(ANNOTATION_ROTATE)
        .filter(|v| !v.is_empty() && status.password_rotation.as_ref() != Some(*v))
        .cloned();
    Ok(Desired {
        secret_name: naming::secret_name(&name),
        namespace,
        name,
        school_id,
        code: code.clone(),
        server,
        database,
        role,
        login: spec.active,
        rotate,
        recorded: status.database.is_some(),
        record: pg::SchoolRecord {
            id: school_id,
            name: spec.name.clone(),
            code: code.clone(),
            address: spec.address.clone(),
            contact_email: spec.contact_email.clone(),
            contact_phone: spec.contact_phone.clone(),
            active: spec.active,
        },
        restoring: false,
    })
}
