-- Firmware releases and staged rollouts.
--
-- Releases are platform data, not a tenant's: one row per model and
-- version, published by the platform operator, read by every tenant's boxes.
-- firmware_releases is therefore a global table (no tenant_id, no RLS). The
-- application may only read it; every write goes through the SECURITY
-- DEFINER functions below, owned by the NOLOGIN path role keyrelay_firmware,
-- which holds column grants on exactly what an upload and a publication
-- change.
--
-- Rollouts, their per-box assignments, each box's installed firmware and the
-- tenant's approval setting are tenant data: tenant_id leads every key and
-- row-level security isolates them. The operator's views that span tenants
-- (the list of rollouts, which tenant a rollout belongs to, the rollouts the
-- advancing loop must look at) read through keyrelay_firmware's functions,
-- which return ids and states, never a box or a tenant's settings.
--
-- A rollout copies what its record needs from the release (model, version,
-- security version, digest): the audit export then stands on its own, and
-- no foreign key leaves the tenant's rows for a global table.

-- +goose Up
CREATE TABLE firmware_releases (
    id               uuid PRIMARY KEY,
    model            text NOT NULL CHECK (model IN ('MS3', 'MS4', 'MS5')),
    version          text NOT NULL CHECK (version ~ '^(0|[1-9][0-9]{0,4})\.(0|[1-9][0-9]{0,4})\.(0|[1-9][0-9]{0,4})$'),
    version_number   bigint NOT NULL CHECK (version_number > 0),
    security_version integer NOT NULL CHECK (security_version BETWEEN 0 AND 1000000),
    notes            text NOT NULL DEFAULT '' CHECK (length(notes) <= 20000),
    state            text NOT NULL CHECK (state IN ('uploading', 'published')),
    size             bigint NOT NULL CHECK (size > 0),
    uploaded         bigint NOT NULL DEFAULT 0 CHECK (uploaded BETWEEN 0 AND size),
    -- SHA-256 midstate between upload chunks: the digest is computed while
    -- the artifact streams in, never by reading it back.
    hash_state       bytea,
    sha256           bytea CHECK (length(sha256) = 32),
    storage_key      text NOT NULL,
    -- The signed envelope exactly as boxes receive it (firmware/signing).
    manifest         bytea,
    key_id           text,
    created_by       text NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    published_at     timestamptz,
    UNIQUE (model, version),
    CHECK (state = 'uploading' OR (sha256 IS NOT NULL AND manifest IS NOT NULL AND uploaded = size))
);
GRANT SELECT ON firmware_releases TO keyrelay_app;

CREATE TABLE firmware_settings (
    tenant_id        uuid NOT NULL REFERENCES tenants (tenant_id) ON DELETE CASCADE,
    require_approval boolean NOT NULL DEFAULT false,
    updated_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id)
);

CREATE TABLE firmware_rollouts (
    tenant_id          uuid NOT NULL REFERENCES tenants (tenant_id) ON DELETE CASCADE,
    id                 uuid NOT NULL,
    release_id         uuid NOT NULL,
    model              text NOT NULL CHECK (model IN ('MS3', 'MS4', 'MS5')),
    version            text NOT NULL,
    version_number     bigint NOT NULL,
    security_version   integer NOT NULL,
    sha256             bytea NOT NULL CHECK (length(sha256) = 32),
    -- Cumulative percentages of the eligible boxes, ascending, ending at 100.
    waves              jsonb NOT NULL CHECK (jsonb_typeof(waves) = 'array' AND jsonb_array_length(waves) BETWEEN 1 AND 10),
    -- How many waves have been entered (0: none yet).
    current_wave       integer NOT NULL DEFAULT 0 CHECK (current_wave >= 0),
    wave_started_at    timestamptz,
    failure_threshold  double precision NOT NULL CHECK (failure_threshold > 0 AND failure_threshold <= 1),
    observation_secs   integer NOT NULL CHECK (observation_secs BETWEEN 60 AND 2592000),
    -- The maintenance window in each box's own time zone, in minutes after
    -- local midnight; NULL: any time. start > end spans midnight.
    window_start       integer CHECK (window_start BETWEEN 0 AND 1439),
    window_end         integer CHECK (window_end BETWEEN 0 AND 1439),
    state              text NOT NULL CHECK (state IN ('awaiting_approval', 'active', 'paused', 'completed', 'aborted')),
    state_reason       text NOT NULL DEFAULT '' CHECK (length(state_reason) <= 500),
    -- Failures the operator accepted when resuming a paused rollout: the
    -- threshold counts only those that come after.
    failures_forgiven  integer NOT NULL DEFAULT 0 CHECK (failures_forgiven >= 0),
    approved_by        text,
    approved_at        timestamptz,
    created_by         text NOT NULL,
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, id),
    CHECK ((window_start IS NULL) = (window_end IS NULL))
);
-- One open rollout per tenant and model: a box is never offered two updates.
CREATE UNIQUE INDEX firmware_rollouts_open ON firmware_rollouts (tenant_id, model)
    WHERE state IN ('awaiting_approval', 'active', 'paused');

