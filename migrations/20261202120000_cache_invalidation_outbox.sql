-- The data plane's cache invalidation outbox (docs/dataplane.md, "Caching"). Not a table
-- of the storage spec: bookkeeping of the data plane, like _sqlx_migrations is of sqlx.
--
-- A write that makes cached values stale records their Redis keys here, in the same
-- transaction as the write. After the commit the data plane deletes the keys from Redis;
-- rows are removed only after their keys were deleted, so a crash, a Redis outage or a
-- restart between the commit and the delete leaves the row, and whichever data plane
-- replica looks next (on start-up, after a Redis outage, or every few seconds) deletes
-- the keys before it reads that tenant's cache again.
CREATE TABLE cache_invalidations (
    id         bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    cache_key  text        NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
