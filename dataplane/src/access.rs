//! Who may reach which tenant, and the SQL that carries the caller into PostgreSQL.
//!
//! Rules (spec 3.2, design brief "Data plane"):
//! * `SystemAdmin`, `BusinessAdmin`: any tenant, named explicitly in the path.
//! * `CourseAdmin`: any tenant, global content only (courses, questions, assessments).
//! * `Student`, `Teacher`, `SchoolAdmin` with a school id: only that school's tenant.
//! * `Student` without a school id: only the self-service tenant, and there only their own
//!   rows — enforced by row-level security, not only by our filters.
//!
//! A tenant the caller may not reach answers exactly like a tenant that does not exist.

use std::sync::Arc;

use uuid::Uuid;

use crate::auth::{AuthError, Principal, UserRole};
use crate::problem::Problem;
use crate::tenants::{Tenant, TenantDirectory, TenantId};

/// What the caller may do inside one tenant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// System or business admin.
    Admin,
    /// Course admin: global content in any tenant.
    Content,
    /// A member of the school that owns this tenant.
    Member(UserRole),
    /// A self-service student (self-service tenant only).
    SelfService,
}

impl Access {
    /// Reads everything in the tenant (admins, teachers, school admins).
    pub fn reads_all(self) -> bool {
        matches!(
            self,
            Access::Admin | Access::Member(UserRole::Teacher | UserRole::SchoolAdmin)
        )
    }

    /// Manages the school's users and record.
    pub fn manages_school(self) -> bool {
        matches!(self, Access::Admin | Access::Member(UserRole::SchoolAdmin))
    }

    /// Only their own student rows.
    pub fn is_student(self) -> bool {
        matches!(
            self,
            Access::SelfService | Access::Member(UserRole::Student)
        )
    }

    /// May write global content (courses, questions, assessments).
    pub fn writes_content(self) -> bool {
        matches!(self, Access::Admin | Access::Content)
    }
}

/// Decides whether `p` may reach `tenant`. `None` means "answer 404".
pub fn access_for(p: &Principal, tenant: &TenantId) -> Option<Access> {
    match p.role {
        UserRole::SystemAdmin | UserRole::BusinessAdmin => Some(Access::Admin),
        UserRole::CourseAdmin => Some(Access::Content),
        role => match (p.school_id, tenant) {
            (Some(own), TenantId::School(t)) if own == *t => Some(Access::Member(role)),
            (None, TenantId::SelfService) if role == UserRole::Student => Some(Access::SelfService),
            _ => None,
        },
    }
}

/// Resolves the `{tenant}` path segment for `p`: unknown, malformed and forbidden tenants
/// all give the same 404.
pub fn resolve(
    dir: &TenantDirectory,
    p: &Principal,
    raw: &str,
) -> Result<(Arc<Tenant>, Access), Problem> {
    let id: TenantId = raw.parse().map_err(|_| Problem::not_found())?;
    let access = access_for(p, &id).ok_or_else(Problem::not_found)?;
    let tenant = dir.get(&id).ok_or_else(Problem::not_found)?;
    Ok((tenant, access))
}

/// The two values every scoped statement binds first: `$1` the caller's user id, `$2`
/// `on` when row-level security should let a platform admin through.
pub fn scope_params(p: &Principal, access: Access) -> (String, &'static str) {
    (
        p.user_id.to_string(),
        if access == Access::Admin { "on" } else { "off" },
    )
}

/// Wraps a query that returns one `doc` (jsonb) column so that PostgreSQL first sets
/// `edumind.user_id` / `edumind.admin` for the transaction (parameters `$1`, `$2`) and
/// only then runs the query — in one statement, so in the same round trip. The lateral
/// reference to `ctx` makes the planner evaluate `ctx` (the `set_config` calls) before
/// the inner scan, whose row-level-security checks read those settings.
#[macro_export]
macro_rules! scoped {
    ($inner:expr) => {
        concat!(
            "SELECT q.doc FROM (SELECT set_config('edumind.user_id', $1, true) AS uid, ",
            "set_config('edumind.admin', $2, true) AS adm) ctx ",
            "CROSS JOIN LATERAL (SELECT i.doc FROM (",
            $inner,
            ") i WHERE ctx.uid IS NOT NULL AND ctx.adm IS NOT NULL OFFSET 0) q"
        )
    };
}

// ---- identity beyond the token (issue 12 §4) ----

/// How long a school membership answer stays cached. Changes to the user reach the
/// cache sooner: the `users` trigger records the key in the outbox (migration
/// `20261202130000`), and every replica that serves the school replays it within
/// `outbox::REPLAY_INTERVAL` (2 s) if it read the school in the last round and holds an
/// idle connection to it, within `outbox::REPLAY_SWEEP` plus one round (32 s) otherwise,
/// and before its next read if it has not read the school for a sweep.
pub const MEMBER_TTL: std::time::Duration = std::time::Duration::from_secs(10 * 60);

