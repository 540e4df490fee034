-- Data retention and erasure (issue 10): what personal data keyrelay keeps
-- about visitors, and for how long.
--
--   * Message bodies (outbox.payload, sealed) and recipients are purged a
--     configurable time after the message was created (default 30 days);
--     the delivery record (kind, channel, status, provider, attempts,
--     times) stays, marked by purged_at. Only finished messages are
--     purged: a queued one may still have to be sent.
--   * Ended bookings (past ends_at, or revoked) and retired alias codes
--     lose the visitor's name, phone and email a configurable time later
--     (default 180 days), marked by visitor_anonymised_at; the booking's
--     key, window and audit history stay.
--   * Expired pickup challenges (they hold the phone number typed at the
--     box) are deleted a day after they expired, like login challenges.
--   * Erasure on request (tenants/visitors) does the same at once for one
--     visitor and pseudonymises the audit entries that name them.
--
-- Cross-tenant paths, all owned by keyrelay_janitor (the role that already
-- deletes expired sessions, reset tokens and login challenges):
--
--   retention_purge_messages  purges finished messages' payload and
--                             recipient: it may read the ids, status and
--                             times of outbox rows and overwrite those two
--                             columns, never read them;
--   retention_sweep_challenges deletes expired pickup challenges (reads
--                             their ids and expiry only);
--   retention_visitor_tenants names the tenants that have bookings or
--                             alias codes due for anonymisation (reads ids
--                             and times only). The anonymisation itself
--                             runs in each tenant's own scoped transaction
--                             as the application role, so the bundle
--                             triggers of 00015 run as they always do;
--   audit_pseudonymise        replaces the identifying values of chosen
--                             audit entries with a pseudonym. It reads and
--                             writes audit_events.details only, and only
--                             in the caller's tenant: the janitor has no
--                             policy of its own on audit_events, so the
--                             tenant_isolation policy (TO PUBLIC) binds it.
--                             Audit entries stay otherwise append-only.

-- +goose Up
ALTER TABLE outbox ADD COLUMN purged_at timestamptz;
ALTER TABLE bookings ADD COLUMN visitor_anonymised_at timestamptz;
ALTER TABLE alias_codes ADD COLUMN visitor_anonymised_at timestamptz;

-- An anonymised record keeps its channel but has no address any more.
-- NOT VALID then VALIDATE: the ADD holds its lock only for an instant, the
-- validation scans without blocking writes.
ALTER TABLE bookings DROP CONSTRAINT bookings_check4, DROP CONSTRAINT bookings_check5;
ALTER TABLE bookings
    ADD CONSTRAINT bookings_sms_has_phone CHECK (notify_via <> 'sms' OR visitor_phone IS NOT NULL OR visitor_anonymised_at IS NOT NULL) NOT VALID,
    ADD CONSTRAINT bookings_email_has_email CHECK (notify_via <> 'email' OR visitor_email IS NOT NULL OR visitor_anonymised_at IS NOT NULL) NOT VALID;
ALTER TABLE bookings VALIDATE CONSTRAINT bookings_sms_has_phone;
ALTER TABLE bookings VALIDATE CONSTRAINT bookings_email_has_email;
ALTER TABLE alias_codes DROP CONSTRAINT alias_codes_check, DROP CONSTRAINT alias_codes_check1;
ALTER TABLE alias_codes
    ADD CONSTRAINT alias_codes_sms_has_phone CHECK (notify_via <> 'sms' OR visitor_phone IS NOT NULL OR visitor_anonymised_at IS NOT NULL) NOT VALID,
    ADD CONSTRAINT alias_codes_email_has_email CHECK (notify_via <> 'email' OR visitor_email IS NOT NULL OR visitor_anonymised_at IS NOT NULL) NOT VALID;
ALTER TABLE alias_codes VALIDATE CONSTRAINT alias_codes_sms_has_phone;
ALTER TABLE alias_codes VALIDATE CONSTRAINT alias_codes_email_has_email;

