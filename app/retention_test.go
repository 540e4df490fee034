package main

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/keyrelay/keyrelay/jobs/janitor"
	"github.com/keyrelay/keyrelay/jobs/retention"
	"github.com/keyrelay/keyrelay/tenants/visitors"
)

// TestRetentionSweep backdates rows and runs the workers' sweeps: message
// bodies past their time are purged while the delivery record stays,
// visitors of long-ended bookings and retired alias codes are anonymised
// while the booking stays, expired pickup challenges, sessions and login
// challenges go, and the rest is left alone.
func TestRetentionSweep(t *testing.T) {
	s := startServer(t)
	f := s.signup(t)
	st := s.newSite(t, f, 1, 2, 3)
	oldPhone, recentPhone, livePhone := "+447900000001", "+447900000002", "+447900000003"
	book := func(bin int, phone string) string {
		id, _ := st.book(t, bin, time.Hour, 2*time.Hour, map[string]any{"visitor": map[string]any{"name": "Old Visitor", "phone": phone}})
		return id
	}
	old, recent := book(1, oldPhone), book(2, recentPhone)
	ownerExec(t, `UPDATE bookings SET starts_at = now() - interval '201 days', live_from = now() - interval '201 days', ends_at = now() - interval '200 days' WHERE tenant_id = $1 AND id = $2`, f.ID, old)
	ownerExec(t, `UPDATE bookings SET starts_at = now() - interval '11 days', live_from = now() - interval '11 days', ends_at = now() - interval '10 days' WHERE tenant_id = $1 AND id = $2`, f.ID, recent)
	alias := f.Owner.expect(t, 201, "POST", "/api/v1/alias-codes", map[string]any{"visitor": map[string]any{"name": "Al Alias", "phone": oldPhone}, "notify_via": "sms"}).JSON(t)["id"].(string)
	f.Owner.expect(t, 204, "DELETE", "/api/v1/alias-codes/"+alias, nil)
	ownerExec(t, `UPDATE alias_codes SET retired_at = now() - interval '190 days' WHERE tenant_id = $1 AND id = $2`, f.ID, alias)
	// The old booking's instructions went out 40 days ago; a reminder
	// created as long ago is still queued and must not lose its content.
	ownerExec(t, `UPDATE outbox SET created_at = now() - interval '40 days', status = 'delivered' WHERE tenant_id = $1 AND recipient = $2`, f.ID, oldPhone)
	ownerExec(t, `UPDATE outbox SET created_at = now() - interval '40 days' WHERE tenant_id = $1 AND recipient = $2`, f.ID, recentPhone)
	// A pickup by phone that expired two days ago, and one still running.
	book(3, livePhone)
	ownerExec(t, `UPDATE bookings SET starts_at = now() - interval '1 hour', live_from = now() - interval '1 hour' WHERE tenant_id = $1 AND visitor_phone = $2`, f.ID, livePhone)
	for range 2 {
		if r := st.call(t, "/box/v1/pickups", map[string]any{"phone": livePhone}); r.Result != "challenge" {
			t.Fatalf("pickup by phone: %+v", r)
		}
	}
	ownerExec(t, `UPDATE pickup_challenges SET expires_at = now() - interval '2 days' WHERE tenant_id = $1 AND id = (SELECT id FROM pickup_challenges WHERE tenant_id = $1 ORDER BY id LIMIT 1)`, f.ID)
	// A session that expired three days ago (another sign-in of the
	// owner's) and a stale login challenge.
	s.login(t, f.Email, f.Password)
	ownerExec(t, `UPDATE sessions SET expires_at = now() - interval '3 days' WHERE tenant_id = $1 AND id = (SELECT id FROM sessions WHERE tenant_id = $1 ORDER BY created_at DESC, id DESC LIMIT 1)`, f.ID)
	ownerExec(t, `UPDATE login_challenges SET expires_at = now() - interval '3 days' WHERE tenant_id = $1`, f.ID)

	job, err := retention.New(s.app.db, s.app.scope, s.app.retentionConfig(), discardLogger())
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	swept, err := job.Sweep(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if swept.Bookings < 1 || swept.AliasCodes < 1 || swept.MessageBodies < 1 || swept.PickupChallenges < 1 {
		t.Fatalf("swept %+v", swept)
	}
	if _, _, err := janitor.New(s.app.db, s.app.cfg.SessionIdle, time.Hour, discardLogger()).Sweep(ctx); err != nil {
		t.Fatal(err)
	}

	t.Run("OKMessageBodiesPurged", func(t *testing.T) {
		if n := ownerQuery[int64](t, `SELECT count(*) FROM outbox WHERE tenant_id = $1 AND recipient = $2`, f.ID, oldPhone); n != 0 {
			t.Errorf("%d messages still name the old visitor", n)
		}
		purged := ownerQuery[int64](t, `SELECT count(*) FROM outbox WHERE tenant_id = $1 AND purged_at IS NOT NULL AND recipient = 'purged' AND octet_length(payload) = 0 AND status = 'delivered'`, f.ID)
		if purged < 1 {
			t.Fatalf("%d purged delivery records, want at least 1", purged)
		}
		if n := ownerQuery[int64](t, `SELECT count(*) FROM outbox WHERE tenant_id = $1 AND recipient = $2 AND status = 'queued' AND purged_at IS NULL AND octet_length(payload) > 0`, f.ID, recentPhone); n < 1 {
			t.Error("a queued message lost its content")
		}
		msgs := f.Owner.expect(t, 200, "GET", "/api/v1/messages?status=delivered", nil).JSON(t)["items"].([]any)
		found := false
		for _, m := range msgs {
			found = found || m.(map[string]any)["to"] == "purged"
		}
		if !found {
			t.Errorf("the purged message is not listed: %v", msgs)
		}
	})
	t.Run("OKVisitorsAnonymised", func(t *testing.T) {
		b := f.Owner.expect(t, 200, "GET", "/api/v1/bookings/"+old, nil).JSON(t)
		v := b["visitor"].(map[string]any)
		if v["name"] != visitors.AnonymisedName || v["phone"] != nil || b["key_id"] != st.keys[1] || b["status"] != "ended" {
			t.Errorf("old booking %v", b)
		}
		if r := f.Owner.expect(t, 200, "GET", "/api/v1/bookings/"+recent, nil).JSON(t)["visitor"].(map[string]any); r["phone"] != recentPhone {
			t.Errorf("a booking ended 10 days ago was anonymised: %v", r)
		}
		if n := ownerQuery[int64](t, `SELECT count(*) FROM alias_codes WHERE tenant_id = $1 AND id = $2 AND visitor_phone IS NULL AND visitor_anonymised_at IS NOT NULL`, f.ID, alias); n != 1 {
			t.Error("the alias code retired 190 days ago keeps its visitor")
		}
		if n := ownerQuery[int64](t, `SELECT count(*) FROM audit_events WHERE tenant_id = $1 AND action = 'booking.created' AND target = $2`, f.ID, "booking:"+old); n != 1 {
			t.Error("the booking's audit history is gone")
		}
		if n := ownerQuery[int64](t, `SELECT count(*) FROM audit_events WHERE tenant_id = $1 AND action = 'retention.visitors_anonymised'`, f.ID); n != 1 {
			t.Errorf("%d retention entries, want 1", n)
		}
	})
	t.Run("OKChallengesAndSessionsRemoved", func(t *testing.T) {
		if n := ownerQuery[int64](t, `SELECT count(*) FROM pickup_challenges WHERE tenant_id = $1`, f.ID); n != 1 {
			t.Errorf("%d pickup challenges left, want the running one", n)
		}
		if n := ownerQuery[int64](t, `SELECT count(*) FROM sessions WHERE tenant_id = $1 AND expires_at < now() - interval '1 day'`, f.ID); n != 0 {
			t.Errorf("%d expired sessions left", n)
		}
		if n := ownerQuery[int64](t, `SELECT count(*) FROM login_challenges WHERE tenant_id = $1`, f.ID); n != 0 {
			t.Errorf("%d expired login challenges left", n)
		}
	})
	t.Run("OKIdempotent", func(t *testing.T) {
		again, err := job.Sweep(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if again.Bookings != 0 || again.AliasCodes != 0 || again.PickupChallenges != 0 {
			t.Errorf("second sweep changed %+v", again)
		}
	})
	t.Run("OKIdempotencyRecordsExpire", func(t *testing.T) {
		// Redis drops its records after their TTL, which every record
		// carries from the moment it is written; the durable copies in
		// PostgreSQL are swept a day after they were written.
		f.Owner.expect(t, 201, "POST", "/api/v1/locations", map[string]any{"name": "Idem " + uuid.NewString()[:6]}, "Idempotency-Key", uuid.NewString())
		if n := ownerQuery[int64](t, `SELECT count(*) FROM idempotency_answers WHERE tenant_id = $1`, f.ID); n != 1 {
			t.Fatalf("%d durable answers, want 1", n)
		}
		ownerExec(t, `UPDATE idempotency_answers SET created_at = now() - interval '25 hours' WHERE tenant_id = $1`, f.ID)
		f.Owner.expect(t, 201, "POST", "/api/v1/locations", map[string]any{"name": "Idem " + uuid.NewString()[:6]}, "Idempotency-Key", uuid.NewString())
		swept, err := job.Sweep(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if swept.IdempotentAnswers < 1 {
			t.Errorf("swept %+v, want the day-old answer", swept)
		}
		if n := ownerQuery[int64](t, `SELECT count(*) FROM idempotency_answers WHERE tenant_id = $1`, f.ID); n != 1 {
			t.Errorf("%d durable answers left, want the fresh one", n)
		}
		keys, err := s.app.redis.Keys(ctx, "keyrelay:idem:*").Result()
		if err != nil || len(keys) == 0 {
			t.Fatalf("no idempotency record: %v", err)
		}
		for _, k := range keys {
			ttl, err := s.app.redis.TTL(ctx, k).Result()
			if err != nil || ttl <= 0 || ttl > idempotencyTTL {
				t.Errorf("%s: TTL %v (%v), want within (0, %v]", k, ttl, err, idempotencyTTL)
			}
		}
	})
}

func TestRetentionConfig(t *testing.T) {
	for in, want := range map[string]time.Duration{"30d": 30 * 24 * time.Hour, "180d": 180 * 24 * time.Hour, "36h": 36 * time.Hour} {
		if got, err := retentionPeriod(in); err != nil || got != want {
			t.Errorf("%s: %v %v, want %v", in, got, err, want)
		}
	}
	for _, bad := range []string{"0d", "-1d", "10m", "thirty", "d"} {
		if _, err := retentionPeriod(bad); err == nil {
			t.Errorf("%s accepted", bad)
		}
	}
	cfg, err := LoadConfig(func(k string) string {
		return map[string]string{"KEYRELAY_STATE_DIR": t.TempDir(), "KEYRELAY_RETAIN_VISITORS": "90d"}[k]
	})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.RetainVisitors != 90*24*time.Hour || cfg.RetainMessageBodies != 30*24*time.Hour {
		t.Errorf("retention %v / %v", cfg.RetainVisitors, cfg.RetainMessageBodies)
	}
	if _, err := LoadConfig(func(k string) string {
		return map[string]string{"KEYRELAY_STATE_DIR": t.TempDir(), "KEYRELAY_RETAIN_MESSAGE_BODIES": "5m"}[k]
	}); err == nil || !strings.Contains(err.Error(), "KEYRELAY_RETAIN_MESSAGE_BODIES") {
		t.Errorf("a 5-minute retention was accepted: %v", err)
	}
}
