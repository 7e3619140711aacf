//! Why a reconcile did not reach Ready, and the retry policy that follows from it.

use edumind_crds::status::ReadyReason;
use std::sync::Arc;

use edumind_crds::School;
use kube::runtime::controller::Action;

use crate::pg::PgError;

use super::context::OperatorContext;

/// Why a reconcile did not reach Ready. The `Display` text goes into status conditions
/// and events, so it never contains secrets.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    InvalidSpec(String),
    #[error("target server {0:?} is not configured in the operator")]
    UnknownServer(String),
    #[error("{0}")]
    Conflict(String),
    #[error(
        "database {0} existed and has vanished; it is not recreated empty. Restore it from a backup, or delete and recreate the School to start over"
    )]
    DatabaseMissing(String),
    #[error("{0}")]
    FinalBackupFailed(String),
    #[error("{0}")]
    FinalBackupRunning(String),
    #[error("{0}")]
    PreMigrationBackupRunning(String),
    #[error("{0}")]
    PreMigrationBackupFailed(String),
    #[error("admin credentials of the target server: {0}")]
    AdminCredentials(String),
    #[error(transparent)]
    Pg(#[from] PgError),
    #[error("Kubernetes API error while trying to {step}: {source}")]
    Kube {
        step: &'static str,
        #[source]
        source: Box<kube::Error>,
    },
    /// Dropping the database and role was refused or failed: nothing was dropped and the
    /// finalizer stays. Permanent for the status (a person has to look); the reconcile
    /// itself returns the cause, so a transient cause is still retried soon.
    #[error("deletion blocked: {source}")]
    DeletionBlocked {
        #[source]
        source: Box<Error>,
    },
    /// Something the operator builds itself (a JSON patch) was malformed: a bug in the
    /// operator, not in the School's spec. Retried like a transient error.
    #[error("internal error while trying to {step}: {source}")]
    Internal {
        step: &'static str,
        #[source]
        source: serde_json::Error,
    },
}

impl Error {
    /// Permanent errors wait for a change (spec, another School, an operator); transient
    /// ones are retried with backoff.
    pub fn is_permanent(&self) -> bool {
        matches!(
            self,
            Error::InvalidSpec(_)
                | Error::UnknownServer(_)
                | Error::Conflict(_)
                | Error::DatabaseMissing(_)
                | Error::FinalBackupFailed(_)
                | Error::PreMigrationBackupFailed(_)
                | Error::DeletionBlocked { .. }
        )
    }

    /// The condition reason and metrics label.
    pub fn reason(&self) -> ReadyReason {
        match self {
            Error::InvalidSpec(_) => ReadyReason::InvalidSpec,
            Error::UnknownServer(_) => ReadyReason::UnknownTargetServer,
            Error::Conflict(_) => ReadyReason::Conflict,
            Error::DatabaseMissing(_) => ReadyReason::DatabaseMissing,
            Error::FinalBackupFailed(_) => ReadyReason::FinalBackupFailed,
            Error::FinalBackupRunning(_) => ReadyReason::FinalBackupRunning,
            Error::PreMigrationBackupRunning(_) => ReadyReason::BackupBeforeMigration,
            Error::PreMigrationBackupFailed(_) => ReadyReason::BackupBeforeMigrationFailed,
            Error::AdminCredentials(_) => ReadyReason::AdminCredentialsUnavailable,
            Error::Pg(PgError::Migrate(_)) => ReadyReason::MigrationFailed,
            Error::Pg(_) => ReadyReason::DatabaseServerError,
            Error::Kube { .. } => ReadyReason::KubernetesApiError,
            Error::DeletionBlocked { .. } => ReadyReason::DeletionBlocked,
            Error::Internal { .. } => ReadyReason::InternalError,
        }
    }
}

impl Error {
    /// The pipeline step that failed, the `step` label of
    /// `edumind_operator_reconcile_errors_total` (a small fixed set).
    pub fn step(&self) -> &'static str {
        match self {
            Error::InvalidSpec(_) | Error::UnknownServer(_) => "validate",
            Error::Pg(PgError::Migrate(_)) => "migrate",
            Error::Conflict(_)
            | Error::DatabaseMissing(_)
            | Error::AdminCredentials(_)
            | Error::Pg(_) => "database",
            Error::PreMigrationBackupRunning(_) | Error::PreMigrationBackupFailed(_) => {
                "backup-before-migration"
            }
            Error::FinalBackupFailed(_)
            | Error::FinalBackupRunning(_)
            | Error::DeletionBlocked { .. } => "delete",
            Error::Kube { .. } => "kubernetes",
            Error::Internal { .. } => "internal",
        }
    }
}

/// Retry policy: a transient error retries after the School's next backoff delay (1 s
/// doubling to 5 min, with jitter; reset by a successful reconcile); a permanent one waits
/// for a change to the School or an object it owns.
pub fn error_policy(school: Arc<School>, error: &Error, ctx: Arc<OperatorContext>) -> Action {
    if error.is_permanent() {
        tracing::warn!(reason = error.reason().as_str(), error = %error, "reconcile failed");
        return Action::await_change();
    }
    let delay = ctx.backoff.failed(&crate::backoff::key(school.as_ref()));
    tracing::warn!(reason = error.reason().as_str(), error = %error,
        retry_in_ms = delay.as_millis() as u64, "reconcile failed");
    Action::requeue(delay)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_blocked_drop_and_a_bad_patch_are_not_invalid_specs() {
        let blocked = Error::DeletionBlocked {
            source: Box::new(Error::Conflict(
                "database x belongs to another School".into(),
            )),
        };
        assert_eq!(blocked.reason(), ReadyReason::DeletionBlocked);
        assert!(blocked.is_permanent());
        assert_eq!(
            blocked.to_string(),
            "deletion blocked: database x belongs to another School"
        );
        let source = std::error::Error::source(&blocked).map(ToString::to_string);
        assert_eq!(
            source.as_deref(),
            Some("database x belongs to another School")
        );

        let bad = serde_json::from_str::<json_patch::Patch>("{").unwrap_err();
        let internal = Error::Internal {
            step: "add the finalizer",
            source: bad,
        };
        assert_eq!(internal.reason(), ReadyReason::InternalError);
        assert!(!internal.is_permanent());
        assert!(
            internal
                .to_string()
                .starts_with("internal error while trying to add the finalizer: ")
        );
    }
}
