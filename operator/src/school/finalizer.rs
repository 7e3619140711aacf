//! The finalizer that guards a School's database and role.

use edumind_crds::School;
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;

use super::context::OperatorContext;
use super::error::Error;
use super::labels::FINALIZER;

/// Adds the finalizer and returns the updated School.
/// Applies a JSON patch to the School's metadata (finalizers), as one API call.
pub(crate) async fn patch_school(
    school: &School,
    ctx: &OperatorContext,
    patch: serde_json::Value,
    step: &'static str,
) -> Result<School, Error> {
    let api: Api<School> =
        Api::namespaced(ctx.client.clone(), &school.namespace().unwrap_or_default());
    let patch: json_patch::Patch =
        serde_json::from_value(patch).map_err(|source| Error::Internal { step, source })?;
    api.patch(
        &school.name_any(),
        &PatchParams::default(),
        &Patch::<()>::Json(patch),
    )
    .await
    .map_err(|e| Error::Kube {
        step,
        source: Box::new(e),
    })
}

pub(crate) async fn add_finalizer(school: &School, ctx: &OperatorContext) -> Result<School, Error> {
    let patch = if school.finalizers().is_empty() {
        json!([{"op": "add", "path": "/metadata/finalizers", "value": [FINALIZER]}])
    } else {
        json!([{"op": "add", "path": "/metadata/finalizers/-", "value": FINALIZER}])
    };
    patch_school(school, ctx, patch, "add the finalizer").await
}

pub(crate) async fn remove_finalizer(school: &School, ctx: &OperatorContext) -> Result<(), Error> {
    let Some(index) = school.finalizers().iter().position(|f| f == FINALIZER) else {
        return Ok(());
    };
    let path = format!("/metadata/finalizers/{index}");
    let patch =
        json!([{"op": "test", "path": path, "value": FINALIZER}, {"op": "remove", "path": path}]);
    patch_school(school, ctx, patch, "remove the finalizer").await?;
    Ok(())
}
