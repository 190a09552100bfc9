package event

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/lambda-platform/lambda/shared/config"
	"github.com/lambda-platform/lambda/shared/gen"
)

// The scanner is tested against the fastjson tree it replaces: every event of a corpus and
// every mutation of it must give the same reason, the same detail and the same row through
// Decode as through decodeTree.

// diffDatasets are the configurations the scanner is compared under: the tests' orders, the
// benchmark's events (nested dimensions), and one whose paths overlap (a field and a field
// below it, shared prefixes, an array index, a nested time).
func diffDatasets(t testing.TB) []*config.Dataset {
	t.Helper()
	out := []*config.Dataset{dataset(t)}
	for _, y := range []string{`
datasets:
  - name: events
    topic: events
    id_field: event_id
    time_field: ts
    dimensions:
      - {name: event,   field: event}
      - {name: country, field: geo.country}
      - {name: device,  field: context.device}
    metrics:
      - {name: events,  type: count}
      - {name: users,   type: uniq,     field: user_id}
      - {name: revenue, type: sum,      field: value}
      - {name: value_p95, type: quantile, field: value, level: 0.95}
`, `
datasets:
  - name: overlap
    topic: overlap
    id_field: a.id
    time_field: t.s
    dimensions:
      - {name: a, field: a}
      - {name: ab, field: a.b}
      - {name: abc, field: a.b.c}
      - {name: first, field: items.0}
    metrics:
      - {name: n_sum, type: sum, field: a.n}
      - {name: k_uniq, type: uniq, field: k}
      - {name: price, type: max, field: items.1.price}
      - {name: deep, type: min, field: a.b.d}
`} {
		cfg, err := config.Parse("diff.yaml", []byte(y), nil)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, &cfg.Datasets[0])
	}
	return out
}

