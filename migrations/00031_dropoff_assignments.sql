-- The bin a dropoff hands a box was only written to the audit log, so the
-- server could not tell a key put back where it was told from one put in
-- another bin or another box, and two dropoffs at one box at the same
-- time could be handed the same free bin. dropoff_assignments keeps, per
-- key, the box and bin its last dropoff was given (tenants/exchange):
--   - until expires_at the bin is reserved: another key's dropoff skips
--     it. One assignment per bin; the dropoff locks the box row while it
--     chooses, so concurrent dropoffs get distinct bins instead of one of
--     them failing on the unique index.
--   - when the key's fob turns up in a closed bin, that box and bin are
--     what the report is compared with (else the key's home); the row
--     goes once the key is in a bin or taken again.
-- inventory_flags gains the kind wrong_box: a key that turned up in a box
-- other than the one it was expected in.

-- +goose Up
SET LOCAL lock_timeout = '5s';

CREATE TABLE dropoff_assignments (
    tenant_id  uuid NOT NULL REFERENCES tenants (tenant_id) ON DELETE CASCADE,
    key_id     uuid NOT NULL,
    box_id     uuid NOT NULL,
    bin        integer NOT NULL CHECK (bin >= 1),
    created_at timestamptz NOT NULL,
    expires_at timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, key_id),
    FOREIGN KEY (tenant_id, key_id) REFERENCES keys (tenant_id, id) ON DELETE CASCADE,
    FOREIGN KEY (tenant_id, box_id) REFERENCES boxes (tenant_id, id),
    CONSTRAINT dropoff_assignments_bin UNIQUE (tenant_id, box_id, bin)
);
ALTER TABLE dropoff_assignments ENABLE ROW LEVEL SECURITY;
ALTER TABLE dropoff_assignments FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON dropoff_assignments
    USING (tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::uuid)
    WITH CHECK (tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::uuid);
GRANT SELECT, INSERT, UPDATE, DELETE ON dropoff_assignments TO keyrelay_app;

-- The previous release only writes the three old kinds, so the wider check
-- can replace the old one at once; NOT VALID skips the scan under this
-- lock, and 00032 validates it (deploy/README.md, zero-downtime rules).
ALTER TABLE inventory_flags DROP CONSTRAINT inventory_flags_kind_check,
    ADD CONSTRAINT inventory_flags_kind CHECK (kind IN ('wrong_bin', 'wrong_box', 'unknown_fob', 'missing_key')) NOT VALID;

-- +goose Down
SET LOCAL lock_timeout = '5s';
ALTER TABLE inventory_flags DROP CONSTRAINT inventory_flags_kind,
    ADD CONSTRAINT inventory_flags_kind_check CHECK (kind IN ('wrong_bin', 'unknown_fob', 'missing_key')) NOT VALID;
DROP TABLE dropoff_assignments;
