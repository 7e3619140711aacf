//! Row-level security for the shared self-service database.
//!
//! [`apply_policies`] enables and forces RLS on all thirteen tables and the data plane's
//! cache invalidation outbox, installs the policies
//! in `rls/selfservice.sql`, and grants the application role (which must not own
//! the tables) exactly the privileges the data plane uses. The operator calls it after
//! migrating `edumind_selfservice`; it is idempotent.

use sqlx::postgres::PgConnection;
use sqlx::{AssertSqlSafe, Executor};

/// The policy SQL (functions, RLS switches, policies). Identifier-free.
pub const POLICIES_SQL: &str = include_str!("rls/selfservice.sql");

/// The tables the data plane may write in the self-service database. Content (courses,
/// questions, assessments) is written by platform admins only: the `edumind_admin` policy
/// restricts writes, and a trigger keeps non-admin updates of questions to the answer
/// counters (see `rls/selfservice.sql`). A change here must also change that file, whose
/// hash is the installed policy version the operator compares.
const WRITABLE: &[&str] = &[
    "users",
    "students",
    "student_assessments",
    "student_responses",
    "courses",
    "questions",
    "assessments",
    "cache_invalidations",
];

/// The tables platform admins may delete from (content; the `edumind_admin` policy is
/// the only one that admits a DELETE), and the cache outbox the data plane's replay
/// empties (as admin).
const DELETABLE: &[&str] = &["courses", "questions", "assessments", "cache_invalidations"];

/// Quotes a PostgreSQL identifier: doubles embedded quotes and wraps it in quotes. The one
/// place identifiers are put into SQL text in this crate.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Applies the self-service policies and grants `app_role` its privileges.
pub async fn apply_policies(conn: &mut PgConnection, app_role: &str) -> Result<(), sqlx::Error> {
    let role = quote_ident(app_role);
    conn.execute(POLICIES_SQL).await?;
    let mut grants = vec![
        format!("GRANT USAGE ON SCHEMA public TO {role}"),
        format!("GRANT SELECT ON ALL TABLES IN SCHEMA public TO {role}"),
        format!("REVOKE SELECT ON TABLE _sqlx_migrations FROM {role}"),
    ];
    for t in WRITABLE {
        grants.push(format!(
            "GRANT INSERT, UPDATE ON TABLE {} TO {role}",
            quote_ident(t)
        ));
    }
    for t in DELETABLE {
        grants.push(format!(
            "GRANT DELETE ON TABLE {} TO {role}",
            quote_ident(t)
        ));
    }
    for g in grants {
        // Only generated text reaches here: fixed keywords, fixed table names, and the
        // role name through `quote_ident`.
        conn.execute(AssertSqlSafe(g)).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quote_ident_escapes_quotes() {
        assert_eq!(quote_ident("app"), "\"app\"");
        assert_eq!(quote_ident("a\"b; DROP"), "\"a\"\"b; DROP\"");
    }
}