// diffCorpus is the events the scanner is compared on, before mutation.
func diffCorpus(t testing.TB) []string {
	t.Helper()
	c := []string{
		// The decoder's tests.
		`{"meta":{"id":"a1"},"ts":"2026-03-10T13:30:00.250+02:00","geo":{"country":"DE"},"plan":"pro","user":{"id":"u7"},"amount":12.5}`,
		`{"meta":{"id":42},"ts":1773140000123,"geo":{"country":7},"plan":null,"user":{"id":1001},"amount":3}`,
		`{"ts":"2026-03-10T00:00:00Z"}`, `{"ts":1773140000123.5}`, `not json`, `{"ts": `, `[1,2]`,
		`{"meta":{"id":"x"}}`, `{"ts":null}`, `{"ts":"yesterday"}`, `{"ts":true}`, `{"ts":"2026-03-10T12:06:00Z"}`,
		`{"ts":99999999999999999}`, `{"ts":"2026-03-10T12:04:00Z"}`, `{"ts":-5000}`, `{"ts":"2025-11-01T00:00:00Z"}`,
		`{"ts":1773140000000,"amount":"lots"}`, `{"ts":1773140000000,"geo":{"country":{"a":1}}}`,
		`{"ts":1773140000000,"user":{"id":[1]}}`, `{"ts":1773140000000,"meta":{"id":true}}`,
		`{"ts":1773140000123,"amount":1e400}`, `{"ts":"2026-03-10T11:30:00Z","amount":-0}`, `{}`, `[]`, `"x"`, `{"ts":1.5e12}`,
		`{"ts":"2026-03-10T11:30:00Z","geo":{"country":"\u00e9\ud800"}}`, `{"ts":1773140000000,"meta":{"id":""}}`,
		"{\"ts\":\"2026-01-10T0:00:00Z\",\"\":{\"\":\"\\0\"}}",
		// Whitespace, everywhere fastjson allows it and where it does not.
		" \t\r\n{ \"ts\" : 1773140000000 , \"amount\" :\n2 ,\"geo\": { \"country\" : \"DE\" } } \n",
		"{\"ts\":1773140000000}\x00", "\x0b{\"ts\":1773140000000}", "{\"ts\":1773140000000\x0b}", "{\"ts\"\v:1}",
		`{"ts":1773140000000} {}`, `{"ts":1773140000000}}`, `{"ts":1773140000000,}`, `{,"ts":1773140000000}`,
		// Numbers: exponents, signs, zeros, huge, and what fastjson takes as a number.
		`{"ts":1.77314e12,"amount":1E2}`, `{"ts":1773140000000,"amount":-0.0}`, `{"ts":1773140000000,"amount":+5}`,
		`{"ts":1773140000000,"amount":00012}`, `{"ts":1773140000000,"amount":1.2.3}`, `{"ts":1773140000000,"amount":1-2}`,
		`{"ts":1773140000000,"amount":.5}`, `{"ts":1773140000000,"amount":5.}`, `{"ts":1773140000000,"amount":e5}`,
		`{"ts":1773140000000,"amount":-}`, `{"ts":1773140000000,"amount":+}`, `{"ts":1773140000000,"amount":-e}`,
		`{"ts":1773140000000,"amount":nan}`, `{"ts":1773140000000,"amount":NaN}`, `{"ts":1773140000000,"amount":-Inf}`,
		`{"ts":1773140000000,"amount":inf}`, `{"ts":1773140000000,"amount":+nan}`, `{"ts":1773140000000,"amount":Infinity}`,
		`{"ts":1773140000000,"amount":nanx}`, `{"ts":1773140000000,"amount":1nan}`, `{"ts":1773140000000,"amount":1e}`,
		`{"ts":1773140000000,"amount":123456789012345678901234567890}`, `{"ts":1773140000000,"amount":1e308}`,
		`{"ts":1773140000000,"amount":-1e309}`, `{"ts":1773140000000,"amount":4.9e-324}`, `{"ts":1773140000000,"amount":1e-400}`,
		`{"ts":1773140000000,"amount":0x10}`, `{"ts":1773140000000,"amount":1_000}`, `{"ts":1773140000000,"amount":١}`,
		`{"ts":1773140000000.0}`, `{"ts":1773140000000e0}`, `{"ts":-0}`, `{"ts":0}`, `{"ts":-1773140000000}`,
		`{"ts":4294967295000}`, `{"ts":4294967295001}`, `{"ts":9223372036854775807}`, `{"ts":9223372036854775808}`,
		`{"ts":-9223372036854775809}`, `{"ts":1.7731400000005e12}`, `{"ts":nan}`, `{"ts":inf}`, `{"ts":-inf}`, `{"ts":1e400}`,
		`{"ts":"1773140000000"}`, `{"ts":[1773140000000]}`, `{"ts":{"s":1}}`, `{"ts":false}`,
		`{"ts":1773140000000,"meta":{"id":1.50}}`, `{"ts":1773140000000,"meta":{"id":-0}}`, `{"ts":1773140000000,"meta":{"id":nan}}`,
		`{"ts":1773140000000,"meta":{"id":null}}`, `{"ts":1773140000000,"meta":{"id":{}}}`, `{"ts":1773140000000,"meta":{"id":[]}}`,
		`{"ts":1773140000000,"meta":{"id":false}}`, `{"ts":1773140000000,"meta":"x"}`, `{"ts":1773140000000,"meta":null}`,
		`{"ts":1773140000000,"user":{"id":1e3}}`, `{"ts":1773140000000,"user":{"id":true}}`, `{"ts":1773140000000,"plan":false}`,
		`{"ts":1773140000000,"amount":true}`, `{"ts":1773140000000,"amount":{}}`, `{"ts":1773140000000,"amount":[]}`,
		`{"ts":1773140000000,"amount":null}`, `{"ts":1773140000000,"amount":"12"}`,
		// Times in every format.
		`{"ts":"2026-03-10T11:30:00Z"}`, `{"ts":"2026-03-10T11:30:00.123456789Z"}`, `{"ts":"2026-03-10T11:30:00.1234567891Z"}`,
		`{"ts":"2026-03-10T11:30:00+01:00"}`, `{"ts":"2026-03-10T11:30:00-23:59"}`, `{"ts":"2026-03-10t11:30:00z"}`,
		`{"ts":"2026-03-10 11:30:00Z"}`, `{"ts":"2026-03-10T11:30:00"}`, `{"ts":"2026-03-10T11:30:60Z"}`, `{"ts":"2026-02-30T11:30:00Z"}`,
		`{"ts":"2026-03-10T11:30:00,5Z"}`, `{"ts":"2026-03-10T11:30:00.Z"}`, `{"ts":"2026-03-10T11:30:00+0100"}`,
		`{"ts":"2026-03-10T11:30:00\u005a"}`, `{"ts":"2026-03-10T11:30:00\Z"}`, `{"ts":"2026-03-10T11:30:00Z\u0000"}`,
		`{"ts":" 2026-03-10T11:30:00Z"}`, `{"ts":""}`, `{"ts":"\""}`, `{"ts":"\\"}`, `{"ts":"\\\"\\"}`,
		// Strings: escapes, surrogates, control characters, invalid UTF-8.
		`{"ts":1773140000000,"meta":{"id":"a\"b"},"user":{"id":"\\"},"plan":"\/\b\f\n\r\t"}`,
		`{"ts":1773140000000,"meta":{"id":"\u00e9\u4e2d\ud83d\ude00"},"plan":"\ud83d\u0041","user":{"id":"\ude00\ud83d"}}`,
		`{"ts":1773140000000,"meta":{"id":"\ud83d"},"plan":"\ud83dx","user":{"id":"\u12"}}`,
		`{"ts":1773140000000,"meta":{"id":"\u12g4"},"plan":"\x","user":{"id":"\ud83d\u12g4"}}`,
		`{"ts":1773140000000,"meta":{"id":"\u0000"},"plan":"\U0041","user":{"id":"a\"}}`,
		`{"ts":1773140000000,"meta":{"id":"\"},"plan":"x"}`, `{"ts":1773140000000,"meta":{"id":"abc`,
		`{"ts":1773140000000,"meta":{"id":"\\\\"},"plan":"\\\"x\\"}`, `{"ts":1773140000000,"plan":"\u002e\u002E"}`,
		"{\"ts\":1773140000000,\"meta\":{\"id\":\"\xff\xfe\"},\"plan\":\"\xc3\",\"user\":{\"id\":\"\xed\xa0\x80\"}}",
		"{\"ts\":1773140000000,\"plan\":\"tab\there\nnewline\x01\"}",
		// Keys: duplicates, escapes, prefixes of configured keys, empty.
		`{"ts":1773140000000,"ts":"2026-03-10T11:30:00Z"}`, `{"ts":"bad","ts":1773140000000}`,
		`{"ts":1773140000000,"geo":{"country":"DE"},"geo":{"country":"FR"}}`, `{"ts":1773140000000,"geo":"x","geo":{"country":"FR"}}`,
		`{"ts":1773140000000,"geo":{"country":"DE","country":"FR"}}`, `{"ts":1773140000000,"amount":1,"amount":"x"}`,
		`{"t\u0073":1773140000000}`, `{"ts":1773140000000,"t\u0073":"bad"}`, `{"t\u0073":"bad","ts":1773140000000}`,
		`{"ts":1773140000000,"geo":{"countr\u0079":"DE"}}`, `{"ts":1773140000000,"x\"y":1,"geo":{"a\\b":2,"country":"DE"}}`,
		`{"ts":1773140000000,"other":{"k\"ey":{"ts":5}}}`, `{"t":1,"tss":2,"ts ":3,"Ts":4,"TS":5,"ts":1773140000000}`,
		`{"ts":1773140000000,"geo.country":"DE","meta.id":"x","me":{"id":"y"},"meta":{"i":"z","idd":"w","id":"v"}}`,
		`{"":1,"ts":1773140000000,"":{"":""}}`, `{"ts":1773140000000,"geo":{},"meta":{},"user":{}}`,
		`{"ts":1773140000000,"geo":[],"meta":[1],"user":["id"]}`, `{"ts":1773140000000,"geo":{"country":"DE"}`,
		`{"ts":1773140000000,"geo":{"country":"DE"}}}`, `{"ts":1773140000000 "amount":1}`, `{"ts" 1773140000000}`,
		`{ts:1773140000000}`, `{'ts':1773140000000}`, `{"ts":1773140000000,"amount"}`, `{"ts":1773140000000,"amount":}`,
		// Values skipped: nesting, arrays, literals.
		`{"ts":1773140000000,"x":[1,[2,[3,{"a":[true,false,null]}]],{},[]],"y":{"z":{"w":[{"v":"\"]"}]}}}`,
		`{"ts":1773140000000,"x":[1,]}`, `{"ts":1773140000000,"x":[,1]}`, `{"ts":1773140000000,"x":[1 2]}`,
		`{"ts":1773140000000,"x":tru}`, `{"ts":1773140000000,"x":truex}`, `{"ts":1773140000000,"x":nul}`, `{"ts":1773140000000,"x":True}`,
		`{"ts":1773140000000,"x":fals}`, `{"ts":1773140000000,"x":[}`, `{"ts":1773140000000,"x":{"a"}}`, `{"ts":1773140000000,"x":{"a":1,}}`,
		`{"ts":1773140000000,"x":"unterminated}`, `{"ts":1773140000000,"x":[1,2`, `{"ts":1773140000000,"x":{`,
		// The overlapping dataset.
		`{"t":{"s":1773140000000},"a":{"id":"i","b":{"c":"C","d":4},"n":2},"k":"K","items":["x",{"price":3}]}`,
		`{"t":{"s":1773140000000},"a":"str","items":[]}`, `{"t":{"s":1773140000000},"a":{"b":"B"},"items":[1]}`,
		`{"t":{"s":1773140000000},"a":{"b":{"c":1}},"items":{"0":"zero","1":{"price":2}}}`,
		`{"t":{"s":1773140000000},"a":{"b":{"c":1}},"a":{"b":"later"}}`, `{"t":{"s":1773140000000},"a":{"n":"x"}}`,
		`{"t":{"s":1773140000000},"a":{"b":[1]}}`, `{"t":"2026-03-10T11:30:00Z"}`, `{"t":{"s":null}}`, `{"t":{"s":{}}}`,
		`{"t":{"s":1773140000000},"items":[{"price":1},{"price":"x"}]}`, `{"t":{"s":1773140000000},"items":"abc"}`,
		// The benchmark's events.
		`{"event_id":"e-1","ts":"2026-03-10T11:30:00.250Z","event":"purchase","geo":{"country":"de"},"context":{"device":"ios"},"user_id":"u4711","value":12.5}`,
		`{"context":{"device":"web"},"event":"click","event_id":"1-2","geo":{"country":"us"},"ts":1773140000000,"user_id":"u1"}`,
	}
	// Nesting around fastjson's depth limit, on and off a configured path.
	for _, d := range []int{5, 280, 289, 290, 291, 298, 299, 300, 301} {
		c = append(c, `{"ts":1773140000000,"x":`+strings.Repeat("[", d)+strings.Repeat("]", d)+`}`)
		c = append(c, `{"ts":1773140000000,"x":`+strings.Repeat(`{"a":`, d)+"1"+strings.Repeat("}", d)+`}`)
	}
	// Generated events, malformed ones included.
	for _, ds := range diffDatasets(t) {
		g := gen.New(ds, gen.Options{Seed: 7, BadRatio: 0.2, DupRatio: 0.05})
		for range 60 {
			c = append(c, string(g.Next(now, false).Value))
		}
	}
	// The fuzzer's finds.
	files, _ := filepath.Glob("testdata/fuzz/*/*")
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		lines := strings.Split(string(b), "\n")
		if len(lines) < 2 || !strings.HasPrefix(lines[1], "[]byte(") {
			continue
		}
		s, err := strconv.Unquote(strings.TrimSuffix(strings.TrimPrefix(lines[1], "[]byte("), ")"))
		if err != nil {
			t.Fatal(err)
		}
		c = append(c, s)
	}
	return c
}

