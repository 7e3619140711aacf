//! Why a reconcile did not reach Ready, and the retry policy that follows from it.

use std::sync::Arc;

use edumind_crds::School;
use kube::runtime::controller::Action;

use crate::pg::PgError;

use super::context::Context;
use super::{PERMANENT_RECHECK, TRANSIENT_RETRY};

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
        )
    }

    /// The condition reason (CamelCase) and metrics label.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::InvalidSpec(_) => "InvalidSpec",
            Error::UnknownServer(_) => "UnknownTargetServer",
            Error::Conflict(_) => "Conflict",
            Error::DatabaseMissing(_) => "DatabaseMissing",
            Error::FinalBackupFailed(_) => "FinalBackupFailed",
            Error::FinalBackupRunning(_) => "FinalBackupRunning",
            Error::AdminCredentials(_) => "AdminCredentialsUnavailable",
            Error::Pg(PgError::Migrate(_)) => "MigrationFailed",
            Error::Pg(_) => "DatabaseServerError",
            Error::Kube { .. } => "KubernetesApiError",
        }
    }
}

/// Retry policy: transient errors back off, permanent ones were already handled.
pub fn error_policy(_school: Arc<School>, error: &Error, _ctx: Arc<Context>) -> Action {
    tracing::warn!(reason = error.reason(), error = %error, "reconcile failed");
    if error.is_permanent() {
        Action::requeue(PERMANENT_RECHECK)
    } else {
        Action::requeue(TRANSIENT_RETRY)
    }
}
