-- +goose Up
-- Triggers on boxes and box_credentials and the FORCE toggle below lock
-- those tables for an instant: fail rather than queue behind a long
-- transaction (deploy/README.md, zero-downtime rules).
SET LOCAL lock_timeout = '5s';
-- An archived box is gone from the tenant's lists, but its credential
-- still signed requests: it could record bin events and move keys into a
-- box nobody sees. Archiving ends the credential and any unused
-- provisioning token, whichever path archives the box.
-- +goose StatementBegin
CREATE FUNCTION devices_box_archived() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE box_credentials SET revoked_at = now(), revoked_by = 'box_archived'
    WHERE tenant_id = NEW.tenant_id AND box_id = NEW.id AND revoked_at IS NULL;
    UPDATE box_provisioning_tokens SET expires_at = now()
    WHERE tenant_id = NEW.tenant_id AND box_id = NEW.id AND used_at IS NULL AND expires_at > now();
    RETURN NULL;
END
$$;
-- +goose StatementEnd
CREATE TRIGGER devices_box_archived AFTER UPDATE OF deleted_at ON boxes
    FOR EACH ROW WHEN (OLD.deleted_at IS NULL AND NEW.deleted_at IS NOT NULL)
    EXECUTE FUNCTION devices_box_archived();

-- A revoked credential (a stolen box, or one archived) takes the box's
-- undelivered and unacknowledged commands with it: a long poll the thief
-- had open when staff revoked would otherwise still be handed an "open
-- bin", and so would the replacement box provisioned after it.
-- +goose StatementBegin
CREATE FUNCTION commands_credential_revoked() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE box_commands SET expires_at = greatest(now(), created_at + interval '1 microsecond')
    WHERE tenant_id = NEW.tenant_id AND box_id = NEW.box_id AND acked_at IS NULL AND expires_at > now();
    RETURN NULL;
END
$$;
-- +goose StatementEnd
CREATE TRIGGER commands_credential_revoked AFTER UPDATE OF revoked_at ON box_credentials
    FOR EACH ROW WHEN (OLD.revoked_at IS NULL AND NEW.revoked_at IS NOT NULL)
    EXECUTE FUNCTION commands_credential_revoked();

-- Boxes archived before this migration, in every tenant: the owner sets
-- no tenant, so row security is lifted for this one statement (inside
-- goose's transaction) and put back.
ALTER TABLE box_credentials NO FORCE ROW LEVEL SECURITY;
UPDATE box_credentials c SET revoked_at = now(), revoked_by = 'box_archived'
FROM boxes b
WHERE b.tenant_id = c.tenant_id AND b.id = c.box_id AND b.deleted_at IS NOT NULL AND c.revoked_at IS NULL;
ALTER TABLE box_credentials FORCE ROW LEVEL SECURITY;

-- +goose Down
SET LOCAL lock_timeout = '5s';
DROP TRIGGER commands_credential_revoked ON box_credentials;
DROP FUNCTION commands_credential_revoked();
DROP TRIGGER devices_box_archived ON boxes;
DROP FUNCTION devices_box_archived();
