-- Security: login two-factor authentication (SMS codes, TOTP with recovery
-- codes), the tenant's key-exchange policy, personal PINs, and the client
-- address in audit entries.

-- +goose Up
ALTER TABLE users
    ADD COLUMN login_2fa        boolean NOT NULL DEFAULT true,
    -- Set by a password change or reset: the next login asks for a code
    -- even when the user turned login 2FA off.
    ADD COLUMN force_2fa        boolean NOT NULL DEFAULT false,
    ADD COLUMN totp_secret      bytea,        -- sealed
    ADD COLUMN totp_enabled_at  timestamptz,  -- NULL while enrolment is pending
    ADD COLUMN pin_hash         bytea,        -- keyed hash
    ADD COLUMN pin_failures     integer NOT NULL DEFAULT 0,
    ADD COLUMN pin_disabled_at  timestamptz;

ALTER TABLE tenants
    ADD COLUMN owner_pickups_2fa boolean NOT NULL DEFAULT true,
    ADD COLUMN visitor_pickups   text NOT NULL DEFAULT 'sms' CHECK (visitor_pickups IN ('sms', 'email', 'pin'));

-- One login attempt that passed the password step. The code is stored as a
-- keyed hash, bound to this challenge, single use, short-lived, with its own
-- attempt count that a re-sent code does not reset.
CREATE TABLE login_challenges (
    tenant_id   uuid NOT NULL,
    id          uuid NOT NULL,
    user_id     uuid NOT NULL,
    token_hash  bytea NOT NULL,
    channel     text NOT NULL CHECK (channel IN ('sms', 'email', 'totp')),
    code_hash   bytea,
    attempts    integer NOT NULL DEFAULT 0,
    sends       integer NOT NULL DEFAULT 0,
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL,
    used_at     timestamptz,
    user_agent  text NOT NULL DEFAULT '',
    PRIMARY KEY (tenant_id, id),
    UNIQUE (tenant_id, token_hash),
    FOREIGN KEY (tenant_id, user_id) REFERENCES users (tenant_id, id) ON DELETE CASCADE
);

CREATE TABLE recovery_codes (
    tenant_id  uuid NOT NULL,
    id         uuid NOT NULL,
    user_id    uuid NOT NULL,
    code_hash  bytea NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    used_at    timestamptz,
    PRIMARY KEY (tenant_id, id),
    UNIQUE (tenant_id, code_hash),
    FOREIGN KEY (tenant_id, user_id) REFERENCES users (tenant_id, id) ON DELETE CASCADE
);

-- +goose StatementBegin
DO $$
DECLARE t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['login_challenges', 'recovery_codes'] LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', t);
        EXECUTE format($p$CREATE POLICY tenant_isolation ON %I
            USING (tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::uuid)
            WITH CHECK (tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::uuid)$p$, t);
    END LOOP;
END
$$;
-- +goose StatementEnd
GRANT SELECT, INSERT, UPDATE, DELETE ON login_challenges, recovery_codes TO keyrelay_app;

ALTER TABLE audit_events ADD COLUMN client_ip text NOT NULL DEFAULT '';
CREATE INDEX audit_events_action ON audit_events (tenant_id, action, created_at DESC);

-- The janitor also clears challenges that can no longer be used.
GRANT SELECT (tenant_id, id, expires_at), DELETE ON login_challenges TO keyrelay_janitor;
CREATE POLICY janitor_read ON login_challenges FOR SELECT TO keyrelay_janitor USING (true);
CREATE POLICY janitor_delete ON login_challenges FOR DELETE TO keyrelay_janitor USING (true);

-- +goose StatementBegin
CREATE OR REPLACE FUNCTION janitor_sweep(p_idle interval)
RETURNS TABLE (sessions integer, resets integer)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE s integer; r integer;
BEGIN
    DELETE FROM public.sessions x
    WHERE x.expires_at < now() - interval '1 day'
       OR x.ended_at < now() - interval '1 day'
       OR x.last_seen_at < now() - p_idle - interval '1 day';
    GET DIAGNOSTICS s = ROW_COUNT;
    DELETE FROM public.password_resets x
    WHERE x.expires_at < now() - interval '1 day';
    GET DIAGNOSTICS r = ROW_COUNT;
    DELETE FROM public.login_challenges x
    WHERE x.expires_at < now() - interval '1 day';
    RETURN QUERY SELECT s, r;
END
$$;
-- +goose StatementEnd

-- +goose Down
DROP POLICY janitor_delete ON login_challenges;
DROP POLICY janitor_read ON login_challenges;
DROP INDEX audit_events_action;
ALTER TABLE audit_events DROP COLUMN client_ip;
DROP TABLE recovery_codes, login_challenges;
ALTER TABLE tenants DROP COLUMN owner_pickups_2fa, DROP COLUMN visitor_pickups;
ALTER TABLE users DROP COLUMN login_2fa, DROP COLUMN force_2fa, DROP COLUMN totp_secret, DROP COLUMN totp_enabled_at,
    DROP COLUMN pin_hash, DROP COLUMN pin_failures, DROP COLUMN pin_disabled_at;
