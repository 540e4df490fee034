package main

import (
	"context"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/google/uuid"

	"github.com/keyrelay/keyrelay/tenants/exchange"
)

// take reports the keys of bins ns taken from st's box, so that they are
// out and may come back.
func (st *site) take(t *testing.T, ns ...int) {
	t.Helper()
	evs := make([]exchange.Event, len(ns))
	for i, n := range ns {
		evs[i] = exchange.Event{Type: "key_taken", Bin: n}
	}
	st.events(t, evs...)
}

func (st *site) dropoff(t *testing.T, fob string) exchange.Result {
	t.Helper()
	return st.call(t, "/box/v1/dropoffs", exchange.DropoffInput{FobSerial: fob})
}

func (st *site) openFlags(t *testing.T) []map[string]any {
	t.Helper()
	var out []map[string]any
	for _, it := range st.f.Owner.expect(t, 200, "GET", "/api/v1/boxes/"+st.boxID+"/flags", nil).JSON(t)["items"].([]any) {
		out = append(out, it.(map[string]any))
	}
	return out
}

func wantFlags(t *testing.T, r exchange.Recorded, kinds ...string) {
	t.Helper()
	var got []string
	for _, f := range r.Flags {
		got = append(got, f.Kind)
	}
	if !slices.Equal(got, kinds) {
		t.Fatalf("flags %+v, want kinds %v", r.Flags, kinds)
	}
}

func wantInBin(t *testing.T, w map[string]any, boxID string, bin int) {
	t.Helper()
	if w["state"] != "in_bin" || w["box_id"] != boxID || w["bin"] != float64(bin) {
		t.Fatalf("whereabouts %v, want in bin %d of box %s", w, bin, boxID)
	}
}

// A key coming back is compared with where it was sent: the bin its
// dropoff was given, else its home bin. The records follow the box either
// way; a key put elsewhere is flagged to the tenant.
func TestReturnsReconciled(t *testing.T) {
	s := startServer(t)
	f := s.signup(t)
	a := s.newSite(t, f, 1, 2, 3, 4, 5)
	b := s.newSite(t, f) // another box of the tenant, no keys of its own
	closed := func(st *site, bin int, fob string) exchange.Recorded {
		return st.events(t, exchange.Event{Type: "bin_closed", Bin: bin, FobSerial: &fob})
	}

	t.Run("OKAssignedBin", func(t *testing.T) {
		a.take(t, 1)
		wantOpen(t, a.dropoff(t, a.fobs[1]), 1)
		wantFlags(t, closed(a, 1, a.fobs[1]))
		wantInBin(t, a.keyState(t, 1), a.boxID, 1)
	})
	t.Run("OKAssignedBinOfAnotherBox", func(t *testing.T) {
		a.take(t, 2)
		r := b.dropoff(t, a.fobs[2])
		if r.Result != "open" || r.Bin == nil {
			t.Fatalf("dropoff at another box: %+v", r)
		}
		wantFlags(t, closed(b, *r.Bin, a.fobs[2]))
		wantInBin(t, a.keyState(t, 2), b.boxID, *r.Bin)
	})
	t.Run("OKHomeBinWithoutDropoff", func(t *testing.T) {
		a.take(t, 1)
		wantFlags(t, closed(a, 1, a.fobs[1]))
	})
	t.Run("WrongBin", func(t *testing.T) {
		a.take(t, 3)
		wantOpen(t, a.dropoff(t, a.fobs[3]), 3)
		r := closed(a, 9, a.fobs[3])
		wantFlags(t, r, "wrong_bin")
		if f := r.Flags[0]; f.Bin != 9 || f.KeyID == nil || f.KeyID.String() != a.keys[3] || !strings.Contains(f.Detail, "given bin 3") {
			t.Errorf("flag %+v", f)
		}
		wantInBin(t, a.keyState(t, 3), a.boxID, 9)
		if fl := a.openFlags(t); len(fl) != 1 || fl[0]["kind"] != "wrong_bin" || fl[0]["key_id"] != a.keys[3] || fl[0]["bin"] != float64(9) {
			t.Errorf("open flags of the box: %v", fl)
		}
	})
	t.Run("WrongBox", func(t *testing.T) {
		a.take(t, 4)
		wantOpen(t, a.dropoff(t, a.fobs[4]), 4)
		r := closed(b, 7, a.fobs[4])
		wantFlags(t, r, "wrong_box")
		if !strings.Contains(r.Flags[0].Detail, "given bin 4 of box") {
			t.Errorf("flag %+v", r.Flags[0])
		}
		wantInBin(t, a.keyState(t, 4), b.boxID, 7)
		if fl := b.openFlags(t); len(fl) != 1 || fl[0]["kind"] != "wrong_box" || fl[0]["key_id"] != a.keys[4] {
			t.Errorf("open flags of the box it turned up in: %v", fl)
		}
	})
	t.Run("WrongBinWithoutDropoff", func(t *testing.T) {
		a.take(t, 5)
		r := closed(a, 11, a.fobs[5])
		wantFlags(t, r, "wrong_bin")
		if !strings.Contains(r.Flags[0].Detail, "home bin 5") {
			t.Errorf("flag %+v", r.Flags[0])
		}
		wantInBin(t, a.keyState(t, 5), a.boxID, 11)
	})
	t.Run("WrongBoxWithoutDropoff", func(t *testing.T) {
		// Key 2 is in box b since its dropoff there; taken from b, it turns
		// up in a bin of a other than its home.
		b.take(t, int(a.keyState(t, 2)["bin"].(float64)))
		wantFlags(t, closed(a, 12, a.fobs[2]), "wrong_bin")
		// Taken again and back in b, where it was not sent.
		a.take(t, 12)
		wantFlags(t, closed(b, 5, a.fobs[2]), "wrong_box")
	})

	alerts := 0
	for _, m := range s.outboxOf(t, f.ID) {
		if m.Kind == "inventory_flag" {
			alerts++
		}
	}
	if alerts != 5 {
		t.Errorf("%d inventory alerts, want 5 (one per flag)", alerts)
	}
}

