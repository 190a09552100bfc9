package event

import (
	"encoding/json"
	"fmt"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/lambda-platform/lambda/shared/config"
	"github.com/lambda-platform/lambda/shared/gen"
)

func dataset(t testing.TB) *config.Dataset {
	t.Helper()
	cfg, err := config.Parse("test.yaml", []byte(`
datasets:
  - name: orders
    topic: orders
    id_field: meta.id
    time_field: ts
    dimensions:
      - {name: country, field: geo.country}
      - {name: plan, field: plan}
    metrics:
      - {name: orders, type: count}
      - {name: buyers, type: uniq, field: user.id}
      - {name: revenue, type: sum, field: amount}
      - {name: top, type: max, field: amount}
    raw_retention: 90d
`), nil)
	if err != nil {
		t.Fatal(err)
	}
	return &cfg.Datasets[0]
}

var now = time.Date(2026, 3, 10, 12, 0, 0, 0, time.UTC)

var limits = Limits{MaxBytes: 1024, FutureSkew: 5 * time.Minute, MaxAge: 90 * 24 * time.Hour}

func TestDecode(t *testing.T) {
	dec := NewDecoder(dataset(t), limits)
	tests := []struct {
		name  string
		in    string
		id    string
		time  time.Time
		dims  []string
		key   string
		num   any // float64, or nil for NULL
		error Reason
		msg   string
	}{
		{name: "nested fields, RFC 3339 with fraction and offset",
			in: `{"meta":{"id":"a1"},"ts":"2026-03-10T13:30:00.250+02:00","geo":{"country":"DE"},"plan":"pro","user":{"id":"u7"},"amount":12.5}`,
			id: "a1", time: time.Date(2026, 3, 10, 11, 30, 0, 250e6, time.UTC), dims: []string{"DE", "pro"}, key: "u7", num: 12.5},
		{name: "epoch milliseconds, numbers rendered as strings",
			in: `{"meta":{"id":42},"ts":1773140000123,"geo":{"country":7},"plan":null,"user":{"id":1001},"amount":3}`,
			id: "42", time: time.UnixMilli(1773140000123).UTC(), dims: []string{"7", ""}, key: "1001", num: 3.0},
		{name: "missing id, dimension and amount",
			in: `{"ts":"2026-03-10T00:00:00Z"}`,
			id: "k:orders:3:99", time: time.Date(2026, 3, 10, 0, 0, 0, 0, time.UTC), dims: []string{"", ""}, key: "", num: nil},
		{name: "fractional epoch milliseconds", in: `{"ts":1773140000123.5}`,
			id: "k:orders:3:99", time: time.UnixMicro(1773140000123500).UTC(), dims: []string{"", ""}, num: nil},
		{name: "not json", in: `not json`, error: InvalidJSON},
		{name: "truncated", in: `{"ts": `, error: InvalidJSON},
		{name: "array", in: `[1,2]`, error: InvalidJSON, msg: "not an object"},
		{name: "no time", in: `{"meta":{"id":"x"}}`, error: MissingTime, msg: "ts"},
		{name: "null time", in: `{"ts":null}`, error: MissingTime},
		{name: "bad time string", in: `{"ts":"yesterday"}`, error: BadTime, msg: `"yesterday"`},
		{name: "time as bool", in: `{"ts":true}`, error: BadTime},
		{name: "future", in: `{"ts":"2026-03-10T12:06:00Z"}`, error: FutureTime},
		{name: "past 2106", in: `{"ts":99999999999999999}`, error: FutureTime},
		{name: "within skew", in: `{"ts":"2026-03-10T12:04:00Z"}`, id: "k:orders:3:99", time: time.Date(2026, 3, 10, 12, 4, 0, 0, time.UTC), dims: []string{"", ""}},
		{name: "before 1970", in: `{"ts":-5000}`, error: TooOld},
		{name: "beyond raw retention", in: `{"ts":"2025-11-01T00:00:00Z"}`, error: TooOld, msg: "retention"},
		{name: "amount as string", in: `{"ts":1773140000000,"amount":"lots"}`, error: BadType, msg: "amount"},
		{name: "dimension as object", in: `{"ts":1773140000000,"geo":{"country":{"a":1}}}`, error: BadType, msg: "geo.country"},
		{name: "key as array", in: `{"ts":1773140000000,"user":{"id":[1]}}`, error: BadType, msg: "user.id"},
		{name: "id as bool", in: `{"ts":1773140000000,"meta":{"id":true}}`, error: BadType, msg: "meta.id"},
		{name: "too large", in: `{"ts":1773140000000,"pad":"` + strings.Repeat("x", 1100) + `"}`, error: TooLarge, msg: "1024"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var r Row
			reason, detail := dec.Decode([]byte(tc.in), "orders", 3, 99, now, &r)
			if reason != tc.error {
				t.Fatalf("reason %q (%s), want %q", reason, detail, tc.error)
			}
			if tc.error != "" {
				if !strings.Contains(detail, tc.msg) {
					t.Fatalf("detail %q does not name %q", detail, tc.msg)
				}
				return
			}
			if r.ID != tc.id || !r.Time.Equal(tc.time) || fmt.Sprint(r.Dims) != fmt.Sprint(tc.dims) {
				t.Fatalf("got id %q time %v dims %q, want %q %v %q", r.ID, r.Time, r.Dims, tc.id, tc.time, tc.dims)
			}
			if r.Keys[0] != tc.key {
				t.Fatalf("key %q, want %q", r.Keys[0], tc.key)
			}
			if tc.num == nil && r.Nums[1].Valid || tc.num != nil && (!r.Nums[1].Valid || r.Nums[1].Float64 != tc.num.(float64)) {
				t.Fatalf("amount %+v, want %v", r.Nums[1], tc.num)
			}
		})
	}
}

