package delivery

import (
	"slices"
	"strings"
	"testing"
)

func TestTemplates(t *testing.T) {
	tpl, err := LoadTemplates()
	if err != nil {
		t.Fatal(err)
	}
	en, fr := tpl.Kinds("en"), tpl.Kinds("fr")
	slices.Sort(en)
	slices.Sort(fr)
	for _, kind := range []string{"access_instructions", "login_code", "exchange_code", "password_reset", "return_reminder", "invitation", "password_changed", "security_changed", "held_booking_reminder", "alias_code",
		"box_cooldown", "booking_locked", "inventory_flag", "box_power_lost", "box_battery_low", "box_offline", "key_overdue", "sync_conflict"} {
		if !slices.Contains(en, kind) || !slices.Contains(fr, kind) {
			t.Errorf("%s is missing in English or French", kind)
		}
	}
	if !slices.Equal(en, fr) {
		t.Errorf("languages differ: en %v, fr %v", en, fr)
	}
	data := map[string]string{"name": "Zoé <script>", "code": "123456789", "link": "https://k.example/r?token=x", "url": "https://k.example/b/t", "key": "Golf 12", "box": "Main St", "company": "Acme", "starts_at": "1 May 10:00", "ends_at": "3 May 10:00", "expires_at": "10:30"}
	t.Run("OKEveryKindEveryLanguage", func(t *testing.T) {
		for _, lang := range []string{"en", "fr"} {
			for _, kind := range en {
				r, err := tpl.Render(kind, lang, data)
				if err != nil {
					t.Fatal(err)
				}
				if r.Subject == "" || r.Text == "" || r.HTML == "" {
					t.Errorf("%s/%s renders empty parts: %+v", lang, kind, r)
				}
				if strings.Contains(r.Text+r.HTML, "<no value>") {
					t.Errorf("%s/%s has an unfilled field", lang, kind)
				}
			}
		}
	})
	t.Run("HTMLEscaped", func(t *testing.T) {
		r, _ := tpl.Render("password_reset", "en", data)
		if strings.Contains(r.HTML, "<script>") || !strings.Contains(r.HTML, "&lt;script&gt;") {
			t.Fatalf("name not escaped in HTML: %s", r.HTML)
		}
	})
	t.Run("French", func(t *testing.T) {
		r, _ := tpl.Render("login_code", "fr", data)
		if !strings.Contains(r.Text, "Votre code de connexion keyrelay est 123456789") {
			t.Fatalf("French text: %q", r.Text)
		}
	})
	t.Run("FallbackToEnglish", func(t *testing.T) {
		r, err := tpl.Render("login_code", "de", data)
		if err != nil || !strings.HasPrefix(r.Text, "Your keyrelay sign-in code") {
			t.Fatalf("fallback: %q %v", r.Text, err)
		}
	})
	t.Run("TextOnlyForSMS", func(t *testing.T) {
		r, err := tpl.RenderText("login_code", "en", data)
		if err != nil || r.HTML != "" || r.Text == "" {
			t.Fatalf("RenderText = %+v, %v", r, err)
		}
	})
	t.Run("ErrUnknownKind", func(t *testing.T) {
		if _, err := tpl.Render("nope", "en", data); err == nil {
			t.Fatal("unknown kind rendered")
		}
	})
}
