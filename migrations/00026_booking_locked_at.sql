-- A booking locked after ten wrong second factors (tenants/guard
-- BookingCode) is a lasting fact of the booking, kept with it: the code
-- pickup reads it in the lookup it already makes instead of asking Redis
-- on every pickup, and the lock holds until staff unlock it rather than
-- lapsing with the Redis counter's window. A nullable column without a
-- default: no table rewrite (expand only).

-- +goose Up
ALTER TABLE bookings ADD COLUMN locked_at timestamptz;

-- +goose Down
ALTER TABLE bookings DROP COLUMN locked_at;