// mutations returns the event's prefixes, and the event with each byte replaced by one of a
// few, and with a few inserted before each byte (every fifth byte under the race detector).
// Long events (the deep ones, the generated ones) are not mutated, for time.
func mutations(ev string) []string {
	out := []string{ev}
	if len(ev) > 160 {
		return out
	}
	stride := 1
	if raceEnabled {
		stride = 5
	}
	for i := 0; i < len(ev); i += stride {
		out = append(out, ev[:i])
		for _, c := range []byte("\"\\{}[],: 0-e.nt\x00\xff") {
			out = append(out, ev[:i]+string(c)+ev[i+1:])
		}
		for _, c := range []byte("\"\\,}]") {
			out = append(out, ev[:i]+string(c)+ev[i:])
		}
	}
	return out
}

// differ compares Decode with decodeTree on one event: the same reason, detail and row, for
// a copying and for a Transient decoder. It returns whether the scanner took the event.
type differ struct {
	scanned, tree *Decoder
}

func newDiffer(ds *config.Dataset, transient bool) differ {
	d := differ{NewDecoder(ds, limits), NewDecoder(ds, limits)}
	d.scanned.Transient, d.tree.Transient = transient, transient
	return d
}

func (d differ) check(t testing.TB, in []byte) bool {
	t.Helper()
	var a, b Row
	took := d.scanned.scan(in)
	ra, da := d.scanned.Decode(in, "orders", 3, 99, now, &a)
	rb, db := d.tree.decodeTree(in, "orders", 3, 99, now, &b)
	if ra != rb || da != db {
		t.Fatalf("%q (scanned %v):\nscanner %q %q\nfastjson %q %q", in, took, ra, da, rb, db)
	}
	if ra == "" {
		if x, y := rowString(&a), rowString(&b); x != y {
			t.Fatalf("%q (scanned %v):\nscanner  %s\nfastjson %s", in, took, x, y)
		}
	}
	return took
}

