-- PostgreSQL takes one global lock at the commit of every transaction that
-- sent a NOTIFY, so the NOTIFY the outbox trigger sent on every insert
-- serialised all bookings, pickups and logins (the benchmark of issue 6:
-- 3,600 commits/s with plain inserts, about 400/s with one NOTIFY each).
-- The outbox's relay is now woken through Redis after the commit
-- (tenants/outbox Waker, jobs/relay), and a bundle is announced only when
-- a transaction makes it dirty, not again for every change while it waits
-- for its rebuild.

-- +goose Up
DROP TRIGGER outbox_notify ON outbox;
DROP FUNCTION outbox_notify();

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
        -- now() is this transaction's start: the bundle was clean until
        -- this transaction, so the builder has not been told yet.
        IF dirty = now() THEN
            PERFORM pg_notify('keyrelay_bundles', t::text || ':' || b::text);
        END IF;
    END LOOP;
END
$$;
-- +goose StatementEnd

-- +goose Down
-- +goose StatementBegin
CREATE OR REPLACE FUNCTION bundles_mark_dirty(t uuid, ids uuid[]) RETURNS void
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
CREATE FUNCTION outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('keyrelay_outbox', '');
    RETURN NULL;
END
$$;
-- +goose StatementEnd
CREATE TRIGGER outbox_notify AFTER INSERT ON outbox FOR EACH STATEMENT EXECUTE FUNCTION outbox_notify();
