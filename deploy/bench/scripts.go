package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/google/uuid"
)

// The pgbench scripts are the endpoints' transactions statement for
// statement, as `-trace` shows them in PostgreSQL's log (README.md keeps
// a copy). Ids the server draws in Go are drawn with gen_random_uuid()
// and read back with RETURNING … \gset, so no statement is added; sealed
// values are random bytes of the same length. pgbench's outbox rows are
// written already relayed (relayed_at set), so the workers leave their
// random payloads alone; the HTTP side's rows are delivered during the
// runs, as in production. pgbench reads ":name" as a variable even inside
// a string literal, so 'HH24:MI' is written 'HH24:' || 'MI' (folded by
// the planner), and so are 'box:' || id and the like.

// createScript is POST /api/v1/bookings for keyID: API-key lookup, the
// key (share lock), a fresh code, the booking (ON CONFLICT DO NOTHING:
// the exclusion constraint is the overlap check; the server looks the
// booking in the way up only when nothing was written), the tenant's
// name and settings (one statement), the access instructions and the
// return reminder in the outbox, the reminder bookkeeping, the audit
// entry, the webhooks.
func createScript(tenantID, apiKeyID, keyID uuid.UUID, apiKey string, webhooks bool) string {
	h := sha256.Sum256([]byte(apiKey))
	r := strings.NewReplacer("{T}", tenantID.String(), "{K}", keyID.String(), "{A}", apiKeyID.String(), "{H}", hex.EncodeToString(h[:]))
	s := `\set slot random(1, 400000000)
BEGIN;
SELECT set_config('app.tenant_id', '{T}', true);
SELECT * FROM "api_keys" WHERE token_hash = '\x{H}'::bytea AND revoked_at IS NULL LIMIT 1;
SELECT k.id, k.name, CASE WHEN cb.id IS NULL THEN bx.id ELSE cb.id END AS box_id, CASE WHEN cb.id IS NULL THEN bx.name ELSE cb.name END AS box_name, CASE WHEN cb.id IS NULL THEN bx.address ELSE cb.address END AS box_address, CASE WHEN cb.id IS NULL THEN bx.timezone ELSE cb.timezone END AS box_timezone, bx.location_id FROM keys k JOIN boxes bx ON bx.tenant_id = k.tenant_id AND bx.id = k.home_box_id LEFT JOIN boxes cb ON cb.tenant_id = k.tenant_id AND cb.id = k.box_id AND k.state = 'in_bin' WHERE k.id = '{K}' AND k.deleted_at IS NULL FOR SHARE OF k;
INSERT INTO codes (tenant_id, id, code_hash, code_sealed, created_at) VALUES ('{T}', gen_random_uuid(), sha256(random()::text::bytea), substring(sha512(random()::text::bytea) from 1 for 38), now()) ON CONFLICT (tenant_id, code_hash) WHERE freed_at IS NULL DO NOTHING RETURNING id AS code_id \gset
INSERT INTO "bookings" ("tenant_id","id","key_id","kind","visitor_name","visitor_phone","visitor_email","notify_via","starts_at","ends_at","live_from","return_reminder","code_id","alias_code_id","url_token_hash","url_token_sealed","hold","released_at","sent_at","resent_at","revoked_at","created_by","created_at","updated_at") VALUES ('{T}', gen_random_uuid(), '{K}', 'one_time', 'Vic Visitor', '+14155550199', 'vic@example.com', 'sms', timestamptz '2100-01-01' + :slot * interval '1 minute', timestamptz '2100-01-01' + (:slot + 1) * interval '1 minute', timestamptz '2100-01-01' + :slot * interval '1 minute', true, :code_id, NULL, sha256(random()::text::bytea), sha512(random()::text::bytea) || substring(sha256(random()::text::bytea) from 1 for 7), false, NULL, now(), NULL, NULL, 'api_key:' || '{A}', now(), now()) ON CONFLICT DO NOTHING RETURNING id AS booking_id \gset
SELECT name, default_language, to_char(quiet_hours_start, 'HH24:' || 'MI'), to_char(quiet_hours_end, 'HH24:' || 'MI') FROM tenants WHERE tenant_id = '{T}';
INSERT INTO outbox (tenant_id, id, kind, channel, recipient, payload, language, priority, status, created_at, updated_at, not_before, time_zone, relayed_at) VALUES ('{T}', gen_random_uuid(), 'access_instructions', 'sms', '+14155550199', decode(repeat(md5(random()::text), 21), 'hex'), 'en', 'default', 'queued', now(), now(), NULL, 'Europe/Paris', now());
INSERT INTO outbox (tenant_id, id, kind, channel, recipient, payload, language, priority, status, created_at, updated_at, not_before, time_zone, relayed_at) VALUES ('{T}', gen_random_uuid(), 'return_reminder', 'sms', '+14155550199', decode(repeat(md5(random()::text), 10), 'hex'), 'en', 'low', 'queued', now(), now(), NULL, 'Europe/Paris', now()) RETURNING id AS reminder_id \gset
INSERT INTO booking_reminders (tenant_id, outbox_id, booking_id, kind, created_at) VALUES ('{T}', :reminder_id, :booking_id, 'return_reminder', now());
INSERT INTO audit_events (tenant_id, id, actor, action, target, details, client_ip, created_at) VALUES ('{T}', gen_random_uuid(), 'api_key:' || '{A}', 'booking.created', 'booking:' || :booking_id, '{"hold": "false", "kind": "one_time", "key_id": "{K}", "notify_via": "sms"}', '127.0.0.1', now());
INSERT INTO idempotency_answers (tenant_id, key_hash, body_hash, status, content_type, sealed) VALUES (NULLIF(current_setting('app.tenant_id', true), '')::uuid, sha256(random()::text::bytea), sha256(random()::text::bytea), 201, 'application/json', decode(repeat(md5(random()::text), 60), 'hex'));
`
	if webhooks {
		s += `SELECT id, events FROM webhook_endpoints WHERE disabled_at IS NULL;
`
	}
	return r.Replace(s + "COMMIT;\n")
}

