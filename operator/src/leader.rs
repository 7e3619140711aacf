//! Leader election over a `coordination.k8s.io` Lease: one replica reconciles, the others
//! wait as standbys. [`try_acquire`] takes or renews the Lease with a compare-and-swap on
//! its resourceVersion; [`release`] gives it up on shutdown so a standby takes over at once.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Api, ObjectMeta, PostParams};

/// Name of the Lease the replicas compete for.
pub const LEASE_NAME: &str = edumind_crds::rbac::LEADER_LEASE;
/// How long a Lease stays valid without renewal.
pub const LEASE_DURATION: Duration = Duration::from_secs(15);
/// How often the leader renews (and a standby retries).
pub(crate) const RENEW_EVERY: Duration = Duration::from_secs(5);

/// Tries once to take or renew the Lease for `identity`. Returns whether this replica
/// holds it afterwards. Conflicting writes (another replica won) count as "not held".
pub async fn try_acquire(
    api: &Api<Lease>,
    identity: &str,
    duration: Duration,
) -> Result<bool, kube::Error> {
    let now = k8s_openapi::jiff::Timestamp::now();
    let spec = |transitions: i32, acquired: Option<MicroTime>| LeaseSpec {
        holder_identity: Some(identity.to_string()),
        lease_duration_seconds: Some(duration.as_secs() as i32),
        acquire_time: acquired.or(Some(MicroTime(now))),
        renew_time: Some(MicroTime(now)),
        lease_transitions: Some(transitions),
        ..Default::default()
    };
    let Some(mut lease) = api.get_opt(LEASE_NAME).await? else {
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(LEASE_NAME.into()),
                ..Default::default()
            },
            spec: Some(spec(0, None)),
        };
        return match api.create(&PostParams::default(), &lease).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
            Err(e) => Err(e),
        };
    };
    let current = lease.spec.clone().unwrap_or_default();
    let holder = current.holder_identity.clone().unwrap_or_default();
    let expired = match (current.renew_time.as_ref(), current.lease_duration_seconds) {
        (Some(renewed), Some(secs)) => renewed.0 + Duration::from_secs(secs.max(0) as u64) < now,
        _ => true,
    };
    if holder != identity && !holder.is_empty() && !expired {
        return Ok(false);
    }
    let transitions = current.lease_transitions.unwrap_or(0) + i32::from(holder != identity);
    let acquired = if holder == identity {
        current.acquire_time.clone()
    } else {
        None
    };
    lease.spec = Some(spec(transitions, acquired));
    // The resourceVersion in `lease` makes this a compare-and-swap.
    match api
        .replace(LEASE_NAME, &PostParams::default(), &lease)
        .await
    {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
        Err(e) => Err(e),
    }
}

/// Gives the Lease up (on shutdown) so a standby takes over at once.
pub async fn release(api: &Api<Lease>, identity: &str) -> Result<(), kube::Error> {
    if let Some(mut lease) = api.get_opt(LEASE_NAME).await?
        && let Some(spec) = lease.spec.as_mut()
        && spec.holder_identity.as_deref() == Some(identity)
    {
        spec.holder_identity = None;
        spec.renew_time = None;
        api.replace(LEASE_NAME, &PostParams::default(), &lease)
            .await?;
    }
    Ok(())
}