func rowString(r *Row) string {
	return fmt.Sprintf("id %q time %s dims %q nums %v keys %q", r.ID, r.Time.Format(time.RFC3339Nano)+" "+r.Time.Location().String(), r.Dims, r.Nums, r.Keys)
}

func TestScannerMatchesFastjson(t *testing.T) {
	corpus := diffCorpus(t)
	for _, ds := range diffDatasets(t) {
		for _, transient := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/transient=%v", ds.Name, transient), func(t *testing.T) {
				d := newDiffer(ds, transient)
				var n, took int
				for _, ev := range corpus {
					ms := []string{ev}
					if !transient {
						ms = mutations(ev)
					}
					for _, m := range ms {
						n++
						if d.check(t, []byte(m)) {
							took++
						}
					}
				}
				t.Logf("%d events, %d scanned, %d through fastjson", n, took, n-took)
			})
		}
	}
}

// TestScannerTakes: the events the scanner must not give to fastjson, and those it must.
func TestScannerTakes(t *testing.T) {
	dss := diffDatasets(t)
	f := func(ds *config.Dataset, ev string, want bool) {
		t.Helper()
		if got := NewDecoder(ds, limits).scan([]byte(ev)); got != want {
			t.Errorf("%s: scanned %v, want %v", ev, got, want)
		}
	}
	orders, events, overlap := dss[0], dss[1], dss[2]
	f(events, string(benchEventNested), true)
	f(orders, `{"ts":1773140000000,"meta":{"id":"\u00e9\ud83d\ude00"},"x":{"k\"":1}}`, true) // escapes in values, and in keys off the paths
	f(orders, `{"ts":"bad","amount":"lots","geo":{"country":{}}}`, true)                     // rejects on valid JSON
	f(orders, `{"ts":1773140000000,"ts":nan,"amount":1-2}`, true)
	f(orders, `{"t\u0073":1773140000000}`, false) // an escaped key on a path
	f(orders, `{"ts":1773140000000,"meta":{"i\"d":1}}`, false)
	f(overlap, `{"t":{"s":1773140000000},"items":[1]}`, false) // an array under an index path
	f(overlap, `{"t":{"s":1773140000000},"a":[1]}`, true)
	f(orders, `[]`, false)
	f(orders, `{"ts":1773140000000,}`, false) // invalid: fastjson words the error
}

