//! Names of everything the operator creates, derived deterministically from a School.
//!
//! PostgreSQL identifiers are at most 63 bytes and school codes are arbitrary user input
//! (quotes, spaces, unicode, up to 50 characters), so the code is never used raw:
//!
//! * database = role = `edumind_school_<slug>_<id>` where `<id>` is the school id as 32
//!   lowercase hex digits (the UUID without dashes) and `<slug>` is at most
//!   [`SLUG_MAX_BYTES`] bytes of the code folded to `[a-z0-9_]` (readable, not relied
//!   upon). The id makes the name unique per school; the whole name is at most
//!   15 + 15 + 1 + 32 = 63 bytes and only ever contains `[a-z0-9_]`.
//! * school id = `spec.schoolId`, or UUIDv5([`school_id_namespace`], "<k8s namespace>/<name>").
//!
//! The names are recorded in the School's status once created and never recomputed.
//! [`quote_ident`] and [`quote_literal`] are the only ways SQL text is built from names.

use uuid::Uuid;

/// PostgreSQL's identifier limit (NAMEDATALEN - 1).
pub const MAX_IDENTIFIER_BYTES: usize = 63;
/// Prefix of every school database and role name.
pub const SCHOOL_PREFIX: &str = "edumind_school_";
/// The most bytes of the folded code that go into a name.
pub const SLUG_MAX_BYTES: usize = MAX_IDENTIFIER_BYTES - SCHOOL_PREFIX.len() - 1 - 32;
/// The shared self-service database (storage spec section 3).
pub const SELF_SERVICE_DATABASE: &str = "edumind_selfservice";

/// UUIDv5 namespace for school ids derived from `<namespace>/<name>`:
/// UUIDv5(URL namespace, "https://edumind.ai/schools").
pub fn school_id_namespace() -> Uuid {
    Uuid::new_v5(&Uuid::NAMESPACE_URL, b"https://edumind.ai/schools")
}

/// The stable school id of a School without `spec.schoolId`.
pub fn derived_school_id(namespace: &str, name: &str) -> Uuid {
    Uuid::new_v5(
        &school_id_namespace(),
        format!("{namespace}/{name}").as_bytes(),
    )
}

/// The code folded to `[a-z0-9_]`, runs of anything else collapsed to one `_`, trimmed,
/// cut to [`SLUG_MAX_BYTES`]; `x` when nothing readable is left (e.g. an all-unicode code).
pub fn code_slug(code: &str) -> String {
    let mut slug = String::new();
    for c in code.chars() {
        let c = c.to_ascii_lowercase();
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            slug.push(c);
        } else if !slug.is_empty() && !slug.ends_with('_') {
            slug.push('_');
        }
        if slug.len() >= SLUG_MAX_BYTES {
            break;
        }
    }
    slug.truncate(SLUG_MAX_BYTES);
    let slug = slug.trim_end_matches('_');
    if slug.is_empty() {
        "x".into()
    } else {
        slug.into()
    }
}

/// Name of the school's database, and of its login role (roles and databases live in
/// separate PostgreSQL namespaces; one name for both keeps them easy to pair).
pub fn school_database(code: &str, school_id: Uuid) -> String {
    format!("{SCHOOL_PREFIX}{}_{}", code_slug(code), school_id.simple())
}

/// Name of the connection Secret of a School (a DNS subdomain, at most 253 characters).
pub fn secret_name(school_name: &str) -> String {
    const SUFFIX: &str = "-connection";
    if school_name.len() + SUFFIX.len() <= 253 {
        return format!("{school_name}{SUFFIX}");
    }
    // Only reachable for School names near the 253 limit: keep it unique with a digest.
    let digest = Uuid::new_v5(&school_id_namespace(), school_name.as_bytes())
        .simple()
        .to_string();
    let keep = 253 - SUFFIX.len() - 9;
    let prefix = school_name[..keep].trim_end_matches(['-', '.']);
    format!("{prefix}-{}{SUFFIX}", &digest[..8])
}

/// The self-service tenant's two roles (see `selfservice`).
pub const SELF_SERVICE_ROLES: [&str; 2] = ["edumind_selfservice_owner", "edumind_selfservice_app"];

/// Whether `name` is something [`school_database`] (or the self-service names) could have
/// produced: the last line of defence before a name reaches SQL text.
pub fn is_generated_identifier(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_IDENTIFIER_BYTES
        && (name.starts_with(SCHOOL_PREFIX)
            || name == SELF_SERVICE_DATABASE
            || SELF_SERVICE_ROLES.contains(&name))
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// Errors from quoting: a value that must never reach SQL text.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum QuoteError {
    #[error("refusing to quote an identifier the operator did not generate")]
    NotGenerated,
    #[error("refusing to quote a literal containing a NUL byte")]
    Nul,
}

