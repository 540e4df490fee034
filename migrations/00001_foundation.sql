-- Foundation: tenants, users, sessions, password resets, API keys, the
-- notification outbox and the audit log.
--
-- Every tenant-owned table: tenant_id leads the primary key, every foreign key
-- and unique constraint includes tenant_id (integrity checks bypass RLS, so a
-- foreign key without it would let one tenant point at another's rows), and
-- RLS is ENABLEd and FORCEd with the policy tenant_isolation.

-- +goose Up
CREATE TABLE tenants (
    tenant_id  uuid PRIMARY KEY,
    name       text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE users (
    tenant_id           uuid NOT NULL REFERENCES tenants (tenant_id) ON DELETE CASCADE,
    id                  uuid NOT NULL,
    name                text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    email               text NOT NULL CHECK (email = lower(email) AND length(email) <= 254),
    phone               text CHECK (phone ~ '^\+[1-9][0-9]{6,14}$'),
    role                text NOT NULL CHECK (role IN ('owner', 'admin', 'staff', 'visitor')),
    password_hash       text,
    password_changed_at timestamptz,
    disabled_at         timestamptz,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, id),
    UNIQUE (tenant_id, email)
);
CREATE INDEX users_email ON users (email);

CREATE TABLE sessions (
    tenant_id    uuid NOT NULL,
    id           uuid NOT NULL,
    user_id      uuid NOT NULL,
    token_hash   bytea NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    last_seen_at timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz NOT NULL,
    ended_at     timestamptz,
    user_agent   text NOT NULL DEFAULT '',
    PRIMARY KEY (tenant_id, id),
    UNIQUE (tenant_id, token_hash),
    FOREIGN KEY (tenant_id, user_id) REFERENCES users (tenant_id, id) ON DELETE CASCADE
);
CREATE INDEX sessions_user ON sessions (tenant_id, user_id) WHERE ended_at IS NULL;

CREATE TABLE password_resets (
    tenant_id  uuid NOT NULL,
    id         uuid NOT NULL,
    user_id    uuid NOT NULL,
    purpose    text NOT NULL CHECK (purpose IN ('reset', 'invite')),
    token_hash bytea NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL,
    used_at    timestamptz,
    PRIMARY KEY (tenant_id, id),
    UNIQUE (tenant_id, token_hash),
    FOREIGN KEY (tenant_id, user_id) REFERENCES users (tenant_id, id) ON DELETE CASCADE
);

CREATE TABLE api_keys (
    tenant_id    uuid NOT NULL,
    id           uuid NOT NULL,
    name         text NOT NULL CHECK (length(name) BETWEEN 1 AND 100),
    role         text NOT NULL CHECK (role IN ('admin', 'staff')),
    token_hash   bytea NOT NULL,
    prefix       text NOT NULL,
    created_by   uuid NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    last_used_at timestamptz,
    revoked_at   timestamptz,
    PRIMARY KEY (tenant_id, id),
    UNIQUE (tenant_id, token_hash),
    FOREIGN KEY (tenant_id, created_by) REFERENCES users (tenant_id, id)
);

-- Domain code never sends anything: it writes here in the same transaction as
-- the change the message reports. payload is sealed (AES-GCM with the
-- configured secret key) because it carries links and codes.
CREATE TABLE outbox (
    tenant_id  uuid NOT NULL,
    id         uuid NOT NULL,
    kind       text NOT NULL,
    channel    text NOT NULL CHECK (channel IN ('sms', 'email')),
    recipient  text NOT NULL,
    payload    bytea NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    relayed_at timestamptz,
    PRIMARY KEY (tenant_id, id)
);
CREATE INDEX outbox_pending ON outbox (created_at) WHERE relayed_at IS NULL;

-- Append-only: the application role may insert and read, never change.
CREATE TABLE audit_events (
    tenant_id  uuid NOT NULL,
    id         uuid NOT NULL,
    actor      text NOT NULL,
    action     text NOT NULL,
    target     text NOT NULL DEFAULT '',
    details    jsonb NOT NULL DEFAULT '{}',
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, id)
);
CREATE INDEX audit_events_time ON audit_events (tenant_id, created_at DESC);

-- +goose StatementBegin
DO $$
DECLARE t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['tenants', 'users', 'sessions', 'password_resets', 'api_keys', 'outbox', 'audit_events'] LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', t);
        EXECUTE format($p$CREATE POLICY tenant_isolation ON %I
            USING (tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::uuid)
            WITH CHECK (tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::uuid)$p$, t);
    END LOOP;
END
$$;
-- +goose StatementEnd

GRANT SELECT, INSERT, UPDATE, DELETE ON tenants, users, sessions, password_resets, api_keys, outbox TO keyrelay_app;
GRANT SELECT, INSERT ON audit_events TO keyrelay_app;

-- The one cross-tenant path of the request side: login and "forgot password"
-- know only an email. login_candidates runs as keyrelay_lookup, a NOLOGIN role
-- that can read four columns of users and nothing else, through a policy that
-- applies to it alone. It returns which tenant and user an email belongs to;
-- everything after that runs in the tenant's own scoped transaction.
GRANT SELECT (tenant_id, id, email, disabled_at, created_at) ON users TO keyrelay_lookup;
CREATE POLICY lookup_by_email ON users FOR SELECT TO keyrelay_lookup USING (true);

CREATE FUNCTION login_candidates(p_email text)
RETURNS TABLE (tenant_id uuid, user_id uuid)
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT u.tenant_id, u.id FROM public.users u
    WHERE u.email = lower(p_email) AND u.disabled_at IS NULL
    ORDER BY u.created_at
    LIMIT 5
$$;
ALTER FUNCTION login_candidates(text) OWNER TO keyrelay_lookup;
REVOKE ALL ON FUNCTION login_candidates(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION login_candidates(text) TO keyrelay_app;

-- +goose Down
DROP FUNCTION login_candidates(text);
DROP TABLE audit_events, outbox, api_keys, password_resets, sessions, users, tenants;
