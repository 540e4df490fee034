-- Device identity: a tenant admin issues a one-time provisioning token for
-- a box; the box exchanges it once for a credential. The box generates its
-- own ed25519 key pair and registers the public key: every request it makes
-- afterwards is signed with the private key, which never leaves the box.
-- The server also gives the box a 32-byte secret K (OFFLINE.md), kept here
-- sealed under the platform key-encryption key, from which the box derives
-- its verifier, derived-code, backup-code and screen-code keys.

-- +goose Up
CREATE TABLE box_provisioning_tokens (
    tenant_id   uuid NOT NULL,
    id          uuid NOT NULL,
    box_id      uuid NOT NULL,
    token_hash  bytea NOT NULL,
    created_by  text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL,
    used_at     timestamptz,
    PRIMARY KEY (tenant_id, id),
    UNIQUE (tenant_id, token_hash),
    FOREIGN KEY (tenant_id, box_id) REFERENCES boxes (tenant_id, id)
);

CREATE TABLE box_credentials (
    tenant_id     uuid NOT NULL,
    id            uuid NOT NULL,
    box_id        uuid NOT NULL,
    public_key    bytea NOT NULL CHECK (length(public_key) = 32),
    secret_sealed bytea NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    last_seen_at  timestamptz,
    revoked_at    timestamptz,
    revoked_by    text,
    PRIMARY KEY (tenant_id, id),
    FOREIGN KEY (tenant_id, box_id) REFERENCES boxes (tenant_id, id)
);
-- A box has one live credential: provisioning again (a replaced box)
-- revokes the one before.
CREATE UNIQUE INDEX box_credentials_live ON box_credentials (tenant_id, box_id) WHERE revoked_at IS NULL;

-- +goose StatementBegin
DO $$
DECLARE t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['box_provisioning_tokens', 'box_credentials'] LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', t);
        EXECUTE format($p$CREATE POLICY tenant_isolation ON %I
            USING (tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::uuid)
            WITH CHECK (tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::uuid)$p$, t);
    END LOOP;
END
$$;
-- +goose StatementEnd
GRANT SELECT, INSERT, UPDATE ON box_provisioning_tokens, box_credentials TO keyrelay_app;

-- +goose Down
DROP TABLE box_credentials;
DROP TABLE box_provisioning_tokens;