/// Quotes a generated identifier for SQL text (`"name"`, inner quotes doubled). Refuses
/// anything [`is_generated_identifier`] rejects, so raw input can never get here.
pub fn quote_ident(name: &str) -> Result<String, QuoteError> {
    if !is_generated_identifier(name) {
        return Err(QuoteError::NotGenerated);
    }
    Ok(format!("\"{}\"", name.replace('"', "\"\"")))
}

/// Quotes a string literal for DDL that cannot take bind parameters (comments, password
/// verifiers). Works whatever `standard_conforming_strings` is: with a backslash present
/// it uses the `E'..'` form with backslashes doubled, like PostgreSQL's `quote_literal`.
pub fn quote_literal(value: &str) -> Result<String, QuoteError> {
    if value.contains('\0') {
        return Err(QuoteError::Nul);
    }
    let body = value.replace('\'', "''");
    Ok(if body.contains('\\') {
        format!("E'{}'", body.replace('\\', "\\\\"))
    } else {
        format!("'{body}'")
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::collections::HashSet;

    fn id(n: u128) -> Uuid {
        Uuid::from_u128(n)
    }

    #[test]
    fn names_are_short_safe_and_readable() {
        let fifty = "Ä".repeat(10) + &"long code ".repeat(4);
        assert_eq!(fifty.chars().count(), 50);
        for code in [
            "LHS",
            "Lincoln High",
            "O'Brien \"Academy\"; DROP DATABASE x; --",
            "École Saint-Éloi",
            "学校",
            "  spaces  ",
            &fifty,
            &"z".repeat(50),
        ] {
            let name = school_database(code, id(42));
            assert!(name.len() <= MAX_IDENTIFIER_BYTES, "{name} too long");
            assert!(is_generated_identifier(&name), "{name}");
            assert!(name.ends_with(&id(42).simple().to_string()));
            assert_eq!(name, school_database(code, id(42)), "deterministic");
        }
        assert_eq!(
            school_database("Lincoln High", id(1)),
            "edumind_school_lincoln_high_00000000000000000000000000000001"
        );
        assert_eq!(code_slug("学校"), "x");
        assert_eq!(code_slug("O'Brien--Academy"), "o_brien_academy");
        assert_eq!(school_database(&"z".repeat(50), id(1)).len(), 63);
    }

    #[test]
    fn names_are_unique_per_school_even_when_codes_fold_alike() {
        let codes = ["a b", "a-b", "A_B", "a  b", "á b"];
        let names: HashSet<_> = codes
            .iter()
            .enumerate()
            .map(|(i, c)| school_database(c, id(i as u128)))
            .collect();
        assert_eq!(names.len(), codes.len());
    }

    #[test]
    fn derived_ids_are_stable_and_distinct() {
        let a = derived_school_id("ns", "lincoln");
        assert_eq!(a, derived_school_id("ns", "lincoln"));
        assert_ne!(a, derived_school_id("other", "lincoln"));
        assert_ne!(a, derived_school_id("ns", "lincoln2"));
        assert_eq!(a.get_version_num(), 5);
        // Pinned: changing the derivation would orphan every existing database.
        assert_eq!(
            derived_school_id("default", "lincoln").to_string(),
            Uuid::new_v5(
                &Uuid::new_v5(&Uuid::NAMESPACE_URL, b"https://edumind.ai/schools"),
                b"default/lincoln"
            )
            .to_string()
        );
    }

    #[test]
    fn quoting_refuses_raw_input_and_escapes_literals() {
        assert_eq!(
            quote_ident("edumind_school_a_1").unwrap(),
            "\"edumind_school_a_1\""
        );
        assert_eq!(
            quote_ident(SELF_SERVICE_DATABASE).unwrap(),
            "\"edumind_selfservice\""
        );
        for bad in [
            "",
            "postgres",
            "edumind_school_\"x",
            "edumind_school_A",
            &"edumind_school_".repeat(5),
        ] {
            assert_eq!(quote_ident(bad), Err(QuoteError::NotGenerated), "{bad}");
        }
        assert_eq!(quote_literal("it's").unwrap(), "'it''s'");
        assert_eq!(quote_literal(r"a\'b").unwrap(), r"E'a\\''b'");
        assert_eq!(quote_literal("a\0b"), Err(QuoteError::Nul));
    }

    #[test]
    fn secret_names_fit_kubernetes() {
        assert_eq!(secret_name("lincoln"), "lincoln-connection");
        let long = "a".repeat(253);
        let s = secret_name(&long);
        assert!(s.len() <= 253 && s.ends_with("-connection"));
        assert_ne!(s, secret_name(&"a".repeat(252)));
    }
}
