package speed

import (
	"fmt"
	"testing"
	"time"
)

func TestDedupWindowAndCap(t *testing.T) {
	t0 := time.Unix(1_700_000_000, 0)
	d := newDedup(time.Minute, 64*dedupShards)
	if d.seen("a", t0) || !d.seen("a", t0.Add(30*time.Second)) {
		t.Fatal("an id seen within the window is not a duplicate")
	}
	if d.seen("a", t0.Add(2*time.Minute)) {
		t.Fatal("an id older than the window is still remembered")
	}
	// Over the cap the oldest ids go first.
	for i := range 100 * dedupShards {
		d.seen(fmt.Sprint("id", i), t0.Add(2*time.Minute))
	}
	if n := d.len(); n > 64*dedupShards {
		t.Fatalf("%d ids held, cap %d", n, 64*dedupShards)
	}
	if !d.seen(fmt.Sprint("id", 100*dedupShards-1), t0.Add(2*time.Minute)) {
		t.Fatal("the newest id was evicted")
	}
	if d.seen("id0", t0.Add(2*time.Minute)) {
		t.Fatal("the oldest id survived the cap")
	}
	// Forgotten ids (rows dropped before reaching ClickHouse) are new again.
	d.seen("b", t0.Add(2*time.Minute))
	d.forget([]string{"b"})
	if d.seen("b", t0.Add(2*time.Minute)) {
		t.Fatal("a forgotten id is still a duplicate")
	}
}

func TestDayOf(t *testing.T) {
	for _, tc := range []struct {
		t    time.Time
		want int64
	}{
		{time.Date(1970, 1, 1, 0, 0, 0, 0, time.UTC), 0},
		{time.Date(1970, 1, 1, 23, 59, 59, 0, time.UTC), 0},
		{time.Date(1970, 1, 2, 0, 0, 0, 0, time.UTC), 1},
		{time.Date(1969, 12, 31, 23, 0, 0, 0, time.UTC), -1},
		{time.Date(2026, 3, 10, 12, 0, 0, 0, time.FixedZone("x", 14*3600)), 20521}, // 22:00 UTC on the 9th,
	} {
		if got := dayOf(tc.t); got != tc.want {
			t.Errorf("dayOf(%v) = %d, want %d", tc.t, got, tc.want)
		}
	}
}
