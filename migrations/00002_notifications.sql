-- Notifications: the outbox becomes the message record (status, provider,
-- attempts), tenants choose providers per channel, and two narrowly granted
-- cross-tenant paths serve the background side:
--
--   keyrelay_relay   owns outbox_pending, outbox_mark_relayed and
--                    outbox_tenant: it may see the ids, priority and relay
--                    mark of every tenant's outbox rows, nothing else.
--   keyrelay_janitor owns janitor_sweep: it deletes sessions and reset
--                    tokens that can no longer be used, in every tenant.
--
-- The application role can only execute these functions; it gains no
-- cross-tenant read or write of its own.

-- +goose Up
ALTER TABLE tenants ADD COLUMN default_language text NOT NULL DEFAULT 'en' CHECK (default_language IN ('en', 'fr'));
ALTER TABLE users ADD COLUMN language text CHECK (language IN ('en', 'fr'));

ALTER TABLE outbox
    ADD COLUMN language            text NOT NULL DEFAULT 'en' CHECK (language IN ('en', 'fr')),
    ADD COLUMN priority            text NOT NULL DEFAULT 'default' CHECK (priority IN ('critical', 'default', 'low')),
    ADD COLUMN status              text NOT NULL DEFAULT 'queued' CHECK (status IN ('queued', 'sent', 'delivered', 'failed')),
    ADD COLUMN provider            text,
    ADD COLUMN provider_message_id text,
    ADD COLUMN attempts            integer NOT NULL DEFAULT 0,
    ADD COLUMN reason              text,
    ADD COLUMN sent_at             timestamptz,
    ADD COLUMN delivered_at        timestamptz,
    ADD COLUMN updated_at          timestamptz NOT NULL DEFAULT now();

CREATE TABLE tenant_providers (
    tenant_id         uuid NOT NULL REFERENCES tenants (tenant_id) ON DELETE CASCADE,
    channel           text NOT NULL CHECK (channel IN ('sms', 'email')),
    provider          text NOT NULL,
    settings          bytea NOT NULL,
    fallback          text,
    fallback_settings bytea,
    updated_at        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, channel),
    CHECK ((fallback IS NULL) = (fallback_settings IS NULL))
);
ALTER TABLE tenant_providers ENABLE ROW LEVEL SECURITY;
ALTER TABLE tenant_providers FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON tenant_providers
    USING (tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::uuid)
    WITH CHECK (tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::uuid);
GRANT SELECT, INSERT, UPDATE, DELETE ON tenant_providers TO keyrelay_app;

-- Wake the relay on commit: NOTIFY is delivered when the inserting
-- transaction commits, and never for one that rolls back.
-- +goose StatementBegin
CREATE FUNCTION outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('keyrelay_outbox', '');
    RETURN NULL;
END
$$;
-- +goose StatementEnd
CREATE TRIGGER outbox_notify AFTER INSERT ON outbox FOR EACH STATEMENT EXECUTE FUNCTION outbox_notify();

-- The relay's path.
GRANT SELECT (tenant_id, id, priority, created_at, relayed_at), UPDATE (relayed_at) ON outbox TO keyrelay_relay;
CREATE POLICY relay_read ON outbox FOR SELECT TO keyrelay_relay USING (true);
CREATE POLICY relay_mark ON outbox FOR UPDATE TO keyrelay_relay USING (true) WITH CHECK (true);

-- Rows not yet handed to the queue, oldest first, locked so that relays on
-- several replicas never take the same row; the lock lasts until the
-- caller's transaction ends.
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

CREATE FUNCTION outbox_mark_relayed(p_tenants uuid[], p_ids uuid[])
RETURNS integer
LANGUAGE sql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    WITH done AS (
        UPDATE public.outbox o SET relayed_at = now()
        FROM unnest(p_tenants, p_ids) AS k(tenant_id, id)
        WHERE o.tenant_id = k.tenant_id AND o.id = k.id AND o.relayed_at IS NULL
        RETURNING 1
    )
    SELECT count(*)::integer FROM done
