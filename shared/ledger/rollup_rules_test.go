package ledger

import (
	"testing"
	"time"
)

// The hours of a rollup that are current: all of them without a flush since its snapshot, up
// to the local hour holding the oldest event a flush since then wrote (clipped to the day).
func TestRollupValid(t *testing.T) {
	day := time.Date(2024, 3, 10, 0, 0, 0, 0, time.UTC)
	utc, _ := time.LoadLocation("UTC")
	kolkata, err := time.LoadLocation("Asia/Kolkata")
	if err != nil {
		t.Fatal(err)
	}
	r := Rollup{Day: day, HourTo: day.Add(13 * time.Hour)}
	for _, c := range []struct {
		n       uint64
		touched time.Time
		loc     *time.Location
		want    time.Time
	}{
		{0, time.Time{}, utc, r.HourTo},
		{3, day.Add(5*time.Hour + 30*time.Minute), utc, day.Add(5 * time.Hour)},
		{1, day, utc, day},
		{1, day.Add(13 * time.Hour), utc, r.HourTo}, // after the rolled-up hours
		// Kolkata's hours start at half past UTC hours.
		{1, day.Add(5*time.Hour + 20*time.Minute), kolkata, day.Add(4*time.Hour + 30*time.Minute)},
		{1, day.Add(5*time.Hour + 40*time.Minute), kolkata, day.Add(5*time.Hour + 30*time.Minute)},
	} {
		if got := r.valid(c.n, c.touched, c.loc); !got.Equal(c.want) {
			t.Errorf("%d flushes from %s in %s: current up to %s, want %s", c.n, c.touched, c.loc, got, c.want)
		}
	}
	if got := HourStart(day.Add(59*time.Minute+59*time.Second), utc); !got.Equal(day) {
		t.Errorf("HourStart %s", got)
	}
}

// A day's rest rows answer only for the run they come from and the table's layout.
func TestRestCurrent(t *testing.T) {
	r := Rest{Run: "run-2", Layout: "L"}
	for _, c := range []struct {
		run, layout string
		want        bool
	}{
		{"run-2", "L", true},
		{"run-3", "L", false}, // the day was rerun since
		{"run-2", "M", false}, // the table's columns changed since
		{"", "L", false},      // no successful run
	} {
		if got := r.Current(c.run, c.layout); got != c.want {
			t.Errorf("Current(%q, %q) = %v, want %v", c.run, c.layout, got, c.want)
		}
	}
	if (Rest{}).Current("", "") {
		t.Error("an empty rest is current for no run")
	}
}
