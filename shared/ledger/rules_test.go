package ledger

import (
	"testing"
	"time"
)

func TestSpeedWatermarkEvidence(t *testing.T) {
	now := time.Date(2026, 3, 10, 12, 0, 0, 0, time.UTC)
	old := now.Add(-5 * time.Hour)
	older := now.Add(-7 * time.Hour)
	f := func(name string, parts []Partition, kafka map[int32]KafkaOffsets, want time.Time) {
		t.Helper()
		got, _ := speedWatermark(parts, now, kafka)
		if !got.Equal(want) {
			t.Errorf("%s: watermark %v, want %v", name, got, want)
		}
	}
	fresh := func(p int32, newest time.Time, lag int64) Partition {
		return Partition{Partition: p, NewestEvent: newest, Committed: 100, HighWatermark: 100 + lag, Lag: lag, Age: time.Second}
	}
	stale := func(p int32, newest time.Time) Partition {
		return Partition{Partition: p, NewestEvent: newest, Committed: 100, HighWatermark: 100, Age: FreshFor + time.Second}
	}

	f("nothing consumed", nil, nil, time.Time{})
	f("fresh heartbeats, lag 0: now", []Partition{fresh(0, old, 0), fresh(1, older, 0)}, nil, now)
	f("lagging partition holds at its newest event", []Partition{fresh(0, old, 0), fresh(1, older, 5)}, nil, older)
	// A dead consumer: its last row said lag 0, but it is old, and says nothing of records
	// produced since.
	f("stale heartbeat holds at its newest event", []Partition{fresh(0, old, 0), stale(1, older)}, nil, older)
	f("future event times are capped at now", []Partition{fresh(0, now.Add(time.Hour), 3)}, nil, now)

	// Kafka's offsets are the only evidence when given, whatever the ledger says.
	f("kafka: caught up though the heartbeat is stale", []Partition{stale(0, old)},
		map[int32]KafkaOffsets{0: {Committed: 100, Oldest: 0, End: 100}}, now)
	f("kafka: unconsumed records though the heartbeat is fresh", []Partition{fresh(0, old, 0)},
		map[int32]KafkaOffsets{0: {Committed: 100, Oldest: 0, End: 140}}, old)
	f("kafka: a partition nobody consumed with records holds everything", []Partition{fresh(0, old, 0)},
		map[int32]KafkaOffsets{0: {Committed: 100, End: 100}, 1: {Committed: -1, Oldest: 0, End: 7}}, time.Time{})
	f("kafka: an empty partition nobody consumed is caught up", []Partition{stale(0, old)},
		map[int32]KafkaOffsets{0: {Committed: 100, End: 100}, 1: {Committed: -1, Oldest: 12, End: 12}}, now)
	f("kafka: ledger partitions the topic no longer has are ignored", []Partition{stale(0, old), stale(5, older)},
		map[int32]KafkaOffsets{0: {Committed: 90, End: 100}}, old)
}

func TestDaysWatermarks(t *testing.T) {
	d := func(day int, raw uint64, run string, read uint64) Day {
		k := Day{Day: time.Date(2026, 3, day, 0, 0, 0, 0, time.UTC), RawRows: raw, Run: run, RowsRead: read}
		k.Dirty = run != "" && raw > 0 && raw != read
		k.Unrun = run == "" && raw > 0
		return k
	}
	day := func(n int) time.Time { return time.Date(2026, 3, n, 0, 0, 0, 0, time.UTC) }
	f := func(name string, days Days, exact, covered time.Time) {
		t.Helper()
		if got := days.Exact(); !got.Equal(exact) {
			t.Errorf("%s: exact %v, want %v", name, got, exact)
		}
		if got := days.Covered(); !got.Equal(covered) {
			t.Errorf("%s: covered %v, want %v", name, got, covered)
		}
	}
	f("none", nil, time.Time{}, time.Time{})
	f("all exact", Days{d(1, 10, "a", 10), d(2, 5, "b", 5)}, day(2), day(2))
	f("a run that read every row is exact however recent", Days{d(1, 10, "a", 10)}, day(1), day(1))
	f("dirty day stops exact, not covered", Days{d(1, 10, "a", 10), d(2, 6, "b", 5), d(3, 1, "c", 1)}, day(1), day(3))
	f("unrun day stops both", Days{d(1, 10, "a", 10), d(2, 6, "", 0), d(3, 1, "c", 1)}, day(1), day(1))
	f("a backfilled old day with no run stops both from the start", Days{d(1, 6, "", 0), d(2, 1, "c", 1)}, time.Time{}, time.Time{})
	f("an empty day that ran counts", Days{d(1, 10, "a", 10), d(2, 0, "b", 0), d(3, 1, "c", 1)}, day(3), day(3))
	f("retention dropped raw: not dirty", Days{d(1, 0, "a", 10), d(2, 1, "b", 1)}, day(2), day(2))

	if got := NextBoundary(day(5), true, day(3)); !got.Equal(day(5)) {
		t.Errorf("boundary moved back to %v", got)
	}
	if got := NextBoundary(day(5), true, day(7)); !got.Equal(day(7)) {
		t.Errorf("boundary did not advance: %v", got)
	}
	if got := NextBoundary(time.Time{}, false, day(2)); !got.Equal(day(2)) {
		t.Errorf("first boundary: %v", got)
	}
}

