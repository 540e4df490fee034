-- Inventory: locations group boxes, boxes have numbered bins, keys (on
-- anonymous fobs) have a home bin and a whereabouts. Staff users may be
-- limited to some locations.
--
-- Boxes and keys are archived (deleted_at), not deleted: bookings, audit
-- entries and the key data sheet of past months still name them. Their
-- uniqueness rules apply to the live ones only. Locations are deleted, and
-- only once no live box is in them and no user is limited to them.
--
-- Lists are served newest first by id (UUIDv7) from tenant_id-leading
-- indexes: the primary keys, and the partial indexes below for the filters
-- a limited staff user or a dashboard applies.

-- +goose Up
CREATE TABLE locations (
    tenant_id  uuid NOT NULL REFERENCES tenants (tenant_id) ON DELETE CASCADE,
    id         uuid NOT NULL,
    name       text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    address    text NOT NULL DEFAULT '' CHECK (length(address) <= 500),
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, id),
    UNIQUE (tenant_id, name)
);

-- A staff user with rows here sees only those locations' boxes, keys and
-- bookings; a user with none is not limited. Deleting a location must not
-- cascade here: a user limited to that location alone would lose the
-- limit and see every location.
CREATE TABLE user_locations (
    tenant_id   uuid NOT NULL,
    user_id     uuid NOT NULL,
    location_id uuid NOT NULL,
    PRIMARY KEY (tenant_id, user_id, location_id),
    FOREIGN KEY (tenant_id, user_id) REFERENCES users (tenant_id, id) ON DELETE CASCADE,
    FOREIGN KEY (tenant_id, location_id) REFERENCES locations (tenant_id, id)
);
CREATE INDEX user_locations_location ON user_locations (tenant_id, location_id);

CREATE TABLE boxes (
    tenant_id   uuid NOT NULL REFERENCES tenants (tenant_id) ON DELETE CASCADE,
    id          uuid NOT NULL,
    location_id uuid,
    name        text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    model       text NOT NULL CHECK (model IN ('MS3', 'MS4', 'MS5')),
    address     text NOT NULL DEFAULT '' CHECK (length(address) <= 500),
    latitude    double precision CHECK (latitude BETWEEN -90 AND 90),
    longitude   double precision CHECK (longitude BETWEEN -180 AND 180),
    timezone    text NOT NULL,
    bins        integer NOT NULL CHECK (bins BETWEEN 1 AND 500),
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    deleted_at  timestamptz,
    PRIMARY KEY (tenant_id, id),
    FOREIGN KEY (tenant_id, location_id) REFERENCES locations (tenant_id, id),
    CHECK ((latitude IS NULL) = (longitude IS NULL))
);
CREATE INDEX boxes_location ON boxes (tenant_id, location_id, id) WHERE deleted_at IS NULL;

-- A key's home is a bin of a box. Where it is now: in a bin (box_id and bin
-- of that bin, not necessarily its home: a visitor may drop it off at any
-- box), or out (with the access that took it, since when). A key is overdue
-- when it is out and that access has ended; that is computed, not stored.
CREATE TABLE keys (
    tenant_id      uuid NOT NULL REFERENCES tenants (tenant_id) ON DELETE CASCADE,
    id             uuid NOT NULL,
    name           text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    fob_serial     text NOT NULL CHECK (fob_serial ~ '^[A-Za-z0-9._:-]{1,64}$'),
    home_box_id    uuid NOT NULL,
    home_bin       integer NOT NULL CHECK (home_bin >= 1),
    state          text NOT NULL DEFAULT 'in_bin' CHECK (state IN ('in_bin', 'out')),
    box_id         uuid,
    bin            integer CHECK (bin >= 1),
    -- The booking that took the key out; NULL when staff took it.
    out_access_id  uuid,
    out_since      timestamptz,
    -- When the access that took the key ends (NULL: ongoing access), kept
    -- in step by bookings when the access is edited, so that "overdue" is
    -- a comparison with now(), not a join.
    out_until      timestamptz,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    deleted_at     timestamptz,
    PRIMARY KEY (tenant_id, id),
    FOREIGN KEY (tenant_id, home_box_id) REFERENCES boxes (tenant_id, id),
    FOREIGN KEY (tenant_id, box_id) REFERENCES boxes (tenant_id, id),
    CHECK (state <> 'in_bin' OR (box_id IS NOT NULL AND bin IS NOT NULL AND out_since IS NULL)),
    CHECK (state <> 'out' OR (box_id IS NULL AND bin IS NULL AND out_since IS NOT NULL))
);
CREATE UNIQUE INDEX keys_fob_serial ON keys (tenant_id, fob_serial) WHERE deleted_at IS NULL;
-- One live key per home bin, and one key in a bin at a time.
CREATE UNIQUE INDEX keys_home_bin ON keys (tenant_id, home_box_id, home_bin) WHERE deleted_at IS NULL;
CREATE UNIQUE INDEX keys_in_bin ON keys (tenant_id, box_id, bin) WHERE deleted_at IS NULL AND state = 'in_bin';
-- The keys out with visitors (the "out" and "overdue" lists): few among many.
CREATE INDEX keys_out ON keys (tenant_id, id) WHERE deleted_at IS NULL AND state = 'out';

-- +goose StatementBegin
DO $$
DECLARE t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['locations', 'user_locations', 'boxes', 'keys'] LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', t);
        EXECUTE format($p$CREATE POLICY tenant_isolation ON %I
            USING (tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::uuid)
            WITH CHECK (tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::uuid)$p$, t);
    END LOOP;
END
$$;
-- +goose StatementEnd
GRANT SELECT, INSERT, UPDATE, DELETE ON locations, user_locations, boxes, keys TO keyrelay_app;

-- +goose Down
DROP TABLE keys;
DROP TABLE boxes;
DROP TABLE user_locations;
DROP TABLE locations;