// The bin a dropoff is given is held for that key until it expires: a
// second dropoff at the box gets another bin, even at the same moment,
// and the same key asking again gets the same bin.
func TestDropoffBinsHeld(t *testing.T) {
	s := startServer(t)
	f := s.signup(t)
	a := s.newSite(t, f, 1, 2, 3, 4, 5, 6, 7, 8)
	b := s.newSite(t, f)
	a.take(t, 1, 2, 3, 4, 5, 6, 7, 8)

	var first, second int
	t.Run("OKHeldForItsKey", func(t *testing.T) {
		r1, r2 := b.dropoff(t, a.fobs[1]), b.dropoff(t, a.fobs[2])
		if r1.Bin == nil || r2.Bin == nil || *r1.Bin == *r2.Bin {
			t.Fatalf("two dropoffs at one box: %+v, %+v", r1, r2)
		}
		first, second = *r1.Bin, *r2.Bin
		wantOpen(t, b.dropoff(t, a.fobs[1]), first)
	})
	t.Run("OKConcurrentDropoffsGetDistinctBins", func(t *testing.T) {
		fobs := []string{a.fobs[3], a.fobs[4], a.fobs[5], a.fobs[6], a.fobs[7], a.fobs[8]}
		bins := make([]int, len(fobs))
		var wg sync.WaitGroup
		errs := make(chan error, len(fobs))
		for i, fob := range fobs {
			wg.Go(func() {
				var r exchange.Result
				if err := b.box.Call(context.Background(), 200, "POST", "/box/v1/dropoffs", exchange.DropoffInput{FobSerial: fob}, &r); err != nil {
					errs <- err
					return
				}
				if r.Result != "open" || r.Bin == nil {
					errs <- &unexpected{r}
					return
				}
				bins[i] = *r.Bin
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatal(err)
		}
		seen := map[int]bool{first: true, second: true}
		for _, n := range bins {
			if seen[n] {
				t.Fatalf("bins %v (and %d, %d held already): one given twice", bins, first, second)
			}
			seen[n] = true
		}
	})
	t.Run("OKExpiredHoldIsFree", func(t *testing.T) {
		small := invID(t, f.Owner, "/api/v1/boxes", invBox("Small", "", 2))
		c := &site{s: s, f: f, boxID: small, box: s.provisionBox(t, f, uuid.MustParse(small))}
		wantOpen(t, c.dropoff(t, a.fobs[1]), 1)
		wantOpen(t, c.dropoff(t, a.fobs[2]), 2)
		wantDenied(t, c.dropoff(t, a.fobs[3]), exchange.NoFreeBin)
		ownerExec(t, `UPDATE dropoff_assignments SET expires_at = now() - interval '1 second' WHERE tenant_id = $1 AND key_id = $2`, f.ID, a.keys[1])
		wantOpen(t, c.dropoff(t, a.fobs[3]), 1)
	})
}

type unexpected struct{ r exchange.Result }

func (u *unexpected) Error() string { return "unexpected answer: " + u.r.Result + " " + u.r.Reason }
