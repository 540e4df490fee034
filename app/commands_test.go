package main

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/keyrelay/keyrelay/firmware/box"
	"github.com/keyrelay/keyrelay/firmware/commands"
)

// poll runs one long poll of b in the background.
func poll(b *box.Client, wait int) <-chan commands.List {
	out := make(chan commands.List, 1)
	go func() {
		var l commands.List
		if err := b.Call(context.Background(), 200, "GET", fmt.Sprintf("/box/v1/commands?wait=%d", wait), nil, &l); err != nil {
			l.Commands = nil
			l.ServerTime = time.Time{}
		}
		out <- l
	}()
	return out
}

func TestRemoteRelease(t *testing.T) {
	s := startServer(t)
	// A second replica on the same database and Redis: the box waits on
	// one, staff act on the other.
	s2 := startServer(t, func(c *Config) { c.LimitPrefix = s.app.cfg.LimitPrefix })
	f := s.signup(t)
	boxID := insertBox(t, f.ID, "MS5")
	b := s.provisionBox(t, f, boxID)
	ctx := context.Background()

	waiting := poll(b, 25)
	time.Sleep(100 * time.Millisecond) // let the poll subscribe first; a late one finds the row anyway
	owner2 := *f.Owner
	s2c := owner2
	s2c.s = s2
	rel := s2c.expect(t, 202, "POST", "/api/v1/boxes/"+boxID.String()+"/bins/3/release", map[string]any{"reason": "inventory check"}).JSON(t)
	var l commands.List
	// The command wakes the poll held by the other replica (Redis
	// pub/sub); without the wake-up the poll would answer only at the end
	// of its 25 s wait, with its last look. The margin is wide: this
	// checks the path, not its speed (deploy/bench measures that).
	select {
	case l = <-waiting:
	case <-time.After(15 * time.Second):
		t.Fatal("the poll was not woken by the command")
	}
	if len(l.Commands) != 1 || l.Commands[0].ID.String() != rel["command_id"] || l.Commands[0].Kind != commands.OpenBin {
		t.Fatalf("poll got %+v, want the open-bin command %v", l.Commands, rel["command_id"])
	}
	if by := ownerQuery[string](t, `SELECT created_by FROM box_commands WHERE id = $1`, l.Commands[0].ID); by != "user:"+f.OwnerID.String() {
		t.Errorf("the remote release is recorded as %q's, want the owner's", by)
	}
	var payload struct{ Bin int }
	json.Unmarshal(l.Commands[0].Payload, &payload)
	if payload.Bin != 3 {
		t.Errorf("payload %s, want bin 3", l.Commands[0].Payload)
	}
	if exp, _ := time.Parse(time.RFC3339, rel["expires_at"].(string)); time.Until(exp) > time.Minute {
		t.Errorf("an open-bin command lives until %v, more than a minute", exp)
	}

	// Until acknowledged, it is handed out again (at least once).
	var again commands.List
	if err := b.Call(ctx, 200, "GET", "/box/v1/commands?wait=0", nil, &again); err != nil || len(again.Commands) != 1 {
		t.Fatalf("before the ack: %v %+v", err, again)
	}
	if err := b.Call(ctx, 204, "POST", "/box/v1/commands/"+l.Commands[0].ID.String()+"/ack", map[string]any{"result": "done"}, nil); err != nil {
		t.Fatal(err)
	}
	if err := b.Call(ctx, 204, "POST", "/box/v1/commands/"+l.Commands[0].ID.String()+"/ack", map[string]any{"result": "done"}, nil); err != nil {
		t.Fatalf("a repeated ack: %v", err)
	}
	var after commands.List
	if err := b.Call(ctx, 200, "GET", "/box/v1/commands?wait=0", nil, &after); err != nil || len(after.Commands) != 0 {
		t.Fatalf("after the ack: %v %+v", err, after)
	}
	audit := f.Owner.expect(t, 200, "GET", "/api/v1/audit?action=bin.release_requested", nil).JSON(t)["items"].([]any)
	if len(audit) != 1 || audit[0].(map[string]any)["details"].(map[string]any)["reason"] != "inventory check" {
		t.Errorf("audit: %v", audit)
	}
	if done := f.Owner.expect(t, 200, "GET", "/api/v1/audit?action=box.command_done", nil).JSON(t)["items"].([]any); len(done) != 1 {
		t.Errorf("the box's ack is not audited: %v", done)
	}

	t.Run("ExpiredNeverDelivered", func(t *testing.T) {
		r := f.Owner.expect(t, 202, "POST", "/api/v1/boxes/"+boxID.String()+"/bins/1/release", nil).JSON(t)
		ownerExec(t, `UPDATE box_commands SET expires_at = created_at + interval '1 millisecond' WHERE id = $1`, r["command_id"])
		var l commands.List
		if err := b.Call(ctx, 200, "GET", "/box/v1/commands?wait=0", nil, &l); err != nil || len(l.Commands) != 0 {
			t.Fatalf("an expired open-bin command was handed out: %v %+v", err, l)
		}
	})
	t.Run("ErrBadInput", func(t *testing.T) {
		problemOf(t, f.Owner.do(t, "POST", "/api/v1/boxes/"+boxID.String()+"/bins/13/release", nil), 404)
		problemOf(t, f.Owner.do(t, "POST", "/api/v1/boxes/"+boxID.String()+"/bins/0/release", nil), 404)
		problemOf(t, f.Owner.do(t, "POST", "/api/v1/boxes/"+uuid.NewString()+"/bins/1/release", nil), 404)
		problemOf(t, f.Owner.do(t, "POST", "/api/v1/boxes/"+boxID.String()+"/bins/1/release", map[string]any{"reason": string(make([]byte, 501))}), 422)
		unprovisioned := insertBox(t, f.ID, "MS3")
		problemOf(t, f.Owner.do(t, "POST", "/api/v1/boxes/"+unprovisioned.String()+"/bins/1/release", nil), 409)
		if err := b.Call(ctx, 422, "GET", "/box/v1/commands?wait=99", nil, nil); err != nil {
			t.Error(err)
		}
		if err := b.Call(ctx, 404, "POST", "/box/v1/commands/"+uuid.NewString()+"/ack", map[string]any{"result": "done"}, nil); err != nil {
			t.Error(err)
		}
	})
	t.Run("ErrOtherTenant", func(t *testing.T) {
		g := s.signup(t)
		problemOf(t, g.Owner.do(t, "POST", "/api/v1/boxes/"+boxID.String()+"/bins/1/release", nil), 404)
		// Another tenant's box cannot see or acknowledge this box's commands.
		gb := s.provisionBox(t, g, insertBox(t, g.ID, "MS5"))
		r := f.Owner.expect(t, 202, "POST", "/api/v1/boxes/"+boxID.String()+"/bins/2/release", nil).JSON(t)
		var l commands.List
		if err := gb.Call(ctx, 200, "GET", "/box/v1/commands?wait=0", nil, &l); err != nil || len(l.Commands) != 0 {
			t.Fatalf("another tenant's box got %v %+v", err, l)
		}
		if err := gb.Call(ctx, 404, "POST", "/box/v1/commands/"+r["command_id"].(string)+"/ack", map[string]any{"result": "done"}, nil); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("RevokeTakesCommands", func(t *testing.T) {
		// A stolen box's credential revoked: the commands waiting for it
		// go too, so neither a poll the thief holds nor the replacement
		// box provisioned next opens a bin staff asked for before.
		f.Owner.expect(t, 202, "POST", "/api/v1/boxes/"+boxID.String()+"/bins/4/release", nil)
		f.Owner.expect(t, 204, "DELETE", "/api/v1/boxes/"+boxID.String()+"/credential", nil)
		replacement := s.provisionBox(t, f, boxID)
		var l commands.List
		if err := replacement.Call(ctx, 200, "GET", "/box/v1/commands?wait=0", nil, &l); err != nil || len(l.Commands) != 0 {
			t.Fatalf("after the revoke: %v %+v, want no command", err, l)
		}
	})
}