// pickupScript is POST /box/v1/pickups with a valid code at its box:
// the device credential, the code's booking and key, the audit entry.
// pipelined sends them in the server's two round trips (pgbench's
// \startpipeline): BEGIN, the setting, the credential and the lookup;
// the audit entry and COMMIT.
func pickupScript(tenantID, credID, boxID, keyID, bookingID uuid.UUID, codeHash []byte, bin int, pipelined bool) string {
	start, end := "", ""
	if pipelined {
		start, end = "\\startpipeline\n", "\\endpipeline\n"
	}
	r := strings.NewReplacer("{T}", tenantID.String(), "{C}", credID.String(), "{B}", boxID.String(), "{K}", keyID.String(),
		"{BK}", bookingID.String(), "{H}", hex.EncodeToString(codeHash), "{N}", fmt.Sprint(bin), "{START}\n", start, "{END}\n", end)
	return r.Replace(`{START}
BEGIN;
SELECT set_config('app.tenant_id', '{T}', true);
SELECT tenant_id, box_id, public_key, last_seen_at FROM box_credentials WHERE id = '{C}' AND revoked_at IS NULL;
SELECT b.id, b.key_id, k.name, b.starts_at, b.ends_at, b.revoked_at, (b.hold AND b.released_at IS NULL), k.state, k.box_id, k.bin, b.locked_at IS NOT NULL FROM codes c JOIN bookings b ON b.tenant_id = c.tenant_id AND b.code_id = c.id JOIN keys k ON k.tenant_id = b.tenant_id AND k.id = b.key_id AND k.deleted_at IS NULL WHERE c.code_hash = '\x{H}'::bytea AND c.freed_at IS NULL ORDER BY (b.revoked_at IS NULL AND NOT (b.hold AND b.released_at IS NULL) AND b.starts_at <= now() AND (b.ends_at IS NULL OR b.ends_at > now())) DESC, b.id DESC LIMIT 1;
{END}
{START}
INSERT INTO audit_events (tenant_id, id, actor, action, target, details, client_ip, created_at) VALUES ('{T}', gen_random_uuid(), 'box:' || '{B}', 'pickup.opened', 'box:' || '{B}', '{"bin": "{N}", "key": "{K}", "method": "code", "booking": "{BK}"}', '127.0.0.1', now());
COMMIT;
{END}
`)
}

// writeScripts writes each script to its own file for pgbench -f (which
// picks one at random per transaction).
func (e *env) writeScripts(name string, scripts []string) ([]string, error) {
	var paths []string
	for i, s := range scripts {
		p := filepath.Join(e.dir, fmt.Sprintf("%s-%02d.sql", name, i))
		if err := os.WriteFile(p, []byte(s), 0o644); err != nil {
			return nil, err
		}
		paths = append(paths, p)
	}
	return paths, nil
}

// tableExists reports whether the bench database has table (work of other
// issues adds statements to the create path; the script follows).
func (e *env) tableExists(ctx context.Context, table string) bool {
	var ok bool
	e.owner.QueryRow(ctx, "SELECT to_regclass($1) IS NOT NULL", table).Scan(&ok)
	return ok
}
