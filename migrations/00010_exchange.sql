-- Key exchange at the box: pickups by phone number wait for their second
-- factor in a challenge; the box's reports of what each closed bin holds
-- are reconciled with the records, and what does not match is flagged.

-- +goose Up
-- A key taken by a member of staff has no access; a key whose bin was
-- found empty is missing until it turns up.
ALTER TABLE keys DROP CONSTRAINT keys_state_check;
ALTER TABLE keys ADD CONSTRAINT keys_state_check CHECK (state IN ('in_bin', 'out', 'missing'));
ALTER TABLE keys ADD COLUMN out_by text;

-- A pickup by phone number at a box, between the number and the second
-- factor. candidates are the keys the caller may take there (with the
-- access that allows each); the box shows them when there are several.
CREATE TABLE pickup_challenges (
    tenant_id   uuid NOT NULL,
    id          uuid NOT NULL,
    box_id      uuid NOT NULL,
    phone       text NOT NULL,
    user_id     uuid,
    channel     text NOT NULL CHECK (channel IN ('sms', 'email', 'pin', 'none')),
    code_hash   bytea,
    candidates  jsonb NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL,
    used_at     timestamptz,
    PRIMARY KEY (tenant_id, id),
    FOREIGN KEY (tenant_id, box_id) REFERENCES boxes (tenant_id, id),
    CHECK ((channel IN ('sms', 'email')) = (code_hash IS NOT NULL))
);

CREATE TABLE inventory_flags (
    tenant_id   uuid NOT NULL,
    id          uuid NOT NULL,
    box_id      uuid NOT NULL,
    bin         integer NOT NULL,
    kind        text NOT NULL CHECK (kind IN ('wrong_bin', 'unknown_fob', 'missing_key')),
    key_id      uuid,
    fob_serial  text,
    detail      text NOT NULL DEFAULT '',
    created_at  timestamptz NOT NULL DEFAULT now(),
    resolved_at timestamptz,
    PRIMARY KEY (tenant_id, id),
    FOREIGN KEY (tenant_id, box_id) REFERENCES boxes (tenant_id, id),
    FOREIGN KEY (tenant_id, key_id) REFERENCES keys (tenant_id, id)
);
CREATE INDEX inventory_flags_open ON inventory_flags (tenant_id, box_id, id) WHERE resolved_at IS NULL;

-- +goose StatementBegin
DO $$
DECLARE t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['pickup_challenges', 'inventory_flags'] LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', t);
        EXECUTE format($p$CREATE POLICY tenant_isolation ON %I
            USING (tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::uuid)
            WITH CHECK (tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::uuid)$p$, t);
    END LOOP;
END
$$;
-- +goose StatementEnd
GRANT SELECT, INSERT, UPDATE ON pickup_challenges, inventory_flags TO keyrelay_app;

-- +goose Down
DROP TABLE inventory_flags;
DROP TABLE pickup_challenges;
ALTER TABLE keys DROP COLUMN out_by;
ALTER TABLE keys DROP CONSTRAINT keys_state_check;
ALTER TABLE keys ADD CONSTRAINT keys_state_check CHECK (state IN ('in_bin', 'out'));
