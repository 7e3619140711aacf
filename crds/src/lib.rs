//! Kubernetes API types of the EduMind operator. The `School` resource arrives with the
//! operator issue; this crate fixes the API group and version every part agrees on.

/// API group of every EduMind custom resource.
pub const GROUP: &str = "edumind.ai";
/// The served and stored API version.
pub const VERSION: &str = "v1alpha1";
