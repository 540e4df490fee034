package main

import (
	"testing"
)

// BenchmarkLogin measures sign-ins per second through the real HTTP stack
// (rate limiter, candidate lookup, argon2id, session insert). Compare with
// BenchmarkArgon2id in tenants/accounts, the hashing ceiling:
//
//	go test -run x -bench 'Login' -benchtime 5s ./app/
//	go test -run x -bench 'Argon2id' -benchtime 5s ./tenants/accounts/
func BenchmarkLogin(b *testing.B) {
	s := startServer(b)
	f := s.signup(b)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		c := s.client()
		for pb.Next() {
			if r := c.do(b, "POST", "/api/v1/auth/login", map[string]any{"email": f.Email, "password": f.Password}); r.Status != 200 {
				b.Fatalf("login: %d %s", r.Status, r.Body)
			}
		}
	})
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "logins/s")
}
