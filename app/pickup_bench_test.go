package main

import (
	"context"
	"testing"
	"time"

	"github.com/keyrelay/keyrelay/tenants/exchange"
)

// BenchmarkPickupCode is a valid-code pickup end to end in process: signed
// box request, device check, guard, lookup, audit entry, commit. For the
// profile of where a pickup's time goes (deploy/bench measures it against
// pgbench with a load tool):
//
//	go test -run '^$' -bench PickupCode -benchtime 3000x -cpuprofile /tmp/pickup.prof ./app/
func BenchmarkPickupCode(b *testing.B) {
	s := startServer(b)
	f := s.signup(b)
	st := s.newSite(b, f, 1)
	_, code := st.book(b, 1, -time.Minute, 24*time.Hour)
	ctx := context.Background()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			var r exchange.Result
			if err := st.box.Call(ctx, 200, "POST", "/box/v1/pickups", map[string]any{"code": code}, &r); err != nil || r.Result != "open" {
				b.Errorf("pickup: %v %+v", err, r)
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "pickups/s")
}