func TestDecodeReusesRowAndInterns(t *testing.T) {
	dec := NewDecoder(dataset(t), limits)
	var a, b Row
	dec.Decode([]byte(`{"ts":1773140000000,"geo":{"country":"FR"},"amount":1}`), "orders", 0, 1, now, &a)
	dec.Decode([]byte(`{"ts":1773140000000,"geo":{"country":"FR"},"amount":2}`), "orders", 0, 2, now, &b)
	if a.Dims[0] != "FR" || b.Dims[0] != "FR" || a.ID == b.ID {
		t.Fatalf("rows %+v %+v", a, b)
	}
	if len(dec.intern[0]) != 1 {
		t.Fatalf("interned %d values, want 1", len(dec.intern[0]))
	}
}

// FuzzDecode checks that any payload either decodes into a row that satisfies the limits or
// is rejected with a known reason, and that nothing panics.
// TestDecodeTransient: a Transient decoder gives the same rows without copying the id and
// the keys (they point into the event).
func TestDecodeTransient(t *testing.T) {
	ds := dataset(t)
	copying, transient := NewDecoder(ds, Limits{}), NewDecoder(ds, Limits{})
	transient.Transient = true
	for i, ev := range []string{
		`{"meta":{"id":"abc-1"},"ts":"2026-03-01T10:00:00Z","geo":{"country":"DE"},"amount":3.5,"user":{"id":"u1"}}`,
		`{"meta":{"id":17},"ts":1772359200000,"geo":{"country":"FR"},"user":{"id":42}}`,
		`{"ts":"2026-03-01T10:00:00Z","geo":{"country":null}}`,
	} {
		var a, b Row
		ra, _ := copying.Decode([]byte(ev), "t", 0, int64(i), now, &a)
		rb, _ := transient.Decode([]byte(ev), "t", 0, int64(i), now, &b)
		if ra != rb || fmt.Sprint(a) != fmt.Sprint(b) {
			t.Errorf("%s: transient %v %+v, copying %v %+v", ev, rb, b, ra, a)
		}
	}
	ev := []byte(`{"meta":{"id":"abc-1"},"ts":"2026-03-01T10:00:00Z","user":{"id":"u1"}}`)
	allocs := func(dec *Decoder) float64 {
		var r Row
		return testing.AllocsPerRun(100, func() { dec.Decode(ev, "t", 0, 0, now, &r) })
	}
	if a, b := allocs(copying), allocs(transient); b > a-2 {
		t.Errorf("a transient decode allocates %v times, a copying one %v: the id and the key were copied", b, a)
	}
}

func FuzzDecode(f *testing.F) {
	for _, s := range []string{
		`{"meta":{"id":"a1"},"ts":"2026-03-10T11:30:00.250+02:00","geo":{"country":"DE"},"plan":"pro","user":{"id":"u7"},"amount":12.5}`,
		`{"ts":1773140000123,"amount":1e400}`, `{"ts":"2026-03-10T11:30:00Z","amount":-0}`, `{}`, `[]`, `"x"`, `{"ts":1.5e12}`,
		`{"ts":"2026-03-10T11:30:00Z","geo":{"country":"\u00e9\ud800"}}`, `{"ts":1773140000000,"meta":{"id":""}}`,
	} {
		f.Add([]byte(s))
	}
	d := dataset(f)
	known := map[Reason]bool{}
	for _, r := range Reasons {
		known[r] = true
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		dec := NewDecoder(d, limits)
		var r Row
		reason, detail := dec.Decode(in, "orders", 1, 5, now, &r)
		if reason != "" {
			if !known[reason] || detail == "" {
				t.Fatalf("reason %q detail %q", reason, detail)
			}
			return
		}
		// fastjson does not validate escapes inside strings it never reads, so accepted
		// input is not always strict JSON; it must still be an object.
		if trimmed := strings.TrimLeft(string(in), " \t\r\n"); !strings.HasPrefix(trimmed, "{") {
			t.Fatalf("accepted a non-object %q", in)
		}
		if r.ID == "" || r.Time.Before(now.Add(-limits.MaxAge)) || r.Time.After(now.Add(limits.FutureSkew)) {
			t.Fatalf("accepted row %+v out of limits", r)
		}
		if len(r.Dims) != 2 || len(r.Nums) != 2 || len(r.Keys) != 2 {
			t.Fatalf("row shape %+v", r)
		}
	})
}