static MEMBER_CHECK: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);

/// Turns the membership check off (`false`) or back on. Only for measuring its cost
/// against the same path without it in one run (`tests/load.rs`); off, deactivated users
/// and foreign `sub`s keep their access.
#[doc(hidden)]
pub fn set_member_check(on: bool) {
    MEMBER_CHECK.store(on, std::sync::atomic::Ordering::SeqCst);
}

/// The cache key of `user`'s membership of `school`; the `users` trigger writes the same
/// text into the outbox.
pub fn member_key(school: Uuid, user: Uuid) -> String {
    crate::cache::key(&TenantId::School(school), &format!("user:{user}:member"))
}

/// Whether a token is backed by a user of its school: for a Student, Teacher or
/// SchoolAdmin token with a `school_id`, `sub` must be a user row of that school's
/// database with `is_active` and the token's role. Platform roles (their `school_id` is
/// ignored anyway) and self-service students (row-level security ties them to their own
/// rows) are not looked up. The answer is cached in Redis ([`member_key`],
/// [`MEMBER_TTL`]), through the same cache-aside path as every read: Redis down → asked
/// from PostgreSQL. A school the directory does not hold, an unknown `sub`, a
/// deactivated user or another role → [`AuthError::NotMember`]; no database →
/// [`AuthError::Unavailable`].
pub async fn verify_member(s: &crate::state::AppState, p: &Principal) -> Result<(), AuthError> {
    let Some(school) = p.school_id else {
        return Ok(());
    };
    if !matches!(
        p.role,
        UserRole::Student | UserRole::Teacher | UserRole::SchoolAdmin
    ) || !MEMBER_CHECK.load(std::sync::atomic::Ordering::Relaxed)
    {
        return Ok(());
    }
    let tenant = s
        .directory
        .get(&TenantId::School(school))
        .ok_or(AuthError::NotMember)?;
    let key = member_key(school, p.user_id);
    let text = s
        .cache
        .get_or_load(
            "member",
            || key,
            MEMBER_TTL,
            || async {
                let mut conn = s.pools.acquire(&tenant).await.map_err(Problem::pool)?;
                let row: Option<serde_json::Value> = sqlx::query_scalar(
                    "SELECT jsonb_build_object('role', role, 'active', is_active) FROM users \
                 WHERE id = $1 AND school_id = $2",
                )
                .bind(p.user_id)
                .bind(school)
                .fetch_optional(&mut *conn)
                .await
                .map_err(Problem::database)?;
                Ok::<String, Problem>(row.map_or_else(|| "null".to_owned(), |r| r.to_string()))
            },
            String::clone,
            Ok,
        )
        .await
        .map_err(|_| AuthError::Unavailable)?;
    let member: serde_json::Value =
        serde_json::from_str(&text).map_err(|_| AuthError::Unavailable)?;
    let active = member.get("active") == Some(&serde_json::Value::Bool(true));
    let same_role = member.get("role").and_then(serde_json::Value::as_i64) == Some(p.role as i64);
    if active && same_role {
        Ok(())
    } else {
        Err(AuthError::NotMember)
    }
}

/// Parses a UUID path segment; malformed ids are "not found".
pub fn path_uuid(raw: &str) -> Result<Uuid, Problem> {
    Uuid::parse_str(raw).map_err(|_| Problem::not_found())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_matrix() {
        let school = Uuid::new_v4();
        let other = TenantId::School(Uuid::new_v4());
        let own = TenantId::School(school);
        let p = |role, school_id| Principal {
            user_id: Uuid::new_v4(),
            role,
            school_id,
        };
        for role in [UserRole::SystemAdmin, UserRole::BusinessAdmin] {
            assert_eq!(access_for(&p(role, None), &other), Some(Access::Admin));
            assert_eq!(
                access_for(&p(role, None), &TenantId::SelfService),
                Some(Access::Admin)
            );
        }
        for role in [UserRole::Student, UserRole::Teacher, UserRole::SchoolAdmin] {
            assert_eq!(
                access_for(&p(role, Some(school)), &own),
                Some(Access::Member(role))
            );
            assert_eq!(access_for(&p(role, Some(school)), &other), None);
            assert_eq!(
                access_for(&p(role, Some(school)), &TenantId::SelfService),
                None
            );
        }
        assert_eq!(
            access_for(&p(UserRole::Student, None), &TenantId::SelfService),
            Some(Access::SelfService)
        );
        assert_eq!(access_for(&p(UserRole::Student, None), &own), None);
        assert_eq!(
            access_for(&p(UserRole::Teacher, None), &TenantId::SelfService),
            None
        );
    }
}