func TestNewDrift(t *testing.T) {
	v := func(f float64) *float64 { return &f }
	d := NewDrift(time.Time{}, "m", v(90), v(100), "r")
	if *d.AbsError != 10 || *d.RelError != 0.1 {
		t.Errorf("drift %v %v", *d.AbsError, *d.RelError)
	}
	if d := NewDrift(time.Time{}, "m", nil, v(1), "r"); d.AbsError != nil || d.RelError != nil {
		t.Error("drift against a missing speed value")
	}
	if d := NewDrift(time.Time{}, "m", v(0), v(0), "r"); *d.RelError != 0 {
		t.Error("drift of equal zeros")
	}
}

func TestDaysInZone(t *testing.T) {
	ny, err := time.LoadLocation("America/New_York")
	if err != nil {
		t.Fatal(err)
	}
	kol, err := time.LoadLocation("Asia/Kolkata")
	if err != nil {
		t.Fatal(err)
	}
	date := func(s string) time.Time {
		d, err := time.Parse(time.DateOnly, s)
		if err != nil {
			t.Fatal(err)
		}
		return d
	}
	at := func(s string) time.Time {
		v, err := time.Parse(time.RFC3339, s)
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	f := func(loc *time.Location, instant, day, start string, hours int) {
		t.Helper()
		d := DayIn(at(instant), loc)
		if !d.Equal(date(day)) || d.Location() != time.UTC {
			t.Fatalf("DayIn(%s, %v) = %v, want %s", instant, loc, d, day)
		}
		if s := DayStart(d, loc); !s.Equal(at(start)) {
			t.Fatalf("DayStart(%s, %v) = %v, want %s", day, loc, s, start)
		}
		if h := DayEnd(d, loc).Sub(DayStart(d, loc)); h != time.Duration(hours)*time.Hour {
			t.Fatalf("day %s in %v has %v, want %dh", day, loc, h, hours)
		}
	}
	f(time.UTC, "2026-03-08T23:59:59Z", "2026-03-08", "2026-03-08T00:00:00Z", 24)
	f(ny, "2026-03-08T04:59:59Z", "2026-03-07", "2026-03-07T05:00:00Z", 24)
	f(ny, "2026-03-08T05:00:00Z", "2026-03-08", "2026-03-08T05:00:00Z", 23) // spring forward
	f(ny, "2026-03-09T03:59:59Z", "2026-03-08", "2026-03-08T05:00:00Z", 23)
	f(ny, "2026-03-09T04:00:00Z", "2026-03-09", "2026-03-09T04:00:00Z", 24)
	f(ny, "2026-11-01T04:00:00Z", "2026-11-01", "2026-11-01T04:00:00Z", 25) // fall back
	f(ny, "2026-11-02T04:59:59Z", "2026-11-01", "2026-11-01T04:00:00Z", 25)
	f(kol, "2026-03-07T18:30:00Z", "2026-03-08", "2026-03-07T18:30:00Z", 24)
	if ZoneArg(time.UTC) != "" || ZoneArg(ny) != ", 'America/New_York'" {
		t.Fatalf("ZoneArg: %q %q", ZoneArg(time.UTC), ZoneArg(ny))
	}
}
