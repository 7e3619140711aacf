//! The names the operator puts on Schools: field manager, finalizer, annotations, and the
//! label-safe form of a school code.

use edumind_crds::School;
use kube::ResourceExt;

use crate::naming;

/// The one field manager for everything the operator applies (status, Secrets).
pub const FIELD_MANAGER: &str = "edumind-operator";

/// Finalizer guarding the database and role of a School.
pub const FINALIZER: &str = "edumind.ai/database";

/// `edumind.ai/paused: "true"` stops all reconciling of a School (including deletion).
pub const ANNOTATION_PAUSED: &str = "edumind.ai/paused";

/// Setting `edumind.ai/rotate-password` to a new value rotates the password once.
pub const ANNOTATION_ROTATE: &str = "edumind.ai/rotate-password";

/// Label values are at most 63 characters of `[A-Za-z0-9._-]`, alphanumeric at the
/// ends. A code that already is one is used as is; anything else becomes its slug (the
/// school id label is the exact key; the code label is for humans and selectors).
pub fn label_value(code: &str) -> String {
    let valid = !code.is_empty()
        && code.len() <= 63
        && code
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        && code
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric())
        && code
            .bytes()
            .last()
            .is_some_and(|b| b.is_ascii_alphanumeric());
    if valid {
        code.to_string()
    } else {
        naming::code_slug(code).trim_matches('_').to_string()
    }
}

pub(crate) fn is_paused(school: &School) -> bool {
    school
        .annotations()
        .get(ANNOTATION_PAUSED)
        .is_some_and(|v| v == "true")
}
