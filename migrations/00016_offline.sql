-- Boxes offline (OFFLINE.md): backup code counters, derived codes issued
-- for bookings made while a box is offline, and the journal a box uploads
-- when it reconnects (sync), with the incidents sync raised.

-- +goose Up
-- The next unused backup code counter of each bin of a box (bin 0: the
-- "open all bins" code). A row appears when the sheet is first read or a
-- use is synced; a missing row is counter 0.
CREATE TABLE offline_backup_counters (
    tenant_id    uuid NOT NULL,
    box_id       uuid NOT NULL,
    bin          integer NOT NULL CHECK (bin >= 0),
    next_counter bigint NOT NULL DEFAULT 0 CHECK (next_counter >= 0),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, box_id, bin),
    FOREIGN KEY (tenant_id, box_id) REFERENCES boxes (tenant_id, id)
);

-- A derived code is not stored in clear: tag_hash (keyed hash of box and
-- tag) finds it when a synced pickup names its tag, and catches two codes
-- with one tag at a box; code_sealed shows it again to staff. The
-- booking's window when the code was derived is kept so that a later
-- shortening or move revokes it (firmware/offline RevokedTags).
CREATE TABLE offline_derived_codes (
    tenant_id        uuid NOT NULL,
    id               uuid NOT NULL,
    box_id           uuid NOT NULL,
    booking_id       uuid NOT NULL,
    key_id           uuid NOT NULL,
    bin              integer NOT NULL CHECK (bin BETWEEN 1 AND 99),
    tag_hash         bytea NOT NULL CHECK (length(tag_hash) = 32),
    code_sealed      bytea NOT NULL,
    valid_from       timestamptz NOT NULL,
    valid_until      timestamptz NOT NULL,
    booking_starts   timestamptz NOT NULL,
    booking_ends     timestamptz NOT NULL,
    created_by       text NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    revoked_at       timestamptz,
    PRIMARY KEY (tenant_id, id),
    FOREIGN KEY (tenant_id, box_id) REFERENCES boxes (tenant_id, id),
    FOREIGN KEY (tenant_id, booking_id) REFERENCES bookings (tenant_id, id),
    FOREIGN KEY (tenant_id, key_id) REFERENCES keys (tenant_id, id),
    CHECK (valid_until > valid_from)
);
CREATE INDEX offline_derived_codes_tag ON offline_derived_codes (tenant_id, box_id, tag_hash);
CREATE INDEX offline_derived_codes_booking ON offline_derived_codes (tenant_id, booking_id);
CREATE INDEX offline_derived_codes_box_live ON offline_derived_codes (tenant_id, box_id, valid_until);

-- Where a box's journal stands on the server: the highest seq stored (all
-- below it are stored too) and that entry's hash, the link the next batch
-- must continue.
CREATE TABLE box_sync_state (
    tenant_id  uuid NOT NULL,
    box_id     uuid NOT NULL,
    high_seq   bigint NOT NULL DEFAULT 0 CHECK (high_seq >= 0),
    high_hash  bytea NOT NULL DEFAULT ''::bytea,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, box_id),
    FOREIGN KEY (tenant_id, box_id) REFERENCES boxes (tenant_id, id)
);

-- Each journal entry once, by (box, seq). received_at is the server's time
-- (records use it); box_time and server_time_seen are what the box said.
-- A used derived code is kept as its keyed tag hash, never the tag.
CREATE TABLE box_journal (
    tenant_id        uuid NOT NULL,
    box_id           uuid NOT NULL,
    seq              bigint NOT NULL CHECK (seq >= 1),
    hash             bytea NOT NULL CHECK (length(hash) = 32),
    kind             text NOT NULL CHECK (kind IN ('pickup', 'dropoff', 'backup_open')),
    bin              integer NOT NULL CHECK (bin >= 0),
    fob_serial       text,
    method           text NOT NULL DEFAULT '' CHECK (method IN ('', 'verifier', 'derived', 'backup')),
    verifier         text,
    derived_tag_hash bytea,
    backup_counter   bigint,
    access_id        uuid,
    box_time         timestamptz NOT NULL,
    server_time_seen timestamptz,
    received_at      timestamptz NOT NULL,
    conflict         text,
    PRIMARY KEY (tenant_id, box_id, seq),
    FOREIGN KEY (tenant_id, box_id) REFERENCES boxes (tenant_id, id)
);

-- What sync refused or flagged: a gap, a fork, a forged batch, a pickup on
-- revoked access, a key taken twice, a used backup code reused. One row
-- per (box, kind, seq): a box retrying the same bad batch alerts once.
CREATE TABLE box_sync_incidents (
    tenant_id  uuid NOT NULL,
    id         uuid NOT NULL,
    box_id     uuid NOT NULL,
    kind       text NOT NULL CHECK (kind IN ('gap', 'fork', 'forged', 'revoked_access', 'taken_twice', 'backup_reused')),
    seq        bigint NOT NULL,
    detail     text NOT NULL DEFAULT '',
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, id),
    UNIQUE (tenant_id, box_id, kind, seq),
    FOREIGN KEY (tenant_id, box_id) REFERENCES boxes (tenant_id, id)
);

-- +goose StatementBegin
DO $$
DECLARE t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['offline_backup_counters', 'offline_derived_codes', 'box_sync_state', 'box_journal', 'box_sync_incidents'] LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', t);
        EXECUTE format($p$CREATE POLICY tenant_isolation ON %I
            USING (tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::uuid)
            WITH CHECK (tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::uuid)$p$, t);
    END LOOP;
END
$$;
-- +goose StatementEnd
GRANT SELECT, INSERT, UPDATE ON offline_backup_counters, offline_derived_codes, box_sync_state, box_sync_incidents TO keyrelay_app;
-- The journal is append-only for the application.
GRANT SELECT, INSERT ON box_journal TO keyrelay_app;

-- +goose Down
DROP TABLE box_sync_incidents;
DROP TABLE box_journal;
DROP TABLE box_sync_state;
DROP TABLE offline_derived_codes;
DROP TABLE offline_backup_counters;
