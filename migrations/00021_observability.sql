-- Observability: what the metrics endpoint reads across tenants, and the
-- trace context an outbox row carries from the request that wrote it to the
-- job that sends it.
--
--   outbox.trace_parent  the W3C traceparent of the span that wrote the row
--                        (filled by its default from the transaction-local
--                        setting app.traceparent, which the application sets
--                        only while tracing is on); no personal data.
--   outbox_pending       returns it too, so the relay continues the trace.
--   outbox_lag()         seconds since the oldest row the relay has not
--                        handed to the queue yet (0 when none): a number, no
--                        tenant, no id.
--   box_status_counts()  boxes online and offline over all tenants (deleted
--                        boxes left out): two numbers.
--
-- Both functions run as keyrelay_relay, whose new reach is column-level:
-- outbox.trace_parent, box_status (tenant_id, box_id, online) and boxes
-- (tenant_id, id, deleted_at).
--
-- Zero downtime: the column is nullable with a stable default (no table
-- rewrite), and outbox_pending only gains a trailing column, which the
-- relay of the previous release does not select.

-- +goose Up
ALTER TABLE outbox ADD COLUMN trace_parent text
    DEFAULT NULLIF(current_setting('app.traceparent', true), '')
    CHECK (length(trace_parent) <= 128);

GRANT SELECT (trace_parent) ON outbox TO keyrelay_relay;
DROP FUNCTION outbox_pending(integer);
CREATE FUNCTION outbox_pending(p_limit integer)
RETURNS TABLE (tenant_id uuid, id uuid, priority text, not_before timestamptz, schedule_rev integer, trace_parent text)
LANGUAGE sql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT o.tenant_id, o.id, o.priority, o.not_before, o.schedule_rev, o.trace_parent FROM public.outbox o
    WHERE o.relayed_at IS NULL
    ORDER BY o.created_at
    LIMIT least(greatest(p_limit, 1), 5000)
    FOR UPDATE SKIP LOCKED
$$;
ALTER FUNCTION outbox_pending(integer) OWNER TO keyrelay_relay;
REVOKE ALL ON FUNCTION outbox_pending(integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION outbox_pending(integer) TO keyrelay_app;

-- Served by the partial index outbox_pending (created_at WHERE relayed_at
-- IS NULL): one index entry read however large the outbox grows.
CREATE FUNCTION outbox_lag()
RETURNS double precision
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT coalesce(extract(epoch FROM now() - min(o.created_at)), 0)::double precision
    FROM public.outbox o WHERE o.relayed_at IS NULL
$$;
ALTER FUNCTION outbox_lag() OWNER TO keyrelay_relay;
REVOKE ALL ON FUNCTION outbox_lag() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION outbox_lag() TO keyrelay_app;

GRANT SELECT (tenant_id, box_id, online) ON box_status TO keyrelay_relay;
CREATE POLICY relay_read ON box_status FOR SELECT TO keyrelay_relay USING (true);
GRANT SELECT (tenant_id, id, deleted_at) ON boxes TO keyrelay_relay;
CREATE POLICY relay_read ON boxes FOR SELECT TO keyrelay_relay USING (true);

CREATE FUNCTION box_status_counts()
RETURNS TABLE (online bigint, offline bigint)
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT count(*) FILTER (WHERE s.online), count(*) FILTER (WHERE NOT s.online)
    FROM public.box_status s
    JOIN public.boxes b ON b.tenant_id = s.tenant_id AND b.id = s.box_id
    WHERE b.deleted_at IS NULL
$$;
ALTER FUNCTION box_status_counts() OWNER TO keyrelay_relay;
REVOKE ALL ON FUNCTION box_status_counts() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION box_status_counts() TO keyrelay_app;

-- +goose Down
DROP FUNCTION box_status_counts();
DROP POLICY relay_read ON boxes;
REVOKE SELECT (tenant_id, id, deleted_at) ON boxes FROM keyrelay_relay;
DROP POLICY relay_read ON box_status;
REVOKE SELECT (tenant_id, box_id, online) ON box_status FROM keyrelay_relay;
DROP FUNCTION outbox_lag();
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
REVOKE SELECT (trace_parent) ON outbox FROM keyrelay_relay;
ALTER TABLE outbox DROP COLUMN trace_parent;
