package dashboard

import (
	"encoding/json"
	"fmt"
	"html/template"
	"math"
	"net/url"
	"strings"
	"time"
)

// funcs are the templates' helpers. Times are shown in the zone of the
// box they concern; the zone's abbreviation is always printed so that a
// desk in another zone is not misled.
var funcs = template.FuncMap{
	"inZone":     inZone,
	"inZonePtr":  func(t *time.Time, tz string) string { return inZonePtr(t, tz) },
	"localInput": localInput,
	"utc": func(t time.Time) string {
		if t.IsZero() {
			return ""
		}
		return t.UTC().Format("2 Jan 2006 15:04 UTC")
	},
	"utcPtr": func(t *time.Time) string {
		if t == nil {
			return "—"
		}
		return t.UTC().Format("2 Jan 2006 15:04 UTC")
	},
	"deref": func(s *string) string {
		if s == nil {
			return ""
		}
		return *s
	},
	"derefInt": func(n *int) string {
		if n == nil {
			return ""
		}
		return fmt.Sprint(*n)
	},
	"mapLink": func(addr string) string {
		return "https://www.openstreetmap.org/search?query=" + url.QueryEscape(addr)
	},
	"lines": func(s string) []string { return strings.Split(s, "\n") },
	"until": func(t *time.Time) string {
		if t == nil {
			return ""
		}
		m := int(math.Ceil(time.Until(*t).Minutes()))
		if m <= 1 {
			return "1 minute"
		}
		return fmt.Sprintf("%d minutes", m)
	},
	"future": func(t *time.Time) bool { return t != nil && t.After(time.Now()) },
	// secondsUntil is the whole seconds left until t, rounded up, for a
	// countdown that app.js runs from the page's load: the server's clock
	// decides, whatever the browser's says.
	"secondsUntil": func(t *time.Time) int {
		if t == nil {
			return 0
		}
		return max(0, int(math.Ceil(time.Until(*t).Seconds())))
	},
	"rfc3339": func(t *time.Time) string {
		if t == nil {
			return ""
		}
		return t.UTC().Format(time.RFC3339)
	},
	"json": func(v any) string {
		b, _ := json.Marshal(v)
		return string(b)
	},
	"field": func(fields map[string]string, name string) string { return fields[name] },
	"dict": func(kv ...any) map[string]any {
		m := map[string]any{}
		for i := 0; i+1 < len(kv); i += 2 {
			m[fmt.Sprint(kv[i])] = kv[i+1]
		}
		return m
	},
	"statusLabel": func(s any) string {
		return map[string]string{"upcoming": "Upcoming", "active": "Active", "ended": "Ended", "revoked": "Revoked", "held": "Held",
			"in_bin": "In its bin", "out": "Out", "overdue": "Overdue", "missing": "Missing"}[fmt.Sprint(s)]
	},
}

func zone(tz string) *time.Location {
	if loc, err := time.LoadLocation(tz); err == nil && tz != "" {
		return loc
	}
	return time.UTC
}

func inZone(t time.Time, tz string) string {
	if t.IsZero() {
		return "—"
	}
	return t.In(zone(tz)).Format("Mon 2 Jan 2006, 15:04 MST")
}

func inZonePtr(t *time.Time, tz string) string {
	if t == nil {
		return "—"
	}
	return inZone(*t, tz)
}

// localInput is t (a time.Time or *time.Time) as an
// <input type="datetime-local"> value in tz.
func localInput(v any, tz string) string {
	var t time.Time
	switch x := v.(type) {
	case time.Time:
		t = x
	case *time.Time:
		if x != nil {
			t = *x
		}
	}
	if t.IsZero() {
		return ""
	}
	return t.In(zone(tz)).Format("2006-01-02T15:04")
}

// fromLocalInput reads a datetime-local value as a time in tz, in the
// RFC 3339 form the domain's inputs take; "" stays nil.
func fromLocalInput(s, tz string) (*string, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return nil, nil
	}
	t, err := time.ParseInLocation("2006-01-02T15:04", s, zone(tz))
	if err != nil {
		return nil, err
	}
	out := t.Format(time.RFC3339)
	return &out, nil
}
