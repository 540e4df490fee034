-- Validates the kind check 00031 added NOT VALID: a separate migration, so
-- the scan runs under SHARE UPDATE EXCLUSIVE (writes go on), not under the
-- ADD's ACCESS EXCLUSIVE.

-- +goose Up
SET LOCAL lock_timeout = '5s';
ALTER TABLE inventory_flags VALIDATE CONSTRAINT inventory_flags_kind;

-- +goose Down
SELECT 1;
