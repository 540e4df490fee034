package outbox

import (
	"testing"
	"time"
)

func TestQuietHoursAfter(t *testing.T) {
	paris, err := time.LoadLocation("Europe/Paris")
	if err != nil {
		t.Fatal(err)
	}
	night := QuietHours{Start: "22:00", End: "08:00"}
	lunch := QuietHours{Start: "12:00", End: "14:00"}
	at := func(y int, m time.Month, d, h, min int) time.Time { return time.Date(y, m, d, h, min, 0, 0, paris) }
	for _, tc := range []struct {
		name string
		q    QuietHours
		in   time.Time
		want time.Time
	}{
		{"OKDaytimeUnchanged", night, at(2026, 5, 4, 12, 0), at(2026, 5, 4, 12, 0)},
		{"LateEveningToNextMorning", night, at(2026, 5, 4, 23, 30), at(2026, 5, 5, 8, 0)},
		{"EarlyMorningToSameMorning", night, at(2026, 5, 4, 6, 15), at(2026, 5, 4, 8, 0)},
		{"StartIsQuiet", night, at(2026, 5, 4, 22, 0), at(2026, 5, 5, 8, 0)},
		{"EndIsNotQuiet", night, at(2026, 5, 4, 8, 0), at(2026, 5, 4, 8, 0)},
		{"WindowWithinADay", lunch, at(2026, 5, 4, 13, 0), at(2026, 5, 4, 14, 0)},
		{"OutsideWindowWithinADay", lunch, at(2026, 5, 4, 15, 0), at(2026, 5, 4, 15, 0)},
		// The night clocks go forward (29 March 2026 in Paris): still 08:00.
		{"DSTNight", night, at(2026, 3, 28, 23, 0), at(2026, 3, 29, 8, 0)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := tc.q.After(tc.in, paris)
			if err != nil {
				t.Fatal(err)
			}
			if !got.Equal(tc.want) {
				t.Fatalf("After(%v) = %v, want %v", tc.in, got.In(paris), tc.want)
			}
		})
	}
	t.Run("ErrBadClock", func(t *testing.T) {
		if _, err := (QuietHours{Start: "25:00", End: "08:00"}).After(time.Now(), paris); err == nil {
			t.Fatal("25:00 accepted")
		}
	})
}

func TestScheduleCodesNeverWait(t *testing.T) {
	now := time.Now()
	allDay := Settings{QuietHours: &QuietHours{Start: "00:00", End: "23:59"}}
	if at, _ := schedule(Message{Priority: Critical}, allDay, now); at != nil {
		t.Fatalf("a code waits until %v", at)
	}
	if at, _ := schedule(Message{Priority: Low, TimeZone: "UTC"}, allDay, now); at == nil && now.UTC().Format("15:04") != "23:59" {
		t.Fatal("a reminder did not wait out quiet hours")
	}
	later := now.Add(time.Hour)
	if at, _ := schedule(Message{Priority: Normal, NotBefore: later}, Settings{}, now); at == nil || !at.Equal(later) {
		t.Fatalf("not_before ignored: %v", at)
	}
}

// TestScheduleDeadline: quiet hours hold a low-priority message only when
// it still arrives before its deadline; otherwise it goes at its own time.
func TestScheduleDeadline(t *testing.T) {
	paris, err := time.LoadLocation("Europe/Paris")
	if err != nil {
		t.Fatal(err)
	}
	at := func(h, min int) time.Time { return time.Date(2026, 5, 4, h, min, 0, 0, paris) }
	night := Settings{QuietHours: &QuietHours{Start: "22:00", End: "08:00"}}
	now := at(0, 0).Add(-24 * time.Hour)
	for _, tc := range []struct {
		name      string
		notBefore time.Time
		deadline  time.Time
		want      time.Time
	}{
		{"OKNoDeadlineWaits", at(6, 0), time.Time{}, at(8, 0)},
		{"OKDeadlineAfterQuietHoursWaits", at(6, 0), at(9, 0), at(8, 0)},
		// Access ends at 07:00: 08:00 would be after the end.
		{"DeadlineInsideQuietHoursGoesAtItsTime", at(6, 0), at(7, 0), at(6, 0)},
		{"DeadlineAtQuietHoursEndGoesAtItsTime", at(6, 0), at(8, 0), at(6, 0)},
		{"OKOutsideQuietHoursUnchanged", at(10, 0), at(11, 0), at(10, 0)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := schedule(Message{Priority: Low, NotBefore: tc.notBefore, Deadline: tc.deadline, TimeZone: "Europe/Paris"}, night, now)
			if err != nil {
				t.Fatal(err)
			}
			if got == nil || !got.Equal(tc.want) {
				t.Fatalf("scheduled at %v, want %v", got, tc.want.In(paris))
			}
		})
	}
}
