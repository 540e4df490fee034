package accounts

import (
	"context"
	"runtime"
	"testing"
	"time"
)

// BenchmarkArgon2id is the ceiling for logins/s: bare argon2id verifications
// with the production parameters, as many at once as there are CPUs.
//
//	go test -run x -bench Argon2id ./tenants/accounts/
func BenchmarkArgon2id(b *testing.B) {
	h := NewHasher(runtime.GOMAXPROCS(0), time.Minute)
	enc, err := h.Hash(context.Background(), "correct-horse-42")
	if err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if ok, err := h.Verify(context.Background(), enc, "correct-horse-42"); !ok || err != nil {
				b.Fatal("verify failed")
			}
		}
	})
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "hashes/s")
}
