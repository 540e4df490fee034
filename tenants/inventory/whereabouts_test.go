package inventory_test

import (
	"context"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/keyrelay/keyrelay/tenants"
	"github.com/keyrelay/keyrelay/tenants/inventory"
)

func setWhereabouts(t *testing.T, p tenants.Principal, id uuid.UUID, in inventory.WhereaboutsInput) (inventory.Key, error) {
	t.Helper()
	return as(t, p, func(ctx context.Context) (inventory.Key, error) { return svc.SetWhereabouts(ctx, id, in) })
}

func inBin(b inventory.Box, bin int) inventory.WhereaboutsInput {
	return inventory.WhereaboutsInput{State: inventory.InBin, BoxID: ptr(b.ID.String()), Bin: &bin}
}

func TestSetWhereabouts(t *testing.T) {
	tn := newTenant(t)
	airport := location(t, tn.Owner, "Airport")
	station := location(t, tn.Owner, "Station")
	lobby := box(t, tn.Owner, "Lobby", &airport.ID, 6)
	kiosk := box(t, tn.Owner, "Kiosk", &station.ID, 6)
	desk := tn.staff(airport.ID)
	room := newKey(t, tn.Owner, "Room 1", "ROOM-1", lobby, 1)
	suite := newKey(t, tn.Owner, "Suite", "SUITE-1", lobby, 2)
	car := newKey(t, tn.Owner, "Car 1", "CAR-1", kiosk, 1)

	audited := func(t *testing.T, action, target, actor string, details map[string]string) {
		t.Helper()
		q := "SELECT 1 FROM audit_events WHERE tenant_id = $1 AND action = $2 AND target = $3 AND actor = $4"
		args := []any{tn.ID, action, target, actor}
		for k, v := range details {
			args = append(args, k, v)
			q += " AND details->>$" + strconv.Itoa(len(args)-1) + " = $" + strconv.Itoa(len(args))
		}
		if n := testDB.Exec(t, q, args...); n == 0 {
			t.Errorf("no %s entry on %s by %s with %v", action, target, actor, details)
		}
	}

	t.Run("OKInAnotherBin", func(t *testing.T) {
		in := inBin(lobby, 4)
		in.Note = "found on the counter, put in bin 4"
		k, err := setWhereabouts(t, desk, room.ID, in)
		if err != nil {
			t.Fatal(err)
		}
		if k.State != inventory.InBin || *k.BoxID != lobby.ID || *k.Bin != 4 || k.HomeBin != 1 || k.HomeBoxID != lobby.ID {
			t.Fatalf("after the correction: %+v", k)
		}
		if got := getKey(t, tn.Owner, room.ID); got.State != inventory.InBin || *got.Bin != 4 {
			t.Fatalf("stored: %+v", got)
		}
		audited(t, "key.whereabouts_set", "key:"+room.ID.String(), desk.Actor(), map[string]string{
			"from": "in_bin box:" + lobby.ID.String() + " bin:1", "to": "in_bin box:" + lobby.ID.String() + " bin:4", "note": in.Note})
	})
	t.Run("OKOutAtTheDesk", func(t *testing.T) {
		k, err := setWhereabouts(t, desk, room.ID, inventory.WhereaboutsInput{State: inventory.Out})
		if err != nil {
			t.Fatal(err)
		}
		w := k.WhereaboutsAt(time.Now())
		if w.State != inventory.Out || w.Since == nil || w.AccessID != nil || w.Until != nil || w.BoxID != nil {
			t.Fatalf("out at the desk: %+v", w)
		}
		if n := testDB.Exec(t, "SELECT 1 FROM keys WHERE tenant_id = $1 AND id = $2 AND out_by = $3", tn.ID, room.ID, desk.Actor()); n != 1 {
			t.Error("the key is not recorded as held by the member of staff")
		}
		audited(t, "key.whereabouts_set", "key:"+room.ID.String(), desk.Actor(), map[string]string{"to": "out"})
	})
	t.Run("OKOutWithAVisitor", func(t *testing.T) {
		access := uuid.New()
		ended := time.Now().Add(-time.Hour).UTC().Truncate(time.Second)
		testDB.Exec(t, "INSERT INTO test_accesses (tenant_id, key_id, id, ends_at) VALUES ($1, $2, $3, $4)", tn.ID, room.ID, access, ended)
		defer testDB.Exec(t, "DELETE FROM test_accesses WHERE id = $1", access)
		before := getKey(t, tn.Owner, room.ID)
		k, err := setWhereabouts(t, desk, room.ID, inventory.WhereaboutsInput{State: inventory.Out, AccessID: ptr(access.String())})
		if err != nil {
			t.Fatal(err)
		}
		// Handed to a visitor whose access has ended: overdue, and still out
		// since it left.
		w := k.WhereaboutsAt(time.Now())
		if w.State != inventory.Overdue || *w.AccessID != access || !w.Until.Equal(ended) || !w.Since.Equal(*before.OutSince) {
			t.Fatalf("out with a visitor: %+v (was out since %v)", w, before.OutSince)
		}
		audited(t, "key.whereabouts_set", "key:"+room.ID.String(), desk.Actor(), map[string]string{"from": "out", "to": "out booking:" + access.String()})
	})
	t.Run("ErrAccessOfAnotherKey", func(t *testing.T) {
		access := uuid.New()
		testDB.Exec(t, "INSERT INTO test_accesses (tenant_id, key_id, id) VALUES ($1, $2, $3)", tn.ID, suite.ID, access)
		defer testDB.Exec(t, "DELETE FROM test_accesses WHERE id = $1", access)
		_, err := setWhereabouts(t, desk, room.ID, inventory.WhereaboutsInput{State: inventory.Out, AccessID: ptr(access.String())})
		wantFields(t, err, "access_id")
	})
	t.Run("OKMissing", func(t *testing.T) {
		k, err := setWhereabouts(t, desk, room.ID, inventory.WhereaboutsInput{State: inventory.Missing, Note: "not at the desk"})
		if err != nil {
			t.Fatal(err)
		}
		if k.State != inventory.Missing || k.BoxID != nil || k.Bin != nil || k.OutAccessID != nil || k.OutSince != nil || k.OutUntil != nil {
			t.Fatalf("missing: %+v", k)
		}
		if got := getKey(t, tn.Owner, room.ID); got.WhereaboutsAt(time.Now()).State != inventory.Missing {
			t.Fatalf("stored: %+v", got)
		}
	})
	t.Run("ErrBinHoldsAnotherKey", func(t *testing.T) {
		_, err := setWhereabouts(t, desk, room.ID, inBin(lobby, 2))
		if de := wantErr(t, err, tenants.EConflict); !strings.Contains(de.Message, "Suite") {
			t.Errorf("the conflict does not name the key in the bin: %s", de.Message)
		}
		if got := getKey(t, tn.Owner, room.ID); got.State != inventory.Missing {
			t.Fatalf("a refused correction changed the key: %+v", got)
		}
	})
	t.Run("ErrInvalid", func(t *testing.T) {
		for _, tc := range []struct {
			name   string
			in     inventory.WhereaboutsInput
			fields []string
		}{
			{"ErrNoState", inventory.WhereaboutsInput{}, []string{"state"}},
			{"ErrOverdueIsNotSet", inventory.WhereaboutsInput{State: inventory.Overdue}, []string{"state"}},
			{"ErrInBinWithoutPlace", inventory.WhereaboutsInput{State: inventory.InBin}, []string{"box_id", "bin"}},
			{"ErrInBinBadPlace", inventory.WhereaboutsInput{State: inventory.InBin, BoxID: ptr("lobby"), Bin: ptr(0)}, []string{"box_id", "bin"}},
			{"ErrInBinWithAccess", inventory.WhereaboutsInput{State: inventory.InBin, BoxID: ptr(lobby.ID.String()), Bin: ptr(3), AccessID: ptr(uuid.NewString())}, []string{"access_id"}},
			{"ErrOutWithBin", inventory.WhereaboutsInput{State: inventory.Out, Bin: ptr(3), AccessID: ptr("x")}, []string{"bin", "access_id"}},
			{"ErrMissingWithPlace", inventory.WhereaboutsInput{State: inventory.Missing, BoxID: ptr(lobby.ID.String()), AccessID: ptr(uuid.NewString())}, []string{"box_id", "access_id"}},
			{"ErrNoteTooLong", inventory.WhereaboutsInput{State: inventory.Missing, Note: strings.Repeat("n", 501)}, []string{"note"}},
		} {
			t.Run(tc.name, func(t *testing.T) {
				_, err := setWhereabouts(t, desk, room.ID, tc.in)
				wantFields(t, err, tc.fields...)
			})
		}
		_, err := setWhereabouts(t, desk, room.ID, inBin(lobby, 7))
		wantFields(t, err, "bin")
	})
	t.Run("ErrBoxOfAnotherTenant", func(t *testing.T) {
		other := newTenant(t)
		theirs := box(t, other.Owner, "Theirs", nil, 6)
		_, err := setWhereabouts(t, tn.Owner, room.ID, inBin(theirs, 3))
		wantErr(t, err, tenants.ENotFound)
		_, err = setWhereabouts(t, other.Owner, room.ID, inBin(theirs, 3))
		wantErr(t, err, tenants.ENotFound)
	})
	t.Run("LimitedStaffKeepToTheirLocations", func(t *testing.T) {
		_, err := setWhereabouts(t, desk, room.ID, inBin(kiosk, 3))
		wantErr(t, err, tenants.ENotFound)
		_, err = setWhereabouts(t, desk, car.ID, inventory.WhereaboutsInput{State: inventory.Missing})
		wantErr(t, err, tenants.ENotFound)
		// The owner may put the airport's key in the station's box.
		if _, err := setWhereabouts(t, tn.Owner, room.ID, inBin(kiosk, 3)); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("ErrVisitor", func(t *testing.T) {
		visitor := tenants.Principal{TenantID: tn.ID, UserID: uuid.New(), Role: tenants.RoleVisitor}
		_, err := setWhereabouts(t, visitor, room.ID, inventory.WhereaboutsInput{State: inventory.Missing})
		wantErr(t, err, tenants.EForbidden)
	})
	t.Run("ReturnRemindersFollowTheKey", func(t *testing.T) {
		access := uuid.New()
		testDB.Exec(t, "INSERT INTO test_accesses (tenant_id, key_id, id) VALUES ($1, $2, $3)", tn.ID, suite.ID, access)
		defer testDB.Exec(t, "DELETE FROM test_accesses WHERE id = $1", access)
		told := func(what string) int64 {
			return testDB.Exec(t, "SELECT 1 FROM test_reminders WHERE tenant_id = $1 AND access_id = $2 AND what = $3", tn.ID, access, what)
		}
		for _, in := range []inventory.WhereaboutsInput{
			{State: inventory.Out, AccessID: ptr(access.String())}, // handed over: taken
			{State: inventory.Out, AccessID: ptr(access.String())}, // the same again: nothing
			inBin(lobby, 2), // back: returned
			{State: inventory.Out, AccessID: ptr(access.String())}, // taken
			{State: inventory.Missing},                             // lost: nobody knows it is back
		} {
			if _, err := setWhereabouts(t, desk, suite.ID, in); err != nil {
				t.Fatal(err)
			}
		}
		if taken, returned := told("taken"), told("returned"); taken != 2 || returned != 1 {
			t.Errorf("bookings were told taken %d, returned %d times; want 2 and 1", taken, returned)
		}
		if _, err := setWhereabouts(t, desk, suite.ID, inBin(lobby, 2)); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("ResolvesTheKeysFlags", func(t *testing.T) {
		flag := func(b inventory.Box, bin int, kind string, key *uuid.UUID) uuid.UUID {
			id := uuid.New()
			testDB.Exec(t, "INSERT INTO inventory_flags (tenant_id, id, box_id, bin, kind, key_id, detail) VALUES ($1, $2, $3, $4, $5, $6, 'test')", tn.ID, id, b.ID, bin, kind, key)
			return id
		}
		open := func(id uuid.UUID) bool {
			return testDB.Exec(t, "SELECT 1 FROM inventory_flags WHERE tenant_id = $1 AND id = $2 AND resolved_at IS NULL", tn.ID, id) == 1
		}
		missing := flag(lobby, 1, "missing_key", &room.ID)
		wrongBin := flag(lobby, 5, "wrong_bin", &room.ID)
		elsewhere := flag(kiosk, 4, "wrong_box", &room.ID) // a box the desk does not see
		stranger := flag(lobby, 6, "unknown_fob", nil)
		other := flag(lobby, 2, "missing_key", &suite.ID)

		// Declared missing: the wrong_bin flag is answered, missing_key not.
		if _, err := setWhereabouts(t, tn.Owner, room.ID, inventory.WhereaboutsInput{State: inventory.Missing}); err != nil {
			t.Fatal(err)
		}
		if open(wrongBin) || !open(missing) || open(elsewhere) {
			t.Errorf("after declaring the key missing, open: wrong_bin %v, missing_key %v, wrong_box %v", open(wrongBin), open(missing), open(elsewhere))
		}
		// Found, by the desk: its missing_key flag is answered.
		elsewhere = flag(kiosk, 4, "wrong_box", &room.ID)
		if _, err := setWhereabouts(t, desk, room.ID, inventory.WhereaboutsInput{State: inventory.InBin, BoxID: ptr(lobby.ID.String()), Bin: ptr(1), Note: "back home"}); err != nil {
			t.Fatal(err)
		}
		if open(missing) {
			t.Error("the key's missing_key flag is still open")
		}
		if !open(elsewhere) {
			t.Error("a flag in a box the desk does not see was resolved by the desk")
		}
		if !open(stranger) || !open(other) {
			t.Error("flags about other fobs or keys were resolved")
		}
		audited(t, "inventory.flag_resolved", "box:"+lobby.ID.String(), desk.Actor(), map[string]string{"flag": missing.String(), "note": "back home"})
		audited(t, "key.whereabouts_set", "key:"+room.ID.String(), desk.Actor(), map[string]string{"resolved_flags": missing.String()})
		// Flags list: what is left for the lobby.
		fs := must(t, tn.Owner, func(ctx context.Context) ([]inventory.Flag, error) { return svc.OpenFlags(ctx, lobby.ID) })
		if len(fs) != 2 || fs[0].ID == missing || fs[1].ID == missing {
			t.Errorf("open lobby flags: %+v", fs)
		}
	})
}
