//! Fault points for crash-convergence tests.
//!
//! Every DDL step of provisioning (and the Secret write) calls [`after`] with its step
//! name once it succeeded. Outside a [`with_fault`] scope that is a no-op (one
//! task-local lookup); inside, the named step fails right after it took effect, exactly
//! as if the process had died there. Tests use it to prove that the next reconcile
//! converges from every intermediate state. Nothing in the operator sets a fault.

use std::future::Future;

tokio::task_local! {
    static FAULT_AFTER: String;
}

/// An injected fault (see the module docs).
#[derive(Debug, thiserror::Error)]
#[error("injected fault after step `{0}`")]
pub struct Injected(pub String);

/// Runs `fut` with a fault injected right after the step named `step`.
pub async fn with_fault<F: Future>(step: &str, fut: F) -> F::Output {
    FAULT_AFTER.scope(step.to_string(), fut).await
}

/// Called by each step after it succeeded: fails when a test asked for a fault here.
pub fn after(step: &str) -> Result<(), crate::pg::PgError> {
    match FAULT_AFTER.try_with(|wanted| wanted == step) {
        Ok(true) => Err(crate::pg::PgError::Injected(Injected(step.to_string()))),
        _ => Ok(()),
    }
}
