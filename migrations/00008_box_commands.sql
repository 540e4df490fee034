-- Commands from the platform to a box: open a bin (a booking-URL pickup, a
-- remote release by staff), a new bundle is ready, firmware is available.
-- A command is stored until the box acknowledges it or it expires; an
-- "open bin" expires within a minute, so a box that reconnects later never
-- opens a bin nobody is standing at. The row is the truth; Redis pub/sub
-- only wakes the replica holding the box's connection.

-- +goose Up
CREATE TABLE box_commands (
    tenant_id    uuid NOT NULL,
    id           uuid NOT NULL,
    box_id       uuid NOT NULL,
    kind         text NOT NULL CHECK (kind IN ('open_bin', 'bundle_ready', 'firmware_available')),
    payload      jsonb NOT NULL DEFAULT '{}',
    created_by   text NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz NOT NULL,
    delivered_at timestamptz,
    acked_at     timestamptz,
    result       text CHECK (result IN ('done', 'failed')),
    detail       text NOT NULL DEFAULT '' CHECK (length(detail) <= 500),
    PRIMARY KEY (tenant_id, id),
    FOREIGN KEY (tenant_id, box_id) REFERENCES boxes (tenant_id, id),
    CHECK (expires_at > created_at)
);
CREATE INDEX box_commands_pending ON box_commands (tenant_id, box_id, id) WHERE acked_at IS NULL;

ALTER TABLE box_commands ENABLE ROW LEVEL SECURITY;
ALTER TABLE box_commands FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON box_commands
    USING (tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::uuid)
    WITH CHECK (tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::uuid);
GRANT SELECT, INSERT, UPDATE ON box_commands TO keyrelay_app;

-- +goose Down
DROP TABLE box_commands;
