-- Offline bundles (firmware/bundles): the newest signed bundle of each
-- offline-capable box (MS4, MS5), its version (monotonic per box: a box
-- refuses anything not newer than what it accepted), and whether something
-- it depends on changed since it was built (dirty_at).
--
-- What makes a bundle dirty is marked here, by triggers, in the very
-- transaction of the change: a booking created, edited, released or
-- revoked; a key created, moved (by staff or by a pickup or dropoff at a
-- box), re-homed or deleted; the tenant's key-exchange policy changed.
-- Triggers rather than calls in each service, so that no path that moves
-- a key (the box events as much as the dashboard) can forget it. They run
-- as the caller (no SECURITY DEFINER) under the caller's tenant setting,
-- and wake the bundle builder with pg_notify, which PostgreSQL delivers
-- only once the transaction commits and not at all if it rolls back.

-- +goose Up
CREATE TABLE box_bundles (
    tenant_id  uuid NOT NULL,
    box_id     uuid NOT NULL,
    version    bigint NOT NULL DEFAULT 0 CHECK (version >= 0),
    built_at   timestamptz,
    expires_at timestamptz,
    accesses   integer NOT NULL DEFAULT 0,
    etag       text NOT NULL DEFAULT '',
    -- The signed bundle as served: verifiers only (HMACs under the box's
    -- secret), no code, phone number or PIN (OFFLINE.md, R1).
    bundle     bytea,
    dirty_at   timestamptz,
    PRIMARY KEY (tenant_id, box_id),
    FOREIGN KEY (tenant_id, box_id) REFERENCES boxes (tenant_id, id)
);
-- A bundle is mostly verifiers and ids, which do not compress: storing it
-- uncompressed saves PostgreSQL trying on every build (megabytes for a
-- box with thousands of accesses).
ALTER TABLE box_bundles ALTER COLUMN bundle SET STORAGE EXTERNAL;
-- The dirty bundles of a tenant (the dashboard, a rebuild after an outage).
CREATE INDEX box_bundles_dirty ON box_bundles (tenant_id, dirty_at) WHERE dirty_at IS NOT NULL;

ALTER TABLE box_bundles ENABLE ROW LEVEL SECURITY;
ALTER TABLE box_bundles FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON box_bundles
    USING (tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::uuid)
    WITH CHECK (tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::uuid);
-- No DELETE: a version must never start again from 0 for a box.
GRANT SELECT, INSERT, UPDATE ON box_bundles TO keyrelay_app;

-- +goose StatementBegin
CREATE FUNCTION bundles_mark_dirty(t uuid, ids uuid[]) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE b uuid;
BEGIN
    FOR b IN
        SELECT bx.id FROM boxes bx
        WHERE bx.tenant_id = t AND bx.id = ANY (ids) AND bx.model <> 'MS3' AND bx.deleted_at IS NULL
    LOOP
        INSERT INTO box_bundles AS bb (tenant_id, box_id, dirty_at) VALUES (t, b, now())
        ON CONFLICT (tenant_id, box_id) DO UPDATE SET dirty_at = coalesce(bb.dirty_at, excluded.dirty_at);
        PERFORM pg_notify('keyrelay_bundles', t::text || ':' || b::text);
    END LOOP;
END
$$;

CREATE FUNCTION bundles_booking_changed() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM bundles_mark_dirty(NEW.tenant_id, ARRAY(
        SELECT unnest(ARRAY[k.box_id, k.home_box_id]) FROM keys k
        WHERE k.tenant_id = NEW.tenant_id AND k.id IN (NEW.key_id, CASE WHEN TG_OP = 'UPDATE' THEN OLD.key_id END)));
    RETURN NULL;
END
$$;

CREATE FUNCTION bundles_key_changed() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        PERFORM bundles_mark_dirty(OLD.tenant_id, ARRAY[OLD.box_id, OLD.home_box_id]);
    ELSIF TG_OP = 'INSERT' THEN
        PERFORM bundles_mark_dirty(NEW.tenant_id, ARRAY[NEW.box_id, NEW.home_box_id]);
    ELSE
        PERFORM bundles_mark_dirty(NEW.tenant_id, ARRAY[OLD.box_id, OLD.home_box_id, NEW.box_id, NEW.home_box_id]);
    END IF;
    RETURN NULL;
END
$$;

CREATE FUNCTION bundles_policy_changed() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM bundles_mark_dirty(NEW.tenant_id, ARRAY(SELECT id FROM boxes WHERE tenant_id = NEW.tenant_id));
    RETURN NULL;
END
$$;
-- +goose StatementEnd

-- Only the columns a bundle carries: a reminder sent or a resend does not
-- rebuild anything.
CREATE TRIGGER bundles_booking_inserted AFTER INSERT ON bookings
    FOR EACH ROW EXECUTE FUNCTION bundles_booking_changed();
CREATE TRIGGER bundles_booking_updated AFTER UPDATE ON bookings
    FOR EACH ROW WHEN (OLD.starts_at IS DISTINCT FROM NEW.starts_at OR OLD.ends_at IS DISTINCT FROM NEW.ends_at
        OR OLD.revoked_at IS DISTINCT FROM NEW.revoked_at OR OLD.hold IS DISTINCT FROM NEW.hold
        OR OLD.released_at IS DISTINCT FROM NEW.released_at OR OLD.code_id IS DISTINCT FROM NEW.code_id
        OR OLD.visitor_phone IS DISTINCT FROM NEW.visitor_phone OR OLD.key_id IS DISTINCT FROM NEW.key_id)
    EXECUTE FUNCTION bundles_booking_changed();
CREATE TRIGGER bundles_key_added_removed AFTER INSERT OR DELETE ON keys
    FOR EACH ROW EXECUTE FUNCTION bundles_key_changed();
CREATE TRIGGER bundles_key_updated AFTER UPDATE ON keys
    FOR EACH ROW WHEN (OLD.box_id IS DISTINCT FROM NEW.box_id OR OLD.bin IS DISTINCT FROM NEW.bin
        OR OLD.state IS DISTINCT FROM NEW.state OR OLD.home_box_id IS DISTINCT FROM NEW.home_box_id
        OR OLD.home_bin IS DISTINCT FROM NEW.home_bin OR OLD.fob_serial IS DISTINCT FROM NEW.fob_serial
        OR OLD.deleted_at IS DISTINCT FROM NEW.deleted_at)
    EXECUTE FUNCTION bundles_key_changed();
CREATE TRIGGER bundles_policy_updated AFTER UPDATE ON tenants
    FOR EACH ROW WHEN (OLD.owner_pickups_2fa IS DISTINCT FROM NEW.owner_pickups_2fa
        OR OLD.visitor_pickups IS DISTINCT FROM NEW.visitor_pickups)
    EXECUTE FUNCTION bundles_policy_changed();

-- +goose Down
DROP TRIGGER bundles_policy_updated ON tenants;
DROP TRIGGER bundles_key_updated ON keys;
DROP TRIGGER bundles_key_added_removed ON keys;
DROP TRIGGER bundles_booking_updated ON bookings;
DROP TRIGGER bundles_booking_inserted ON bookings;
DROP FUNCTION bundles_policy_changed();
DROP FUNCTION bundles_key_changed();
DROP FUNCTION bundles_booking_changed();
DROP FUNCTION bundles_mark_dirty(uuid, uuid[]);
DROP TABLE box_bundles;
