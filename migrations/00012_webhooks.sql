-- Webhooks: a tenant's endpoints, the deliveries of each event to each
-- subscribed endpoint, and every attempt at one; and the keys' overdue mark.
--
-- A delivery row is written in the transaction of the change it reports, so
-- an event exists exactly when its change committed. A dispatcher (any
-- replica) claims due deliveries through webhook_claim and sends them;
-- claiming pushes next_attempt_at forward by a lease, so a dispatcher that
-- dies mid-send leaves the delivery due again once the lease ends.
--
-- Two more narrowly granted cross-tenant paths, owned by keyrelay_relay,
-- which hands due background work to workers:
--
--   webhook_claim  sees the ids, status and due time of deliveries;
--   keys_overdue   sees the ids, state and due time of keys that are out.

-- +goose Up
CREATE TABLE webhook_endpoints (
    tenant_id     uuid NOT NULL REFERENCES tenants (tenant_id) ON DELETE CASCADE,
    id            uuid NOT NULL,
    url           text NOT NULL CHECK (length(url) BETWEEN 8 AND 2048),
    -- Empty: every event, including those added later.
    events        jsonb NOT NULL DEFAULT '[]' CHECK (jsonb_typeof(events) = 'array'),
    description   text NOT NULL DEFAULT '' CHECK (length(description) <= 200),
    secret_sealed bytea NOT NULL,
    created_by    text NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    disabled_at   timestamptz,
    PRIMARY KEY (tenant_id, id)
);

CREATE TABLE webhook_deliveries (
    tenant_id       uuid NOT NULL,
    id              uuid NOT NULL,
    endpoint_id     uuid NOT NULL,
    -- One per event, the same for every endpoint: what receivers dedupe on.
    event_id        uuid NOT NULL,
    event           text NOT NULL CHECK (length(event) <= 64),
    -- The exact bytes signed and sent on every attempt.
    payload         bytea NOT NULL CHECK (octet_length(payload) <= 65536),
    status          text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'delivered', 'failed')),
    attempts        integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    claim           uuid,
    last_status     integer,
    last_error      text CHECK (length(last_error) <= 500),
    created_at      timestamptz NOT NULL DEFAULT now(),
    delivered_at    timestamptz,
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, id),
    UNIQUE (tenant_id, endpoint_id, event_id),
    FOREIGN KEY (tenant_id, endpoint_id) REFERENCES webhook_endpoints (tenant_id, id)
);
-- The dispatcher's scan: only pending rows, however many were delivered.
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at) WHERE status = 'pending';
CREATE INDEX webhook_deliveries_endpoint ON webhook_deliveries (tenant_id, endpoint_id, id);

CREATE TABLE webhook_attempts (
    tenant_id   uuid NOT NULL,
    delivery_id uuid NOT NULL,
    n           integer NOT NULL CHECK (n >= 1),
    at          timestamptz NOT NULL,
    duration_ms integer NOT NULL,
    status_code integer,
    error       text CHECK (length(error) <= 500),
    outcome     text NOT NULL CHECK (outcome IN ('delivered', 'retry', 'failed')),
    PRIMARY KEY (tenant_id, delivery_id, n),
    FOREIGN KEY (tenant_id, delivery_id) REFERENCES webhook_deliveries (tenant_id, id) ON DELETE CASCADE
);

-- +goose StatementBegin
DO $$
DECLARE t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['webhook_endpoints', 'webhook_deliveries', 'webhook_attempts'] LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', t);
        EXECUTE format($p$CREATE POLICY tenant_isolation ON %I
            USING (tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::uuid)
            WITH CHECK (tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::uuid)$p$, t);
    END LOOP;
END
$$;
-- +goose StatementEnd
GRANT SELECT, INSERT, UPDATE ON webhook_endpoints, webhook_deliveries TO keyrelay_app;
GRANT SELECT, INSERT ON webhook_attempts TO keyrelay_app;