// FuzzDecodeScanner compares the scanner with the fastjson tree on any event, under each
// dataset of the differential test. `go test` runs the seeds; `go test -fuzz FuzzDecodeScanner`
// searches.
func FuzzDecodeScanner(f *testing.F) {
	for _, ev := range diffCorpus(f) {
		f.Add([]byte(ev))
	}
	var ds []differ
	for _, d := range diffDatasets(f) {
		ds = append(ds, newDiffer(d, false), newDiffer(d, true))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		for _, d := range ds {
			d.check(t, in)
		}
	})
}

// TestParseRFC3339 holds the scanner's time parsing to time.Parse(time.RFC3339Nano) on times
// around every range it checks, with fractions of 0 to 10 digits, every offset shape, and
// each of them with one byte changed.
func TestParseRFC3339(t *testing.T) {
	var ins []string
	for _, date := range []string{"2026-03-10", "1970-01-01", "1969-12-31", "0000-01-01", "9999-12-31", "2024-02-29",
		"2023-02-29", "1900-02-29", "2000-02-29", "2026-04-31", "2026-04-30", "2026-13-01", "2026-00-10", "2026-01-00", "2026-12-32"} {
		for _, clock := range []string{"11:30:00", "00:00:00", "23:59:59", "24:00:00", "23:60:00", "23:59:60"} {
			for _, frac := range []string{"", ".", ".5", ".123", ".123456789", ".1234567891", ".000000000"} {
				for _, zone := range []string{"Z", "z", "+01:00", "-23:59", "+24:00", "-00:60", "+0100", "+01:0", "", "ZZ", "+01:00Z"} {
					ins = append(ins, date+"T"+clock+frac+zone)
				}
			}
		}
	}
	for _, in := range slices.Clone(ins) {
		for i := range len(in) {
			for _, c := range []byte("0 9a-T:.+Z") {
				ins = append(ins, in[:i]+string(c)+in[i+1:])
			}
		}
	}
	for _, in := range ins {
		checkRFC3339(t, in)
	}
}

func checkRFC3339(t *testing.T, in string) {
	t.Helper()
	got, gerr := parseRFC3339([]byte(in))
	want, werr := time.Parse(time.RFC3339Nano, in)
	if (gerr == nil) != (werr == nil) || (gerr != nil && gerr.Error() != werr.Error()) {
		t.Fatalf("%q: error %v, time.Parse says %v", in, gerr, werr)
	}
	if gerr == nil && (!got.Equal(want) || got.Location() != time.UTC) {
		t.Fatalf("%q: %s, time.Parse says %s", in, got.Format(time.RFC3339Nano), want.UTC().Format(time.RFC3339Nano))
	}
}

// FuzzParseRFC3339: the scanner's time parsing against time.Parse on any string.
func FuzzParseRFC3339(f *testing.F) {
	for _, s := range []string{"2026-03-10T11:30:00Z", "2026-03-10T11:30:00.123456789+02:00", "2024-02-29T23:59:59-23:59"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) { checkRFC3339(t, in) })
}
