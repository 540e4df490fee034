package devmailbox

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/keyrelay/keyrelay/plugins/sdk"
	"github.com/keyrelay/keyrelay/plugins/sdk/sdktest"
)

func TestConformance(t *testing.T) {
	notADir := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(notADir, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	sdktest.Run(t, New(), sdktest.Options{
		ValidSettings: map[string]string{SettingDir: t.TempDir()},
		InvalidSettings: []map[string]string{
			{},
			{SettingDir: "relative/mailbox"},
			{SettingDir: notADir},
		},
		Idempotent: true,
		Errors: []sdktest.ErrorCase{
			{Name: "ErrNoDir", Settings: map[string]string{}, Class: sdk.ClassPermanent},
		},
	})
}

func TestMailbox(t *testing.T) {
	dir := t.TempDir()
	p := New()
	clock := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	p.now = func() time.Time { clock = clock.Add(time.Second); return clock }
	ctx := context.Background()
	send := func(tenant, id, to string) sdk.Receipt {
		t.Helper()
		r, err := p.Send(ctx, sdk.Message{MessageID: id, TenantID: tenant, Channel: sdk.ChannelSMS, To: to, Text: "code " + id, Settings: map[string]string{SettingDir: dir}})
		if err != nil {
			t.Fatalf("Send %s: %v", id, err)
		}
		return r
	}
	send("t1", "m1", "+1")
	send("t1", "m2", "+2")
	send("t2", "m3", "+1")
	first := send("t1", "m1", "+1") // a retry: stored once
	mb := Open(dir)

	t.Run("NewestFirst", func(t *testing.T) {
		all, err := mb.List(ctx, Query{})
		if err != nil {
			t.Fatal(err)
		}
		var ids []string
		for _, r := range all {
			ids = append(ids, r.ID)
		}
		if got, want := len(ids), 3; got != want || ids[0] != "m3" || ids[2] != "m1" {
			t.Fatalf("List = %v, want [m3 m2 m1]", ids)
		}
		if all[2].ProviderMessageID != first.ProviderMessageID || all[2].Text != "code m1" {
			t.Errorf("record %+v does not match receipt %+v", all[2], first)
		}
	})
	t.Run("Filters", func(t *testing.T) {
		got, _ := mb.List(ctx, Query{TenantID: "t1", To: "+1"})
		if len(got) != 1 || got[0].ID != "m1" {
			t.Fatalf("List(t1, +1) = %+v", got)
		}
		got, _ = mb.List(ctx, Query{Limit: 1})
		if len(got) != 1 || got[0].ID != "m3" {
			t.Fatalf("List(limit 1) = %+v", got)
		}
	})
	t.Run("Get", func(t *testing.T) {
		if r, err := mb.Get("t2", "m3"); err != nil || r.To != "+1" {
			t.Fatalf("Get = %+v, %v", r, err)
		}
		if _, err := mb.Get("t1", "m3"); !errors.Is(err, ErrNotFound) {
			t.Fatalf("Get other tenant's id: %v, want ErrNotFound", err)
		}
	})
	t.Run("MissingDirIsEmpty", func(t *testing.T) {
		got, err := Open(filepath.Join(dir, "nope")).List(ctx, Query{})
		if err != nil || len(got) != 0 {
			t.Fatalf("List = %v, %v", got, err)
		}
	})
}

func TestOneIDIsStoredOnce(t *testing.T) {
	dir := t.TempDir()
	send := func(p *Provider, id string) string {
		r, err := p.Send(context.Background(), sdk.Message{MessageID: id, TenantID: "t", Channel: sdk.ChannelEmail, To: "a@example.com", Settings: map[string]string{SettingDir: dir}})
		if err != nil {
			t.Error(err)
		}
		return r.ProviderMessageID
	}
	lines := func() int {
		data, _ := os.ReadFile(filepath.Join(dir, FileName))
		return strings.Count(string(data), "\n")
	}

	t.Run("ConcurrentSends", func(t *testing.T) {
		p := New()
		var wg sync.WaitGroup
		ids := make([]string, 16)
		for i := range ids {
			wg.Add(1)
			go func() {
				defer wg.Done()
				ids[i] = send(p, "same")
			}()
		}
		wg.Wait()
		for _, id := range ids {
			if id != ids[0] {
				t.Fatalf("receipts differ: %v", ids)
			}
		}
		if n := lines(); n != 1 {
			t.Fatalf("%d lines in the mailbox, want 1", n)
		}
	})
	t.Run("TwoWritersOneFile", func(t *testing.T) {
		// Two providers stand for two plugin processes (the app's and a
		// worker's): each learns what the other appended.
		a, b := New(), New()
		send(a, "m-a")
		if send(b, "m-a") != send(a, "m-a") {
			t.Fatal("the second writer stored its own copy")
		}
		send(b, "m-b")
		send(a, "m-b")
		if n := lines(); n != 3 {
			t.Fatalf("%d lines, want 3", n)
		}
	})
	t.Run("CrashedWriterLeftHalfALine", func(t *testing.T) {
		f, err := os.OpenFile(filepath.Join(dir, FileName), os.O_APPEND|os.O_WRONLY, 0)
		if err != nil {
			t.Fatal(err)
		}
		f.WriteString(`{"id":"half","tenant`)
		f.Close()
		send(New(), "after-crash")
		got, err := Open(dir).List(context.Background(), Query{})
		if err != nil || len(got) != 4 || got[0].ID != "after-crash" {
			t.Fatalf("List = %+v, %v", got, err)
		}
	})
}
