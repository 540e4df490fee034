-- The overlap check before a one-time booking is written (tenants/bookings
-- overlapping) runs under row-level security, where only leakproof
-- operators may be index conditions: the range overlap (&&) of the
-- exclusion constraint's GiST index is not, so PostgreSQL used that index
-- for (tenant, key) alone and filtered every live one-time booking the key
-- ever had, past ones included (1,000 of them: 3 ms; the create's largest
-- statement). The live one-time bookings of a key never overlap (the
-- exclusion constraint), so the only one that can overlap a window is the
-- latest that starts before the window ends: one step of this btree, with
-- comparisons that are leakproof. Built concurrently: bookings is written
-- all day.

-- +goose NO TRANSACTION
-- +goose Up
CREATE INDEX CONCURRENTLY IF NOT EXISTS bookings_key_live_from ON bookings (tenant_id, key_id, live_from)
    WHERE kind = 'one_time' AND revoked_at IS NULL;

-- +goose Down
DROP INDEX CONCURRENTLY IF EXISTS bookings_key_live_from;
