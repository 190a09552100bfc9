package speed

import (
	"testing"
	"time"
)

// TestLocalDay: an event's day, for the late flag, is its local date in the dataset's zone.
func TestLocalDay(t *testing.T) {
	ny, err := time.LoadLocation("America/New_York")
	if err != nil {
		t.Fatal(err)
	}
	f := func(instant string, loc *time.Location, day string) {
		t.Helper()
		at, _ := time.Parse(time.RFC3339, instant)
		want, _ := time.Parse(time.DateOnly, day)
		if got := localDay(at, loc); got != dayOf(want) {
			t.Fatalf("localDay(%s, %v) = %d, want %d (%s)", instant, loc, got, dayOf(want), day)
		}
	}
	f("2026-03-08T04:59:59Z", time.UTC, "2026-03-08")
	f("2026-03-08T04:59:59Z", ny, "2026-03-07")
	f("2026-03-08T05:00:00Z", ny, "2026-03-08")
	f("2026-03-09T03:59:59Z", ny, "2026-03-08")
	f("2026-11-02T04:59:59Z", ny, "2026-11-01")
	f("2026-11-02T05:00:00Z", ny, "2026-11-02")
}
