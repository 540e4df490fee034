package main

import (
	"fmt"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
)

// pgbench substitutes :name anywhere in a statement, string literals
// included; a stray one fails the run ("bind message supplies …"). Only
// the variables the scripts set themselves may appear.
func TestScriptVariables(t *testing.T) {
	id := uuid.New()
	re := regexp.MustCompile(`(?:^|[^:]):'?([A-Za-z_][A-Za-z0-9_]*)`) // "::type" is a cast, left alone
	for name, s := range map[string]string{
		"create":           createScript(id, id, id, "krk_secret", false),
		"create+webhooks":  createScript(id, id, id, "krk_secret", true),
		"pickup":           pickupScript(id, id, id, id, id, []byte{1, 2, 3}, 4, false),
		"pickup pipelined": pickupScript(id, id, id, id, id, []byte{1, 2, 3}, 4, true),
	} {
		if strings.Contains(s, "{START}") || strings.Contains(s, "{END}") {
			t.Errorf("%s: a placeholder is left:\n%s", name, s)
		}
		defined := map[string]bool{}
		for _, m := range regexp.MustCompile(`\\set (\w+)|AS (\w+) \\gset`).FindAllStringSubmatch(s, -1) {
			defined[m[1]+m[2]] = true
		}
		for _, m := range re.FindAllStringSubmatch(s, -1) {
			if !defined[m[1]] {
				t.Errorf("%s: pgbench would read :%s as a variable", name, m[1])
			}
		}
		first := strings.TrimSpace(strings.SplitN(strings.TrimPrefix(s, "\\startpipeline\n"), "\n", 2)[0])
		if !strings.HasPrefix(first, `\set`) && first != "BEGIN;" {
			t.Errorf("%s: does not open its transaction first", name)
		}
	}
}

// The EXPLAIN of the README must be of the query the server sends.
func TestListSQLFollowsBookings(t *testing.T) {
	src, err := readAll("../../tenants/bookings/manage.go", "../../tenants/bookings/bookings.go")
	if err != nil {
		t.Skip("tenants/bookings not beside the bench:", err)
	}
	for _, frag := range []string{
		"FROM bookings bk\n\tJOIN keys k ON k.tenant_id = bk.tenant_id AND k.id = bk.key_id",
		"JOIN boxes bx ON bx.tenant_id = k.tenant_id AND bx.id = k.home_box_id",
		"LEFT JOIN boxes cb ON cb.tenant_id = k.tenant_id AND cb.id = k.box_id AND k.state = 'in_bin'",
		"CASE WHEN cb.id IS NULL THEN bx.id ELSE cb.id END AS box_id, CASE WHEN cb.id IS NULL THEN bx.name ELSE cb.name END AS box_name,\n\t\tCASE WHEN cb.id IS NULL THEN bx.address ELSE cb.address END AS box_address, CASE WHEN cb.id IS NULL THEN bx.timezone ELSE cb.timezone END AS box_timezone",
		`" ORDER BY bk.id DESC LIMIT @limit"`,
	} {
		if !strings.Contains(string(src), frag) {
			t.Errorf("tenants/bookings no longer has %q: update listSQL", frag)
		}
	}
}

// readAll reads files as one text (the list query is built from pieces
// in more than one file).
func readAll(paths ...string) ([]byte, error) {
	var all []byte
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil {
			return nil, err
		}
		all = append(all, b...)
	}
	return all, nil
}

// TestLogLatencies: the p99 of a fixed-rate pgbench run comes from its
// transaction log, past its first second; skipped transactions and stray
// lines are left out.
func TestLogLatencies(t *testing.T) {
	var log strings.Builder
	fmt.Fprintf(&log, "0 0 900000 0 1765140000 500000 899000\n") // the warm-up
	for i := range 100 {
		fmt.Fprintf(&log, "%d %d %d 0 1765140001 %d 12\n", i%16, i+1, 1000*(i+1), 500000+i)
	}
	log.WriteString("3 101 -1 0 1765140002 0 5000\n\n")
	txs := logLatencies(log.String())
	if len(txs) != 101 {
		t.Fatalf("%d transactions, want 101", len(txs))
	}
	ds := steady(txs, time.Second)
	if len(ds) != 100 {
		t.Fatalf("%d past the first second, want 100", len(ds))
	}
	l := percentiles(ds)
	if l.p50 != 51*time.Millisecond || l.p99 != 100*time.Millisecond || l.max != 100*time.Millisecond {
		t.Errorf("percentiles %+v", l)
	}
}

func TestScaledRate(t *testing.T) {
	for _, c := range []struct {
		rate     int
		tps      float64
		baseline float64
		want     int
	}{
		{1000, 4800, 4800, 1000},
		{1000, 2000, 4800, 417},
		{500, 1750, 3500, 250},
		{1000, 1, 4800, 1},
	} {
		if got := scaledRate(c.rate, c.tps, c.baseline); got != c.want {
			t.Errorf("scaledRate(%d, %v, %v) = %d, want %d", c.rate, c.tps, c.baseline, got, c.want)
		}
	}
}