var benchEvent = []byte(`{"event_id":"e-123456","ts":"2026-03-10T11:30:00.250Z","event":"purchase","country":"DE","device":"ios","user_id":"u4711","value":12.5}`)

func demo(b *testing.B) *config.Dataset {
	cfg, err := config.Parse("demo", config.DemoYAML, nil)
	if err != nil {
		b.Fatal(err)
	}
	return &cfg.Datasets[0]
}

// benchEventNested is an event of bench/speed.sh's dataset (the demo's, with country and
// device nested), as shared/gen writes it.
var benchEventNested = []byte(`{"context":{"device":"ios"},"event":"purchase","event_id":"1-123456","geo":{"country":"de"},"ts":"2026-03-10T11:30:00.25Z","user_id":"u4711","value":12.5}`)

// BenchmarkDecode is the speed layer's decoder (Transient, as the speed layer decodes) on a
// demo event, on the bench's nested event, and on a stream of the bench's generated events
// (half RFC 3339 times, half epoch milliseconds, a tenth without a value): through the
// scanner, and through the fastjson tree it replaced.
func BenchmarkDecode(b *testing.B) {
	ds := diffDatasets(b)[1]
	g := gen.New(ds, gen.Options{Seed: 1})
	var stream [][]byte
	size := 0
	for range 4096 {
		ev := g.Next(now, false).Value
		stream = append(stream, ev)
		size += len(ev)
	}
	for _, path := range []string{"scanner", "fastjson"} {
		f := func(name string, ds *config.Dataset, events [][]byte, size int) {
			b.Run(path+"/"+name, func(b *testing.B) {
				dec := NewDecoder(ds, Limits{MaxBytes: 64 << 10, FutureSkew: time.Hour})
				dec.Transient = true
				decode := dec.Decode
				if path == "fastjson" {
					decode = dec.decodeTree
				}
				var r Row
				b.ReportAllocs()
				b.SetBytes(int64(size / len(events)))
				i := 0
				c0 := cpuTime()
				for b.Loop() {
					if reason, detail := decode(events[i], "events", 0, 1, now, &r); reason != "" {
						b.Fatal(reason, detail)
					}
					if i++; i == len(events) {
						i = 0
					}
				}
				b.ReportMetric(float64(cpuTime()-c0)/float64(b.N), "cpu-ns/op")
			})
		}
		f("demo", demo(b), [][]byte{benchEvent}, len(benchEvent))
		f("nested", ds, [][]byte{benchEventNested}, len(benchEventNested))
		f("generated", ds, stream, size)
	}
}

// cpuTime is the CPU time of the process: on a machine shared with other work, a steadier
// figure than the wall time per op.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkDecodeCopying is BenchmarkDecode/scanner/demo with the id and key strings copied.
func BenchmarkDecodeCopying(b *testing.B) {
	dec := NewDecoder(demo(b), Limits{MaxBytes: 64 << 10, FutureSkew: time.Hour})
	var r Row
	b.ReportAllocs()
	b.SetBytes(int64(len(benchEvent)))
	for b.Loop() {
		if reason, detail := dec.Decode(benchEvent, "events", 0, 1, now, &r); reason != "" {
			b.Fatal(reason, detail)
		}
	}
}

// BenchmarkDecodeEncodingJSON is the same event through encoding/json into a map, the
// alternative the decoder was chosen against.
func BenchmarkDecodeEncodingJSON(b *testing.B) {
	b.SetBytes(int64(len(benchEvent)))
	for b.Loop() {
		var m map[string]any
		if err := json.Unmarshal(benchEvent, &m); err != nil {
			b.Fatal(err)
		}
		ts, _ := time.Parse(time.RFC3339Nano, m["ts"].(string))
		_ = ts
		for _, k := range []string{"event", "country", "device", "user_id"} {
			_, _ = m[k].(string)
		}
		_, _ = m["value"].(float64)
	}
}
