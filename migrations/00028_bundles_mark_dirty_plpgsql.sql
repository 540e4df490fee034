-- bundles_mark_dirty runs in the trigger of every booking and key write.
-- As a LANGUAGE sql function called from PL/pgSQL it was parsed, analysed
-- and planned again on every call (an SQL function keeps its plan only
-- within one statement); PL/pgSQL keeps the plan for the session. Same
-- statement, same rows.

-- +goose Up
-- +goose StatementBegin
CREATE OR REPLACE FUNCTION bundles_mark_dirty(t uuid, ids uuid[]) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO box_bundle_changes (tenant_id, box_id)
    SELECT bx.tenant_id, bx.id FROM boxes bx
    WHERE bx.tenant_id = t AND bx.id = ANY (ids) AND bx.model <> 'MS3' AND bx.deleted_at IS NULL;
END
$$;
-- +goose StatementEnd

-- +goose Down
-- +goose StatementBegin
CREATE OR REPLACE FUNCTION bundles_mark_dirty(t uuid, ids uuid[]) RETURNS void
LANGUAGE sql AS $$
    INSERT INTO box_bundle_changes (tenant_id, box_id)
    SELECT bx.tenant_id, bx.id FROM boxes bx
    WHERE bx.tenant_id = t AND bx.id = ANY (ids) AND bx.model <> 'MS3' AND bx.deleted_at IS NULL;
$$;
-- +goose StatementEnd
