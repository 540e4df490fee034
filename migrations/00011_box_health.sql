-- Box health: what a box last said about itself (heartbeats), whether the
-- server counts it online, since when, and which alerts of the current
-- incident went out already (each is sent once per incident, not on every
-- heartbeat).

-- +goose Up
CREATE TABLE box_status (
    tenant_id          uuid NOT NULL,
    box_id             uuid NOT NULL,
    online             boolean NOT NULL,
    since              timestamptz NOT NULL,
    last_heartbeat_at  timestamptz NOT NULL,
    box_time           timestamptz,
    firmware_version   text NOT NULL DEFAULT '' CHECK (length(firmware_version) <= 64),
    power_source       text NOT NULL DEFAULT 'mains' CHECK (power_source IN ('mains', 'battery')),
    battery_level      integer CHECK (battery_level BETWEEN 0 AND 100),
    sleeping           boolean NOT NULL DEFAULT false,
    signal_dbm         integer CHECK (signal_dbm BETWEEN -150 AND 0),
    power_alerted_at   timestamptz,
    battery_alerted_at timestamptz,
    offline_alerted_at timestamptz,
    PRIMARY KEY (tenant_id, box_id),
    FOREIGN KEY (tenant_id, box_id) REFERENCES boxes (tenant_id, id)
);

ALTER TABLE box_status ENABLE ROW LEVEL SECURITY;
ALTER TABLE box_status FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON box_status
    USING (tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::uuid)
    WITH CHECK (tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::uuid);
GRANT SELECT, INSERT, UPDATE ON box_status TO keyrelay_app;

-- +goose Down
DROP TABLE box_status;
