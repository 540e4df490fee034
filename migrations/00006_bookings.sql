-- Bookings (one-time and ongoing access to a key), alias codes, and the
-- codes they are opened with.
--
-- Codes. Booking codes and alias codes share one namespace: a code is
-- unique among the tenant's live codes. Every code is a row of codes, kept
-- as a keyed hash (HMAC under the server secret, so the box's lookup stays
-- an index scan) and sealed (AES-GCM, for the owner's "copy details" and
-- for the box bundle's verifiers): a database dump alone reveals no code.
-- freed_at marks a code that is no longer live and may be drawn again: an
-- alias code when it is retired, a booking's own code when a business
-- chooses the same digits for an alias after that booking ended or was
-- revoked (codes are freed lazily, when the digits are wanted again; until
-- then the code still finds its booking, so a key can be dropped off with
-- the code of an access that has ended).
--
-- Where a code works: a booking opens only the bin of its key, at the box
-- that holds the key (keys.home_box_id, where the key lives between
-- accesses). The box's lookup is
--   codes (tenant_id, code_hash, freed_at IS NULL) → bookings.code_id
--   → the booking that is live (not revoked, not held, within its window)
--   → keys → the box asking must be the key's box.
-- An alias code's row is shared by every booking linked to it in turn; at
-- most one of them is live (alias_codes.booking_id, changed under the
-- alias row's lock).
--
-- Overlap. Two one-time bookings of one key may not overlap from now on:
-- the exclusion constraint compares [live_from, ends_at), where live_from
-- is the later of starts_at and the time the window was last set. Ranges
-- that only overlap in the past therefore never conflict (a booking that
-- has ended does not block a new one), and the check is race-free: two
-- concurrent inserts cannot both pass it. Revoked bookings and ongoing
-- access take part in no overlap.

-- +goose Up
-- btree_gist gives uuid an equality operator class for GiST (trusted since
-- PostgreSQL 13: the database owner may create it).
CREATE EXTENSION IF NOT EXISTS btree_gist;

CREATE TABLE codes (
    tenant_id   uuid NOT NULL REFERENCES tenants (tenant_id) ON DELETE CASCADE,
    id          uuid NOT NULL,
    code_hash   bytea NOT NULL CHECK (length(code_hash) = 32),
    code_sealed bytea NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    freed_at    timestamptz,
    PRIMARY KEY (tenant_id, id)
);
CREATE UNIQUE INDEX codes_live ON codes (tenant_id, code_hash) WHERE freed_at IS NULL;

-- An alias code is chosen (or drawn) and may be sent before any booking
-- exists; until a booking takes it as its code it opens nothing.
CREATE TABLE alias_codes (
    tenant_id     uuid NOT NULL REFERENCES tenants (tenant_id) ON DELETE CASCADE,
    id            uuid NOT NULL,
    code_id       uuid NOT NULL,
    visitor_name  text NOT NULL CHECK (length(visitor_name) BETWEEN 1 AND 200),
    visitor_phone text,
    visitor_email text,
    notify_via    text NOT NULL CHECK (notify_via IN ('sms', 'email')),
    -- The booking that took the alias last; it holds the alias only while
    -- it is live (not revoked, not ended).
    booking_id    uuid,
    created_by    text NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    sent_at       timestamptz,
    retired_at    timestamptz,
    PRIMARY KEY (tenant_id, id),
    UNIQUE (tenant_id, code_id),
    FOREIGN KEY (tenant_id, code_id) REFERENCES codes (tenant_id, id),
    CHECK (notify_via <> 'sms' OR visitor_phone IS NOT NULL),
    CHECK (notify_via <> 'email' OR visitor_email IS NOT NULL)
);

CREATE TABLE bookings (
    tenant_id        uuid NOT NULL REFERENCES tenants (tenant_id) ON DELETE CASCADE,
    id               uuid NOT NULL,
    key_id           uuid NOT NULL,
    kind             text NOT NULL CHECK (kind IN ('one_time', 'ongoing')),
    visitor_name     text NOT NULL CHECK (length(visitor_name) BETWEEN 1 AND 200),
    visitor_phone    text,
    visitor_email    text,
    notify_via       text NOT NULL CHECK (notify_via IN ('sms', 'email')),
    starts_at        timestamptz NOT NULL,
    ends_at          timestamptz,
    live_from        timestamptz NOT NULL,
    return_reminder  boolean NOT NULL,
    code_id          uuid NOT NULL,
    alias_code_id    uuid,
    -- The booking URL's token (128 random bits after the tenant id): its
    -- SHA-256 for the visitor page's lookup, sealed for showing the URL.
    url_token_hash   bytea NOT NULL CHECK (length(url_token_hash) = 32),
    url_token_sealed bytea NOT NULL,
    -- Created with hold: true. Until released_at it opens nothing and
    -- nothing was sent.
    hold             boolean NOT NULL DEFAULT false,
    released_at      timestamptz,
    -- When the access instructions last went out (creation, release or
    -- resend): the next resend waits an hour from then.
    sent_at          timestamptz,
    resent_at        timestamptz,
    revoked_at       timestamptz,
    created_by       text NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, id),
    FOREIGN KEY (tenant_id, key_id) REFERENCES keys (tenant_id, id),
    FOREIGN KEY (tenant_id, code_id) REFERENCES codes (tenant_id, id),
    FOREIGN KEY (tenant_id, alias_code_id) REFERENCES alias_codes (tenant_id, id),
    CHECK ((kind = 'ongoing') = (ends_at IS NULL)),
    CHECK (ends_at IS NULL OR (ends_at > starts_at AND ends_at >= live_from)),
    CHECK (live_from >= starts_at),
    CHECK (kind = 'one_time' OR NOT return_reminder),
    CHECK (notify_via <> 'sms' OR visitor_phone IS NOT NULL),
    CHECK (notify_via <> 'email' OR visitor_email IS NOT NULL),
    CHECK (hold OR released_at IS NULL),
    CONSTRAINT bookings_no_overlap EXCLUDE USING gist (
        tenant_id WITH =, key_id WITH =, tstzrange(live_from, ends_at) WITH &&
    ) WHERE (kind = 'one_time' AND revoked_at IS NULL)
);
CREATE UNIQUE INDEX bookings_url_token ON bookings (tenant_id, url_token_hash);
CREATE INDEX bookings_code ON bookings (tenant_id, code_id);
-- The key's visitors and the live-access count before a key is deleted.
CREATE INDEX bookings_key_live ON bookings (tenant_id, key_id, id) WHERE revoked_at IS NULL;

ALTER TABLE alias_codes ADD CONSTRAINT alias_codes_booking FOREIGN KEY (tenant_id, booking_id) REFERENCES bookings (tenant_id, id);

-- The scheduled messages of a booking (outbox ids), moved or cancelled
-- when the booking is edited, released or revoked: the visitor's return
-- reminder, and the reminders to the tenant's admins about a held booking
-- past its start. Not a foreign key to outbox: delivery may prune old
-- messages, and a reminder that is gone is simply not moved.
CREATE TABLE booking_reminders (
    tenant_id  uuid NOT NULL,
    outbox_id  uuid NOT NULL,
    booking_id uuid NOT NULL,
    kind       text NOT NULL CHECK (kind IN ('return_reminder', 'held_booking_reminder')),
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, outbox_id),
    FOREIGN KEY (tenant_id, booking_id) REFERENCES bookings (tenant_id, id)
);
CREATE INDEX booking_reminders_booking ON booking_reminders (tenant_id, booking_id);

-- +goose StatementBegin
DO $$
DECLARE t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['codes', 'alias_codes', 'bookings', 'booking_reminders'] LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', t);
        EXECUTE format($p$CREATE POLICY tenant_isolation ON %I
            USING (tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::uuid)
            WITH CHECK (tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::uuid)$p$, t);
    END LOOP;
END
$$;
-- +goose StatementEnd
-- No DELETE: bookings, codes and alias codes are revoked, freed or retired,
-- never removed (audit entries and the box journal name them).
GRANT SELECT, INSERT, UPDATE ON codes, alias_codes, bookings, booking_reminders TO keyrelay_app;

-- +goose Down
DROP TABLE booking_reminders;
ALTER TABLE alias_codes DROP CONSTRAINT alias_codes_booking;
DROP TABLE bookings;
DROP TABLE alias_codes;
DROP TABLE codes;
DROP EXTENSION IF EXISTS btree_gist;