-- Overdue: when the owner was told that the key is overdue. A key is due an
-- alert while it is out past out_until and no alert was sent after
-- out_until: a new pickup (a later out_until) or an end moved past the
-- alert makes a new incident, and nothing needs resetting.
ALTER TABLE keys ADD COLUMN overdue_alerted_at timestamptz;
CREATE INDEX keys_overdue ON keys (out_until)
    WHERE state = 'out' AND deleted_at IS NULL AND out_until IS NOT NULL
      AND (overdue_alerted_at IS NULL OR overdue_alerted_at < out_until);

-- The dispatcher's path.
GRANT SELECT (tenant_id, id, status, next_attempt_at, claim), UPDATE (next_attempt_at, claim) ON webhook_deliveries TO keyrelay_relay;
CREATE POLICY relay_read ON webhook_deliveries FOR SELECT TO keyrelay_relay USING (true);
CREATE POLICY relay_claim ON webhook_deliveries FOR UPDATE TO keyrelay_relay USING (true) WITH CHECK (true);

-- Claims up to p_limit due deliveries for p_lease and returns them with
-- their claim token; rows another dispatcher is claiming are skipped.
CREATE FUNCTION webhook_claim(p_limit integer, p_lease interval)
RETURNS TABLE (tenant_id uuid, id uuid, claim uuid)
LANGUAGE sql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    WITH due AS (
        SELECT d.tenant_id, d.id FROM public.webhook_deliveries d
        WHERE d.status = 'pending' AND d.next_attempt_at <= now()
        ORDER BY d.next_attempt_at
        LIMIT least(greatest(p_limit, 1), 500)
        FOR UPDATE SKIP LOCKED
    )
    UPDATE public.webhook_deliveries d
    SET next_attempt_at = now() + least(greatest(p_lease, interval '10 seconds'), interval '1 hour'),
        claim = gen_random_uuid()
    FROM due WHERE d.tenant_id = due.tenant_id AND d.id = due.id
    RETURNING d.tenant_id, d.id, d.claim
$$;

-- The overdue sweep's path.
GRANT SELECT (tenant_id, id, state, deleted_at, out_until, overdue_alerted_at) ON keys TO keyrelay_relay;
CREATE POLICY relay_read ON keys FOR SELECT TO keyrelay_relay USING (true);

-- Keys out past their access's end that no alert has covered yet, the
-- longest overdue first. The sweep checks each again in its tenant's
-- transaction before alerting.
CREATE FUNCTION keys_overdue(p_limit integer)
RETURNS TABLE (tenant_id uuid, id uuid)
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT k.tenant_id, k.id FROM public.keys k
    WHERE k.state = 'out' AND k.deleted_at IS NULL AND k.out_until IS NOT NULL
      AND (k.overdue_alerted_at IS NULL OR k.overdue_alerted_at < k.out_until)
      AND k.out_until < now()
    ORDER BY k.out_until
    LIMIT least(greatest(p_limit, 1), 1000)
$$;

ALTER FUNCTION webhook_claim(integer, interval) OWNER TO keyrelay_relay;
ALTER FUNCTION keys_overdue(integer) OWNER TO keyrelay_relay;
REVOKE ALL ON FUNCTION webhook_claim(integer, interval), keys_overdue(integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION webhook_claim(integer, interval), keys_overdue(integer) TO keyrelay_app;

-- +goose Down
DROP FUNCTION keys_overdue(integer), webhook_claim(integer, interval);
DROP POLICY relay_read ON keys;
REVOKE SELECT (tenant_id, id, state, deleted_at, out_until, overdue_alerted_at) ON keys FROM keyrelay_relay;
DROP INDEX keys_overdue;
ALTER TABLE keys DROP COLUMN overdue_alerted_at;
DROP TABLE webhook_attempts;
DROP TABLE webhook_deliveries;
DROP TABLE webhook_endpoints;