CREATE TABLE firmware_assignments (
    tenant_id      uuid NOT NULL,
    rollout_id     uuid NOT NULL,
    box_id         uuid NOT NULL,
    wave           integer NOT NULL CHECK (wave >= 1),
    status         text NOT NULL CHECK (status IN ('assigned', 'downloading', 'installing', 'installed', 'failed', 'skipped')),
    reason         text NOT NULL DEFAULT '' CHECK (length(reason) <= 500),
    from_version   text NOT NULL DEFAULT '',
    assigned_at    timestamptz NOT NULL,
    offered_at     timestamptz,
    downloading_at timestamptz,
    installing_at  timestamptz,
    installed_at   timestamptz,
    failed_at      timestamptz,
    updated_at     timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, rollout_id, box_id),
    FOREIGN KEY (tenant_id, rollout_id) REFERENCES firmware_rollouts (tenant_id, id),
    FOREIGN KEY (tenant_id, box_id) REFERENCES boxes (tenant_id, id)
);
CREATE INDEX firmware_assignments_box ON firmware_assignments (tenant_id, box_id);

-- What a box runs, as it reported after installing; the floor below which
-- nothing is ever offered to it.
CREATE TABLE box_firmware (
    tenant_id        uuid NOT NULL,
    box_id           uuid NOT NULL,
    version          text NOT NULL,
    version_number   bigint NOT NULL,
    security_version integer NOT NULL,
    updated_at       timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, box_id),
    FOREIGN KEY (tenant_id, box_id) REFERENCES boxes (tenant_id, id)
);

-- +goose StatementBegin
DO $$
DECLARE t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['firmware_settings', 'firmware_rollouts', 'firmware_assignments', 'box_firmware'] LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', t);
        EXECUTE format($p$CREATE POLICY tenant_isolation ON %I
            USING (tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::uuid)
            WITH CHECK (tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::uuid)$p$, t);
    END LOOP;
END
$$;
-- +goose StatementEnd
GRANT SELECT, INSERT, UPDATE ON firmware_settings, firmware_rollouts, firmware_assignments, box_firmware TO keyrelay_app;

-- The firmware path: writes to the release catalogue, and the operator's
-- cross-tenant view of rollouts (ids and states only).
GRANT SELECT (id, state, size, uploaded),
      INSERT (id, model, version, version_number, security_version, notes, state, size, storage_key, created_by),
      UPDATE (uploaded, hash_state, sha256, manifest, key_id, state, published_at)
    ON firmware_releases TO keyrelay_firmware;
GRANT SELECT (tenant_id, id, release_id, model, version, state, current_wave, waves, created_at, updated_at)
    ON firmware_rollouts TO keyrelay_firmware;
CREATE POLICY firmware_read ON firmware_rollouts FOR SELECT TO keyrelay_firmware USING (true);

-- +goose StatementBegin
CREATE FUNCTION firmware_release_create(p_id uuid, p_model text, p_version text, p_version_number bigint,
    p_security_version integer, p_notes text, p_size bigint, p_storage_key text, p_created_by text)
RETURNS void
LANGUAGE sql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    INSERT INTO public.firmware_releases (id, model, version, version_number, security_version, notes, state, size, storage_key, created_by)
    VALUES (p_id, p_model, p_version, p_version_number, p_security_version, p_notes, 'uploading', p_size, p_storage_key, p_created_by)
$$;

