-- Row-level security for the shared self-service database (edumind_selfservice).
--
-- The data plane connects as an application role that does NOT own the tables, so
-- these policies bind it. Each statement (or transaction) carries who is asking:
--   set_config('edumind.user_id', '<users.id>', true)   -- the caller
--   set_config('edumind.admin',   'on' | 'off',   true)  -- platform admins (spec 3.2: bypass)
-- Unset settings read as NULL, which matches nothing: a query that forgot to say who
-- is asking sees no student rows at all (fail closed).
-- FORCE makes the policies bind the table owner too; only superusers and BYPASSRLS
-- roles are exempt. Re-running this file is harmless.
--
-- Privileges (granted to the application role by apply_policies, kept in step with this
-- file because its hash is the policy version the operator records): SELECT on all
-- tables; INSERT, UPDATE on users, students, student_assessments, student_responses,
-- courses, questions, assessments, cache_invalidations; DELETE on courses, questions,
-- assessments, cache_invalidations (no policy but edumind_admin admits a DELETE). Content writes are admin-only through the
-- edumind_admin policy; the trigger at the end limits everyone else's question updates
-- to the answer counters.

CREATE OR REPLACE FUNCTION edumind_current_user_id() RETURNS uuid
    LANGUAGE sql STABLE
    AS $$ SELECT nullif(current_setting('edumind.user_id', true), '')::uuid $$;

CREATE OR REPLACE FUNCTION edumind_is_admin() RETURNS boolean
    LANGUAGE sql STABLE
    AS $$ SELECT coalesce(current_setting('edumind.admin', true), '') = 'on' $$;

-- The caller's own student ids (runs as the caller, so the students policy applies too).
CREATE OR REPLACE FUNCTION edumind_current_student_ids() RETURNS SETOF uuid
    LANGUAGE sql STABLE
    AS $$ SELECT id FROM students WHERE user_id = edumind_current_user_id() $$;

DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['users', 'students', 'student_assessments', 'student_responses',
                             'schools', 'classes', 'courses', 'questions', 'assessments',
                             'workflow_executions', 'circuit_breaker_states',
                             'routing_decisions', 'routing_statistics']
    LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', t);
        EXECUTE format('DROP POLICY IF EXISTS edumind_admin ON %I', t);
        EXECUTE format('CREATE POLICY edumind_admin ON %I USING (edumind_is_admin()) '
                       'WITH CHECK (edumind_is_admin())', t);
    END LOOP;
END
$$;

-- A self-service student: their own user row and student row.
DROP POLICY IF EXISTS edumind_own ON users;
CREATE POLICY edumind_own ON users
    USING (id = edumind_current_user_id())
    WITH CHECK (id = edumind_current_user_id());

DROP POLICY IF EXISTS edumind_own ON students;
CREATE POLICY edumind_own ON students
    USING (user_id = edumind_current_user_id() AND school_id IS NULL)
    WITH CHECK (user_id = edumind_current_user_id() AND school_id IS NULL);

-- Their attempts and responses.
DROP POLICY IF EXISTS edumind_own ON student_assessments;
CREATE POLICY edumind_own ON student_assessments
    USING (student_id IN (SELECT edumind_current_student_ids()))
    WITH CHECK (student_id IN (SELECT edumind_current_student_ids()));

DROP POLICY IF EXISTS edumind_own ON student_responses;
CREATE POLICY edumind_own ON student_responses
    USING (student_id IN (SELECT edumind_current_student_ids()))
    WITH CHECK (student_id IN (SELECT edumind_current_student_ids()));

-- Global content is readable by every signed-in caller, writable only by admins.
DROP POLICY IF EXISTS edumind_read ON courses;
CREATE POLICY edumind_read ON courses FOR SELECT USING (edumind_current_user_id() IS NOT NULL);
DROP POLICY IF EXISTS edumind_read ON questions;
CREATE POLICY edumind_read ON questions FOR SELECT USING (edumind_current_user_id() IS NOT NULL);
DROP POLICY IF EXISTS edumind_read ON assessments;
CREATE POLICY edumind_read ON assessments FOR SELECT
    USING (edumind_current_user_id() IS NOT NULL AND school_id IS NULL);
-- Questions count their answers when a student submits.
DROP POLICY IF EXISTS edumind_count ON questions;
CREATE POLICY edumind_count ON questions FOR UPDATE
    USING (edumind_current_user_id() IS NOT NULL)
    WITH CHECK (edumind_current_user_id() IS NOT NULL);

-- The cache invalidation outbox (data plane bookkeeping, not a spec table): every write
-- records the cache keys it makes stale, in its own transaction, so any identified caller
-- may insert; only the data plane's replay, which sets edumind.admin, reads and deletes.
ALTER TABLE cache_invalidations ENABLE ROW LEVEL SECURITY;
ALTER TABLE cache_invalidations FORCE ROW LEVEL SECURITY;
DROP POLICY IF EXISTS edumind_admin ON cache_invalidations;
CREATE POLICY edumind_admin ON cache_invalidations USING (edumind_is_admin())
    WITH CHECK (edumind_is_admin());
DROP POLICY IF EXISTS edumind_record ON cache_invalidations;
CREATE POLICY edumind_record ON cache_invalidations FOR INSERT
    WITH CHECK (edumind_current_user_id() IS NOT NULL);

-- The edumind_count policy lets any identified caller UPDATE questions (a submission
-- counts answers), and the role holds UPDATE on the whole table (admins write content):
-- non-admin updates may change only the counters.
CREATE OR REPLACE FUNCTION edumind_questions_counters_only() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
BEGIN
    IF edumind_is_admin() THEN
        RETURN NEW;
    END IF;
    IF (to_jsonb(NEW) - ARRAY['times_answered', 'times_correct', 'updated_at'])
       IS DISTINCT FROM (to_jsonb(OLD) - ARRAY['times_answered', 'times_correct', 'updated_at'])
    THEN
        RAISE EXCEPTION 'only platform admins may change question content'
            USING ERRCODE = '42501';
    END IF;
    RETURN NEW;
END
$$;
DROP TRIGGER IF EXISTS edumind_counters_only ON questions;
CREATE TRIGGER edumind_counters_only BEFORE UPDATE ON questions
    FOR EACH ROW EXECUTE FUNCTION edumind_questions_counters_only();