$$;

-- Which tenant a message belongs to: provider receipts name only our
-- message id.
CREATE FUNCTION outbox_tenant(p_id uuid)
RETURNS uuid
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT o.tenant_id FROM public.outbox o WHERE o.id = p_id
$$;

ALTER FUNCTION outbox_pending(integer) OWNER TO keyrelay_relay;
ALTER FUNCTION outbox_mark_relayed(uuid[], uuid[]) OWNER TO keyrelay_relay;
ALTER FUNCTION outbox_tenant(uuid) OWNER TO keyrelay_relay;
REVOKE ALL ON FUNCTION outbox_pending(integer), outbox_mark_relayed(uuid[], uuid[]), outbox_tenant(uuid) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION outbox_pending(integer), outbox_mark_relayed(uuid[], uuid[]), outbox_tenant(uuid) TO keyrelay_app;

-- The janitor's path.
GRANT SELECT (tenant_id, id, expires_at, ended_at, last_seen_at), DELETE ON sessions TO keyrelay_janitor;
GRANT SELECT (tenant_id, id, expires_at, used_at), DELETE ON password_resets TO keyrelay_janitor;
CREATE POLICY janitor_read ON sessions FOR SELECT TO keyrelay_janitor USING (true);
CREATE POLICY janitor_delete ON sessions FOR DELETE TO keyrelay_janitor USING (true);
CREATE POLICY janitor_read ON password_resets FOR SELECT TO keyrelay_janitor USING (true);
CREATE POLICY janitor_delete ON password_resets FOR DELETE TO keyrelay_janitor USING (true);

-- Deletes what can never be used again, keeping a day of history for
-- support questions ("why was I signed out?").
-- +goose StatementBegin
CREATE FUNCTION janitor_sweep(p_idle interval)
RETURNS TABLE (sessions integer, resets integer)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE s integer; r integer;
BEGIN
    DELETE FROM public.sessions x
    WHERE x.expires_at < now() - interval '1 day'
       OR x.ended_at < now() - interval '1 day'
       OR x.last_seen_at < now() - p_idle - interval '1 day';
    GET DIAGNOSTICS s = ROW_COUNT;
    DELETE FROM public.password_resets x
    WHERE x.expires_at < now() - interval '1 day';
    GET DIAGNOSTICS r = ROW_COUNT;
    RETURN QUERY SELECT s, r;
END
$$;
-- +goose StatementEnd
ALTER FUNCTION janitor_sweep(interval) OWNER TO keyrelay_janitor;
REVOKE ALL ON FUNCTION janitor_sweep(interval) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION janitor_sweep(interval) TO keyrelay_app;

-- +goose Down
DROP FUNCTION janitor_sweep(interval);
DROP POLICY janitor_delete ON password_resets;
DROP POLICY janitor_read ON password_resets;
DROP POLICY janitor_delete ON sessions;
DROP POLICY janitor_read ON sessions;
REVOKE ALL ON sessions, password_resets FROM keyrelay_janitor;
DROP FUNCTION outbox_tenant(uuid), outbox_mark_relayed(uuid[], uuid[]), outbox_pending(integer);
DROP POLICY relay_mark ON outbox;
DROP POLICY relay_read ON outbox;
REVOKE ALL ON outbox FROM keyrelay_relay;
DROP TRIGGER outbox_notify ON outbox;
DROP FUNCTION outbox_notify();
DROP TABLE tenant_providers;
ALTER TABLE outbox DROP COLUMN language, DROP COLUMN priority, DROP COLUMN status, DROP COLUMN provider,
    DROP COLUMN provider_message_id, DROP COLUMN attempts, DROP COLUMN reason, DROP COLUMN sent_at,
    DROP COLUMN delivered_at, DROP COLUMN updated_at;
ALTER TABLE users DROP COLUMN language;
ALTER TABLE tenants DROP COLUMN default_language;
