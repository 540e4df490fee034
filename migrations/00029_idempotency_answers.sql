-- The answer to a tenant request sent with an Idempotency-Key, written in
-- the request's own transaction (app/idempotency.go). Redis keeps the fast
-- copy and the "still running" mark; this copy is exactly as durable as
-- the change it describes. Without it a replica that died after COMMIT,
-- before Redis had the answer, let the client's retry run the request a
-- second time (a second box, a 409 naming the retry's own booking).
-- Only answers below 400 are kept here: a refused request wrote nothing,
-- so running it again is harmless.
--
-- retention_sweep_idempotency (owned by keyrelay_janitor) deletes answers
-- older than a day, the lifetime of an Idempotency-Key; it reads their
-- creation time only.

-- +goose Up
CREATE TABLE idempotency_answers (
    tenant_id    uuid NOT NULL REFERENCES tenants (tenant_id) ON DELETE CASCADE,
    key_hash     bytea NOT NULL CHECK (length(key_hash) = 32), -- caller, method, route and key
    body_hash    bytea NOT NULL CHECK (length(body_hash) = 32),
    status       smallint NOT NULL CHECK (status BETWEEN 200 AND 399),
    content_type text NOT NULL,
    sealed       bytea NOT NULL, -- the body, sealed: it may hold a secret shown once
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, key_hash)
);
CREATE INDEX idempotency_answers_created ON idempotency_answers (created_at);
ALTER TABLE idempotency_answers ENABLE ROW LEVEL SECURITY;
ALTER TABLE idempotency_answers FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON idempotency_answers
    USING (tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::uuid)
    WITH CHECK (tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::uuid);
GRANT SELECT, INSERT ON idempotency_answers TO keyrelay_app;

GRANT SELECT (tenant_id, key_hash, created_at), DELETE ON idempotency_answers TO keyrelay_janitor;
CREATE POLICY janitor_read ON idempotency_answers FOR SELECT TO keyrelay_janitor USING (true);
CREATE POLICY janitor_delete ON idempotency_answers FOR DELETE TO keyrelay_janitor USING (true);

-- +goose StatementBegin
CREATE FUNCTION retention_sweep_idempotency(p_limit integer)
RETURNS integer
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE n integer;
BEGIN
    DELETE FROM public.idempotency_answers x
    WHERE (x.tenant_id, x.key_hash) IN (
        SELECT a.tenant_id, a.key_hash FROM public.idempotency_answers a
        WHERE a.created_at < now() - interval '1 day'
        ORDER BY a.created_at LIMIT p_limit
    );
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END
$$;
-- +goose StatementEnd
ALTER FUNCTION retention_sweep_idempotency(integer) OWNER TO keyrelay_janitor;
REVOKE ALL ON FUNCTION retention_sweep_idempotency(integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION retention_sweep_idempotency(integer) TO keyrelay_app;

-- +goose Down
DROP FUNCTION retention_sweep_idempotency(integer);
DROP TABLE idempotency_answers;
