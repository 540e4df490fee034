-- Scheduled messages: a message may wait until a time (a return-key
-- reminder on the day access ends), be moved or cancelled, and low-priority
-- messages wait out the tenant's quiet hours in the recipient's time zone.
-- schedule_rev grows on every move, so a task queued for an earlier time
-- finds itself stale and sends nothing.

-- +goose Up
-- The last TOTP step a user signed in with: a code is accepted once.
ALTER TABLE users ADD COLUMN totp_last_step bigint;

ALTER TABLE outbox
    ADD COLUMN not_before   timestamptz,
    ADD COLUMN time_zone    text,
    ADD COLUMN schedule_rev integer NOT NULL DEFAULT 0;
ALTER TABLE outbox DROP CONSTRAINT outbox_status_check;
ALTER TABLE outbox ADD CONSTRAINT outbox_status_check CHECK (status IN ('queued', 'sent', 'delivered', 'failed', 'canceled'));

ALTER TABLE tenants
    ADD COLUMN quiet_hours_start time,
    ADD COLUMN quiet_hours_end   time,
    ADD CONSTRAINT tenants_quiet_hours CHECK ((quiet_hours_start IS NULL) = (quiet_hours_end IS NULL));

GRANT SELECT (not_before, schedule_rev) ON outbox TO keyrelay_relay;
DROP FUNCTION outbox_pending(integer);
CREATE FUNCTION outbox_pending(p_limit integer)
RETURNS TABLE (tenant_id uuid, id uuid, priority text, not_before timestamptz, schedule_rev integer)
LANGUAGE sql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT o.tenant_id, o.id, o.priority, o.not_before, o.schedule_rev FROM public.outbox o
    WHERE o.relayed_at IS NULL
    ORDER BY o.created_at
    LIMIT least(greatest(p_limit, 1), 5000)
    FOR UPDATE SKIP LOCKED
$$;
ALTER FUNCTION outbox_pending(integer) OWNER TO keyrelay_relay;
REVOKE ALL ON FUNCTION outbox_pending(integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION outbox_pending(integer) TO keyrelay_app;

-- +goose Down
DROP FUNCTION outbox_pending(integer);
CREATE FUNCTION outbox_pending(p_limit integer)
RETURNS TABLE (tenant_id uuid, id uuid, priority text)
LANGUAGE sql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT o.tenant_id, o.id, o.priority FROM public.outbox o
    WHERE o.relayed_at IS NULL
    ORDER BY o.created_at
    LIMIT least(greatest(p_limit, 1), 5000)
    FOR UPDATE SKIP LOCKED
$$;
ALTER FUNCTION outbox_pending(integer) OWNER TO keyrelay_relay;
REVOKE ALL ON FUNCTION outbox_pending(integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION outbox_pending(integer) TO keyrelay_app;
REVOKE SELECT (not_before, schedule_rev) ON outbox FROM keyrelay_relay;
ALTER TABLE tenants DROP CONSTRAINT tenants_quiet_hours, DROP COLUMN quiet_hours_start, DROP COLUMN quiet_hours_end;
ALTER TABLE outbox DROP CONSTRAINT outbox_status_check;
ALTER TABLE outbox ADD CONSTRAINT outbox_status_check CHECK (status IN ('queued', 'sent', 'delivered', 'failed'));
ALTER TABLE outbox DROP COLUMN not_before, DROP COLUMN time_zone, DROP COLUMN schedule_rev;
ALTER TABLE users DROP COLUMN totp_last_step;