-- Moves an upload from p_from to p_to bytes; false when another chunk got
-- there first (the caller's chunk is then refused, not merged).
CREATE FUNCTION firmware_release_advance(p_id uuid, p_from bigint, p_to bigint, p_hash_state bytea)
RETURNS boolean
LANGUAGE sql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    WITH moved AS (
        UPDATE public.firmware_releases SET uploaded = p_to, hash_state = p_hash_state
        WHERE id = p_id AND state = 'uploading' AND uploaded = p_from AND p_to > p_from AND p_to <= size
        RETURNING 1
    )
    SELECT EXISTS (SELECT 1 FROM moved)
$$;

CREATE FUNCTION firmware_release_publish(p_id uuid, p_sha256 bytea, p_manifest bytea, p_key_id text)
RETURNS boolean
LANGUAGE sql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    WITH done AS (
        UPDATE public.firmware_releases
        SET state = 'published', sha256 = p_sha256, manifest = p_manifest, key_id = p_key_id, hash_state = NULL, published_at = now()
        WHERE id = p_id AND state = 'uploading' AND uploaded = size
        RETURNING 1
    )
    SELECT EXISTS (SELECT 1 FROM done)
$$;

-- The operator's list of rollouts across tenants, newest first.
CREATE FUNCTION firmware_rollouts_overview(p_states text[], p_limit integer)
RETURNS TABLE (tenant_id uuid, id uuid, release_id uuid, model text, version text, state text,
               current_wave integer, waves jsonb, created_at timestamptz, updated_at timestamptz)
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT r.tenant_id, r.id, r.release_id, r.model, r.version, r.state, r.current_wave, r.waves, r.created_at, r.updated_at
    FROM public.firmware_rollouts r
    WHERE p_states IS NULL OR r.state = ANY (p_states)
    ORDER BY r.created_at DESC, r.id DESC
    LIMIT least(greatest(p_limit, 1), 5000)
$$;

-- Which tenant a rollout belongs to: the operator's calls name a rollout
-- by id alone.
CREATE FUNCTION firmware_rollout_tenant(p_id uuid)
RETURNS uuid
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT r.tenant_id FROM public.firmware_rollouts r WHERE r.id = p_id
$$;
-- +goose StatementEnd

ALTER FUNCTION firmware_release_create(uuid, text, text, bigint, integer, text, bigint, text, text) OWNER TO keyrelay_firmware;
ALTER FUNCTION firmware_release_advance(uuid, bigint, bigint, bytea) OWNER TO keyrelay_firmware;
ALTER FUNCTION firmware_release_publish(uuid, bytea, bytea, text) OWNER TO keyrelay_firmware;
ALTER FUNCTION firmware_rollouts_overview(text[], integer) OWNER TO keyrelay_firmware;
ALTER FUNCTION firmware_rollout_tenant(uuid) OWNER TO keyrelay_firmware;
REVOKE ALL ON FUNCTION firmware_release_create(uuid, text, text, bigint, integer, text, bigint, text, text),
    firmware_release_advance(uuid, bigint, bigint, bytea), firmware_release_publish(uuid, bytea, bytea, text),
    firmware_rollouts_overview(text[], integer), firmware_rollout_tenant(uuid) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION firmware_release_create(uuid, text, text, bigint, integer, text, bigint, text, text),
    firmware_release_advance(uuid, bigint, bigint, bytea), firmware_release_publish(uuid, bytea, bytea, text),
    firmware_rollouts_overview(text[], integer), firmware_rollout_tenant(uuid) TO keyrelay_app;

-- +goose Down
DROP FUNCTION firmware_rollout_tenant(uuid);
DROP FUNCTION firmware_rollouts_overview(text[], integer);
DROP FUNCTION firmware_release_publish(uuid, bytea, bytea, text);
DROP FUNCTION firmware_release_advance(uuid, bigint, bigint, bytea);
DROP FUNCTION firmware_release_create(uuid, text, text, bigint, integer, text, bigint, text, text);
DROP POLICY firmware_read ON firmware_rollouts;
REVOKE ALL ON firmware_rollouts, firmware_releases FROM keyrelay_firmware;
DROP TABLE box_firmware;
DROP TABLE firmware_assignments;
DROP TABLE firmware_rollouts;
DROP TABLE firmware_settings;
DROP TABLE firmware_releases;
