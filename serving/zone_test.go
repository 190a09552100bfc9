package serving

import (
	"net/url"
	"testing"
	"time"
)

// TestRequestTimeZone: time_zone is read from the body and from the query string, names the
// field when unknown, defaults to the dataset's, and makes YYYY-MM-DD its midnight.
func TestRequestTimeZone(t *testing.T) {
	cfg := zoned(demoConfig(t), "America/New_York")
	check := func(body string) (*Query, *APIError) {
		t.Helper()
		r, e := DecodeRequest([]byte(body))
		if e != nil {
			t.Fatal(e)
		}
		return Check(cfg, r, Limits{MaxRows: 1000, MaxBuckets: 50000}, testNow)
	}
	q, e := check(`{"dataset":"events","metrics":["events"],"from":"2024-03-10","to":"2024-03-11"}`)
	if e != nil {
		t.Fatal(e)
	}
	if q.Zone.String() != "America/New_York" || q.From.Format(time.RFC3339) != "2024-03-10T05:00:00Z" || q.To.Format(time.RFC3339) != "2024-03-11T04:00:00Z" {
		t.Errorf("the dataset's zone by default: %v %v %v", q.Zone, q.From, q.To)
	}
	q, e = check(`{"dataset":"events","metrics":["events"],"from":"2024-03-10","to":"2024-03-10T12:00:00Z","time_zone":"Asia/Kolkata"}`)
	if e != nil {
		t.Fatal(e)
	}
	if q.Zone.String() != "Asia/Kolkata" || q.From.Format(time.RFC3339) != "2024-03-09T18:30:00Z" || !q.otherZone() {
		t.Errorf("Kolkata: %v %v", q.Zone, q.From)
	}
	if _, e = check(`{"dataset":"events","metrics":["events"],"from":"2024-03-10","to":"2024-03-11","time_zone":"Europe/Atlantis"}`); e == nil || e.Field != "time_zone" || e.Status != 400 || e.Code != CodeInvalid {
		t.Errorf("unknown zone: %+v", e)
	}
	r, e := RequestFromValues(url.Values{"dataset": {"events"}, "metrics": {"events"}, "from": {"2024-03-10"}, "to": {"2024-03-11"}, "time_zone": {"UTC"}})
	if e != nil || r.TimeZone != "UTC" {
		t.Fatalf("query parameter: %+v %v", r, e)
	}
}

// TestBucketsInZone: bucket starts and ends in the request's zone, on the days New York's
// clocks change and in a zone a half hour off UTC; hours align only a whole number of hours
// apart.
func TestBucketsInZone(t *testing.T) {
	ny, _ := time.LoadLocation("America/New_York")
	kol, _ := time.LoadLocation("Asia/Kolkata")
	ds := &demoConfig(t).Datasets[0]
	at := func(s string) time.Time { v, _ := time.Parse(time.RFC3339, s); return v }
	f := func(loc *time.Location, gran, instant, start, end string) {
		t.Helper()
		q := &Query{DS: ds, Zone: loc, Granularity: gran, From: at("2024-01-01T00:00:00Z"), To: at("2025-01-01T00:00:00Z")}
		b := q.bucketOf(at(instant))
		if got := b.Format(time.RFC3339) + " " + q.bucketEnd(b).Format(time.RFC3339); got != start+" "+end {
			t.Errorf("%s bucket of %s in %v: %s, want %s %s", gran, instant, loc, got, start, end)
		}
	}
	f(ny, "day", "2024-03-10T12:00:00Z", "2024-03-10T05:00:00Z", "2024-03-11T04:00:00Z")  // 23 hours
	f(ny, "day", "2024-11-03T12:00:00Z", "2024-11-03T04:00:00Z", "2024-11-04T05:00:00Z")  // 25 hours
	f(ny, "hour", "2024-11-03T05:30:00Z", "2024-11-03T05:00:00Z", "2024-11-03T06:00:00Z") // 1:30 EDT
	f(ny, "hour", "2024-11-03T06:30:00Z", "2024-11-03T06:00:00Z", "2024-11-03T07:00:00Z") // 1:30 EST
	f(ny, "week", "2024-03-10T12:00:00Z", "2024-03-04T05:00:00Z", "2024-03-11T04:00:00Z")
	f(ny, "month", "2024-03-10T12:00:00Z", "2024-03-01T05:00:00Z", "2024-04-01T04:00:00Z")
	f(kol, "hour", "2024-03-10T12:10:00Z", "2024-03-10T11:30:00Z", "2024-03-10T12:30:00Z")
	f(kol, "day", "2024-03-10T20:00:00Z", "2024-03-10T18:30:00Z", "2024-03-11T18:30:00Z")
	f(time.UTC, "day", "2024-03-10T20:00:00Z", "2024-03-10T00:00:00Z", "2024-03-11T00:00:00Z")

	aligned := func(loc *time.Location) bool {
		q := &Query{DS: ds, Zone: loc}
		return q.hoursAlign(at("2024-03-10T00:00:00Z"), at("2024-03-11T00:00:00Z"))
	}
	if !aligned(time.UTC) || !aligned(ny) || aligned(kol) {
		t.Errorf("hours align: UTC %v, New York %v, Kolkata %v; want true, true, false", aligned(time.UTC), aligned(ny), aligned(kol))
	}
}
