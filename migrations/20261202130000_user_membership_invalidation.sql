-- The data plane caches, per school user, whether a token's `sub` is an active user of
-- that school and with which role (docs/dataplane.md, "Identity beyond the token"), under
-- the Redis key `edumind:{<school_id>}:user:{id}:member` (braces: the tenant's hash tag). Any change to a user row -- through
-- the API or by hand (`UPDATE users SET is_active = false`) -- records that key in the
-- cache invalidation outbox in the same transaction, so every data plane replica drops the
-- cached answer within one replay interval, and a missed delete is replayed, never lost.
-- Not a table of the storage spec: bookkeeping of the data plane, like the outbox itself.
CREATE FUNCTION edumind_user_membership_changed() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP IN ('UPDATE', 'DELETE') AND OLD.school_id IS NOT NULL THEN
        INSERT INTO cache_invalidations (cache_key)
        VALUES ('edumind:{' || OLD.school_id::text || '}:user:' || OLD.id::text || ':member');
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') AND NEW.school_id IS NOT NULL THEN
        INSERT INTO cache_invalidations (cache_key)
        VALUES ('edumind:{' || NEW.school_id::text || '}:user:' || NEW.id::text || ':member');
    END IF;
    RETURN NULL;
END;
$$;

CREATE TRIGGER users_membership_cache
    AFTER INSERT OR UPDATE OR DELETE ON users
    FOR EACH ROW EXECUTE FUNCTION edumind_user_membership_changed();