-- The sweeps' scans: few rows are due at a time among many.
CREATE INDEX outbox_unpurged ON outbox (created_at) WHERE purged_at IS NULL;
CREATE INDEX bookings_not_anonymised ON bookings ((coalesce(revoked_at, ends_at))) WHERE visitor_anonymised_at IS NULL;
CREATE INDEX pickup_challenges_expiry ON pickup_challenges (expires_at);
-- Erasure and the visitor search look records up by phone or email.
CREATE INDEX bookings_visitor_phone ON bookings (tenant_id, visitor_phone) WHERE visitor_phone IS NOT NULL;
CREATE INDEX bookings_visitor_email ON bookings (tenant_id, visitor_email) WHERE visitor_email IS NOT NULL;
CREATE INDEX outbox_recipient ON outbox (tenant_id, recipient);

-- Message bodies.
GRANT SELECT (tenant_id, id, status, created_at, purged_at), UPDATE (payload, recipient, purged_at, updated_at) ON outbox TO keyrelay_janitor;
CREATE POLICY janitor_read ON outbox FOR SELECT TO keyrelay_janitor USING (true);
CREATE POLICY janitor_purge ON outbox FOR UPDATE TO keyrelay_janitor USING (true) WITH CHECK (true);

-- +goose StatementBegin
CREATE FUNCTION retention_purge_messages(p_age interval, p_limit integer)
RETURNS integer
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE n integer;
BEGIN
    IF p_age < interval '1 hour' THEN
        RAISE EXCEPTION 'retention_purge_messages: age % is too short', p_age;
    END IF;
    -- The empty payload is the marker tenants/visitors and the export
    -- read as "body no longer held".
    WITH due AS (
        SELECT o.tenant_id, o.id FROM public.outbox o
        WHERE o.purged_at IS NULL AND o.created_at < now() - p_age
          AND o.status IN ('sent', 'delivered', 'failed', 'canceled')
        ORDER BY o.created_at
        LIMIT least(greatest(p_limit, 1), 10000)
        FOR UPDATE SKIP LOCKED
    )
    UPDATE public.outbox o SET payload = '\x'::bytea, recipient = 'purged', purged_at = now(), updated_at = now()
    FROM due WHERE o.tenant_id = due.tenant_id AND o.id = due.id;
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END
$$;
-- +goose StatementEnd

-- Expired pickup challenges.
GRANT SELECT (tenant_id, id, expires_at), DELETE ON pickup_challenges TO keyrelay_janitor;
CREATE POLICY janitor_read ON pickup_challenges FOR SELECT TO keyrelay_janitor USING (true);
CREATE POLICY janitor_delete ON pickup_challenges FOR DELETE TO keyrelay_janitor USING (true);

-- +goose StatementBegin
CREATE FUNCTION retention_sweep_challenges()
RETURNS integer
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE n integer;
BEGIN
    DELETE FROM public.pickup_challenges x WHERE x.expires_at < now() - interval '1 day';
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END
$$;
-- +goose StatementEnd

-- Which tenants have visitor details due for anonymisation.
GRANT SELECT (tenant_id, ends_at, revoked_at, visitor_anonymised_at) ON bookings TO keyrelay_janitor;
GRANT SELECT (tenant_id, retired_at, visitor_anonymised_at) ON alias_codes TO keyrelay_janitor;
CREATE POLICY janitor_read ON bookings FOR SELECT TO keyrelay_janitor USING (true);
CREATE POLICY janitor_read ON alias_codes FOR SELECT TO keyrelay_janitor USING (true);

CREATE FUNCTION retention_visitor_tenants(p_before timestamptz)
RETURNS TABLE (tenant_id uuid)
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT b.tenant_id FROM public.bookings b
    WHERE b.visitor_anonymised_at IS NULL AND coalesce(b.revoked_at, b.ends_at) < p_before
    UNION
    SELECT a.tenant_id FROM public.alias_codes a
    WHERE a.visitor_anonymised_at IS NULL AND a.retired_at < p_before
$$;

-- Pseudonymised audit entries: the identifying detail values are replaced
-- by the pseudonym, and the pseudonym is added as "visitor", so an erased
-- visitor's entries still read as one person's.
GRANT SELECT (tenant_id, id, details), UPDATE (details) ON audit_events TO keyrelay_janitor;

