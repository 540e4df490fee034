-- Delivery in batches: the relay hands a worker one task per tenant and
-- priority holding up to fifty messages, instead of one task per message.
-- A message may then sit in two tasks (the relay enqueued a batch, crashed
-- before marking the rows, and the next pass made a batch of another
-- composition), so the task id no longer keeps a message from being sent
-- twice. A worker therefore claims the messages it is about to send:
--
--   claimed_by        an id of the worker's run, unique per attempt
--   claim_expires_at  the lease: past it, the claimer is presumed dead
--
-- A claim is taken only on a queued message at the task's revision that no
-- live claim holds, and dropped when the outcome is recorded. A claim left
-- by a worker that died mid-send expires; outbox_reclaim then hands its
-- message back to the relay.

-- +goose Up
ALTER TABLE outbox
    ADD COLUMN claimed_by       text,
    ADD COLUMN claim_expires_at timestamptz,
    ADD CONSTRAINT outbox_claim CHECK ((claimed_by IS NULL) = (claim_expires_at IS NULL));

-- Only claims in flight are indexed: the sweep reads a handful of rows
-- however large the outbox grows.
CREATE INDEX outbox_claims ON outbox (claim_expires_at) WHERE claimed_by IS NOT NULL;

GRANT SELECT (status, claimed_by, claim_expires_at), UPDATE (claimed_by, claim_expires_at) ON outbox TO keyrelay_relay;

-- Drops the claims whose lease ran out, and puts their messages that are
-- still queued back in the relay's hands. Rows another transaction holds
-- are left for the next sweep.
CREATE FUNCTION outbox_reclaim(p_limit integer)
RETURNS integer
LANGUAGE sql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    WITH stale AS (
        SELECT o.tenant_id, o.id FROM public.outbox o
        WHERE o.claimed_by IS NOT NULL AND o.claim_expires_at < now()
        ORDER BY o.claim_expires_at
        LIMIT least(greatest(p_limit, 1), 5000)
        FOR UPDATE SKIP LOCKED
    ), freed AS (
        UPDATE public.outbox o
        SET claimed_by = NULL, claim_expires_at = NULL,
            relayed_at = CASE WHEN o.status = 'queued' THEN NULL ELSE o.relayed_at END
        FROM stale
        WHERE o.tenant_id = stale.tenant_id AND o.id = stale.id
        RETURNING o.status
    )
    SELECT count(*) FILTER (WHERE status = 'queued')::integer FROM freed
$$;
ALTER FUNCTION outbox_reclaim(integer) OWNER TO keyrelay_relay;
REVOKE ALL ON FUNCTION outbox_reclaim(integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION outbox_reclaim(integer) TO keyrelay_app;

-- +goose Down
DROP FUNCTION outbox_reclaim(integer);
REVOKE SELECT (status, claimed_by, claim_expires_at), UPDATE (claimed_by, claim_expires_at) ON outbox FROM keyrelay_relay;
DROP INDEX outbox_claims;
ALTER TABLE outbox DROP CONSTRAINT outbox_claim, DROP COLUMN claimed_by, DROP COLUMN claim_expires_at;
