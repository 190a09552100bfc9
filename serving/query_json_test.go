package serving

import (
	"encoding/json"
	"math"
	"testing"
	"time"
)

// TestResultJSONMatchesEncodingJSON checks the hand-written encoder against encoding/json.
func TestResultJSONMatchesEncodingJSON(t *testing.T) {
	r := &Result{Columns: []string{"day", "country", "events", "ok", "n", "odd\"key"}, Rows: [][]any{
		{time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC), "DE", jsonFloat(12.5), true, uint64(7), nil},
		{time.Date(2026, 3, 1, 10, 5, 0, 123e6, time.UTC), "FR", jsonFloat(0), true, uint64(0), "x"},
		{"2026-03-02", "a<b>&\"c\\\n\u00e9\u2028", jsonFloat(math.NaN()), false, int64(-3), jsonFloat(1e21)},
		{"", "", jsonFloat(math.Inf(1)), uint8(1), 4, jsonFloat(1e-7)},
	}}
	got, err := (&Response{Rows: r, Meta: Meta{Complete: true}}).encodeJSON()
	if err != nil {
		t.Fatal(err)
	}
	// The reference: every value through encoding/json, keys in column order.
	var want []byte
	want = append(want, `{"rows":[`...)
	for i, row := range r.Rows {
		if i > 0 {
			want = append(want, ',')
		}
		want = append(want, '{')
		for j, v := range row {
			if j > 0 {
				want = append(want, ',')
			}
			k, _ := json.Marshal(r.Columns[j])
			e, err := json.Marshal(v)
			if err != nil {
				t.Fatal(err)
			}
			want = append(append(append(want, k...), ':'), e...)
		}
		want = append(want, '}')
	}
	meta, _ := json.Marshal(Meta{Complete: true})
	want = append(append(append(want, `],"meta":`...), meta...), '}')
	if string(got) != string(want) {
		t.Fatalf("got\n%s\nwant\n%s", got, want)
	}
	if !json.Valid(got) {
		t.Fatal("invalid JSON")
	}
}

// TestNumbersAsPeopleWriteThem: money and counts without exponent notation, in JSON and CSV.
func TestNumbersAsPeopleWriteThem(t *testing.T) {
	for _, c := range []struct {
		f    float64
		want string
	}{
		{1.8338664300000012e+07, "18338664.300000012"},
		{350889.99, "350889.99"},
		{0.000123, "0.000123"},
		{1e20, "100000000000000000000"},
		{-42.5, "-42.5"},
		{0, "0"},
		{1e21, "1e+21"},
		{1e-7, "1e-07"},
	} {
		if got := string(appendNumber(nil, c.f)); got != c.want {
			t.Errorf("%v: %s, want %s", c.f, got, c.want)
		}
		var back float64
		if err := json.Unmarshal([]byte(c.want), &back); err != nil || back != c.f {
			t.Errorf("%s reads back as %v (%v)", c.want, back, err)
		}
	}
}