-- +goose StatementBegin
CREATE FUNCTION audit_pseudonymise(p_ids uuid[], p_pseudonym text)
RETURNS integer
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE n integer;
BEGIN
    IF p_pseudonym !~ '^visitor-[0-9a-f]{32}$' THEN
        RAISE EXCEPTION 'audit_pseudonymise: % is not a pseudonym', p_pseudonym;
    END IF;
    IF NULLIF(current_setting('app.tenant_id', true), '') IS NULL THEN
        RAISE EXCEPTION 'audit_pseudonymise: no tenant';
    END IF;
    UPDATE public.audit_events e SET details = (
        SELECT coalesce(jsonb_object_agg(k, CASE WHEN k IN ('phone', 'phone_last4', 'email', 'name', 'visitor_name',
                                                        'visitor_phone', 'visitor_email', 'to', 'recipient')
                                                 THEN to_jsonb(p_pseudonym) ELSE v END), '{}'::jsonb)
        FROM jsonb_each(e.details) AS d(k, v)
    ) || jsonb_build_object('visitor', p_pseudonym)
    WHERE e.id = ANY (p_ids);
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END
$$;
-- +goose StatementEnd

ALTER FUNCTION retention_purge_messages(interval, integer) OWNER TO keyrelay_janitor;
ALTER FUNCTION retention_sweep_challenges() OWNER TO keyrelay_janitor;
ALTER FUNCTION retention_visitor_tenants(timestamptz) OWNER TO keyrelay_janitor;
ALTER FUNCTION audit_pseudonymise(uuid[], text) OWNER TO keyrelay_janitor;
REVOKE ALL ON FUNCTION retention_purge_messages(interval, integer), retention_sweep_challenges(),
    retention_visitor_tenants(timestamptz), audit_pseudonymise(uuid[], text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION retention_purge_messages(interval, integer), retention_sweep_challenges(),
    retention_visitor_tenants(timestamptz), audit_pseudonymise(uuid[], text) TO keyrelay_app;

-- +goose Down
DROP FUNCTION audit_pseudonymise(uuid[], text), retention_visitor_tenants(timestamptz),
    retention_sweep_challenges(), retention_purge_messages(interval, integer);
REVOKE ALL ON audit_events FROM keyrelay_janitor;
DROP POLICY janitor_read ON alias_codes;
DROP POLICY janitor_read ON bookings;
REVOKE ALL ON bookings, alias_codes FROM keyrelay_janitor;
DROP POLICY janitor_delete ON pickup_challenges;
DROP POLICY janitor_read ON pickup_challenges;
REVOKE ALL ON pickup_challenges FROM keyrelay_janitor;
DROP POLICY janitor_purge ON outbox;
DROP POLICY janitor_read ON outbox;
REVOKE ALL ON outbox FROM keyrelay_janitor;
DROP INDEX outbox_recipient, bookings_visitor_email, bookings_visitor_phone, pickup_challenges_expiry,
    bookings_not_anonymised, outbox_unpurged;
ALTER TABLE alias_codes DROP CONSTRAINT alias_codes_sms_has_phone, DROP CONSTRAINT alias_codes_email_has_email;
ALTER TABLE alias_codes ADD CONSTRAINT alias_codes_check CHECK (notify_via <> 'sms' OR visitor_phone IS NOT NULL),
    ADD CONSTRAINT alias_codes_check1 CHECK (notify_via <> 'email' OR visitor_email IS NOT NULL);
ALTER TABLE bookings DROP CONSTRAINT bookings_sms_has_phone, DROP CONSTRAINT bookings_email_has_email;
ALTER TABLE bookings ADD CONSTRAINT bookings_check4 CHECK (notify_via <> 'sms' OR visitor_phone IS NOT NULL),
    ADD CONSTRAINT bookings_check5 CHECK (notify_via <> 'email' OR visitor_email IS NOT NULL);
ALTER TABLE alias_codes DROP COLUMN visitor_anonymised_at;
ALTER TABLE bookings DROP COLUMN visitor_anonymised_at;
ALTER TABLE outbox DROP COLUMN purged_at;
