-- A bundle's pending changes become rows of their own instead of a dirty
-- mark on the box's bundle row. Marking the row was an upsert: every
-- booking and key change of a box took that row's lock until it committed,
-- so one open transaction on a box (a slow booking, a build) held up every
-- other change of the same box. Appending a row locks nothing shared, and
-- no NOTIFY is sent at commit either (PostgreSQL serialises the commits of
-- notifying transactions): the bundle workers poll for boxes with pending
-- changes through bundle_changes_pending, every second. A build removes
-- exactly the changes it read before it gathered the data, so a change
-- committed during a build stays for the next one.

-- +goose Up
CREATE TABLE box_bundle_changes (
    tenant_id  uuid NOT NULL,
    box_id     uuid NOT NULL,
    id         uuid NOT NULL DEFAULT gen_random_uuid(),
    changed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, box_id, id),
    FOREIGN KEY (tenant_id, box_id) REFERENCES boxes (tenant_id, id)
);
ALTER TABLE box_bundle_changes ENABLE ROW LEVEL SECURITY;
ALTER TABLE box_bundle_changes FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON box_bundle_changes
    USING (tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::uuid)
    WITH CHECK (tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::uuid);
GRANT SELECT, INSERT, DELETE ON box_bundle_changes TO keyrelay_app;

INSERT INTO box_bundle_changes (tenant_id, box_id, changed_at)
    SELECT tenant_id, box_id, dirty_at FROM box_bundles WHERE dirty_at IS NOT NULL;
-- box_bundles.dirty_at stays for now (expand, then contract): the previous
-- release's builders still write it during a rolling upgrade. Nothing
-- reads it any more; a later migration drops it.
COMMENT ON COLUMN box_bundles.dirty_at IS 'unused since 00024 (box_bundle_changes); to be dropped';

-- +goose StatementBegin
CREATE OR REPLACE FUNCTION bundles_mark_dirty(t uuid, ids uuid[]) RETURNS void
LANGUAGE sql AS $$
    INSERT INTO box_bundle_changes (tenant_id, box_id)
    SELECT bx.tenant_id, bx.id FROM boxes bx
    WHERE bx.tenant_id = t AND bx.id = ANY (ids) AND bx.model <> 'MS3' AND bx.deleted_at IS NULL;
$$;
-- +goose StatementEnd

-- The bundle workers' view across tenants: which boxes wait for a build,
-- nothing else.
GRANT SELECT (tenant_id, box_id) ON box_bundle_changes TO keyrelay_relay;
CREATE POLICY relay_read ON box_bundle_changes FOR SELECT TO keyrelay_relay USING (true);
-- +goose StatementBegin
CREATE FUNCTION bundle_changes_pending(p_limit integer)
RETURNS TABLE (tenant_id uuid, box_id uuid)
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT DISTINCT c.tenant_id, c.box_id FROM public.box_bundle_changes c LIMIT p_limit;
$$;
-- +goose StatementEnd
ALTER FUNCTION bundle_changes_pending(integer) OWNER TO keyrelay_relay;
REVOKE ALL ON FUNCTION bundle_changes_pending(integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION bundle_changes_pending(integer) TO keyrelay_app;

-- +goose Down
DROP FUNCTION bundle_changes_pending(integer);
COMMENT ON COLUMN box_bundles.dirty_at IS NULL;
UPDATE box_bundles b SET dirty_at = c.first FROM (
    SELECT tenant_id, box_id, min(changed_at) AS first FROM box_bundle_changes GROUP BY tenant_id, box_id
) c WHERE c.tenant_id = b.tenant_id AND c.box_id = b.box_id;
DROP TABLE box_bundle_changes;
-- +goose StatementBegin
CREATE OR REPLACE FUNCTION bundles_mark_dirty(t uuid, ids uuid[]) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    b uuid;
    dirty timestamptz;
BEGIN
    FOR b IN
        SELECT bx.id FROM boxes bx
        WHERE bx.tenant_id = t AND bx.id = ANY (ids) AND bx.model <> 'MS3' AND bx.deleted_at IS NULL
    LOOP
        INSERT INTO box_bundles AS bb (tenant_id, box_id, dirty_at) VALUES (t, b, now())
        ON CONFLICT (tenant_id, box_id) DO UPDATE SET dirty_at = coalesce(bb.dirty_at, excluded.dirty_at)
        RETURNING bb.dirty_at INTO dirty;
        IF dirty = now() THEN
            PERFORM pg_notify('keyrelay_bundles', t::text || ':' || b::text);
        END IF;
    END LOOP;
END
$$;
-- +goose StatementEnd
