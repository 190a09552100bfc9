package e2e

import (
	"encoding/json"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"
)

// The ground truth of the fault suite: every order the broker acknowledged, with its partition
// and offset, and every row the test inserted into raw itself, aggregated the way the contract
// says (DESIGN, Semantics) for every metric type of faultDataset.

// order is one event of a fault dataset. An empty customer is a missing key, a nil amount a
// missing value; payload says how they are missing.
type order struct {
	id       string
	t        time.Time
	channel  string
	country  string // shipping.country; "" when missing
	customer string
	amount   *float64
}

// payload is the event as JSON. Missing fields are written in the ways producers write them:
// absent, null, or an empty parent object.
func (o order) payload(style int) []byte {
	m := map[string]any{"order_id": o.id, "ts": o.t.UTC().Format(time.RFC3339Nano), "channel": o.channel}
	if o.country != "" {
		m["shipping"] = map[string]any{"country": o.country}
	} else if style%2 == 0 {
		m["shipping"] = map[string]any{}
	}
	switch {
	case o.customer != "":
		m["customer"] = map[string]any{"id": o.customer}
	case style%3 == 0:
		m["customer"] = map[string]any{"id": nil}
	case style%3 == 1:
		m["customer"] = map[string]any{}
	}
	switch {
	case o.amount != nil:
		m["amount"] = *o.amount
	case style%2 == 1:
		m["amount"] = nil
	}
	b, _ := json.Marshal(m)
	return b
}

// Channels: web orders carry every field, app orders miss some keys and values, kiosk orders
// never carry a customer (uniq 0, never 1) and gift orders never carry an amount (sum, min,
// max, avg and quantile null, never 0).
var (
	faultChannels  = []string{"web", "app", "kiosk", "gift"}
	faultCountries = []string{"fr", "de", "us", ""}
)

// orderGen makes orders with a seeded generator; ids are unique per generator prefix.
type orderGen struct {
	mu     sync.Mutex
	rng    *rand.Rand
	prefix string
	n      int
}

func newOrderGen(seed uint64, prefix string) *orderGen {
	return &orderGen{rng: rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)), prefix: prefix}
}

// day returns n orders at times within day, never after now (today's orders are in the past).
func (g *orderGen) day(day time.Time, n int) []order {
	g.mu.Lock()
	defer g.mu.Unlock()
	span := 24 * time.Hour
	if now := time.Now().UTC(); now.Sub(day) < span {
		span = max(now.Sub(day)-time.Second, time.Second)
	}
	out := make([]order, n)
	for i := range out {
		g.n++
		o := order{id: fmt.Sprintf("%s-%06d", g.prefix, g.n), t: day.Add(time.Duration(g.rng.Int64N(int64(span)))).Truncate(time.Millisecond),
			channel: faultChannels[g.rng.IntN(len(faultChannels))], country: faultCountries[g.rng.IntN(len(faultCountries))]}
		if o.channel != "kiosk" && g.rng.IntN(5) > 0 {
			o.customer = fmt.Sprintf("c%03d", g.rng.IntN(300))
		}
		if o.channel != "gift" && g.rng.IntN(6) > 0 {
			a := float64(100+g.rng.IntN(99900)) / 100 // 1.00 to 999.99
			o.amount = &a
		}
		out[i] = o
	}
	return out
}

// record is an order the broker acknowledged at partition/offset.
type record struct {
	part int32
	off  int64
	o    order
}

// bounds is a point of knowledge: per partition, the records below an offset, and the first
// imp rows the test inserted into raw.
type bounds struct {
	at  time.Time
	off map[int32]int64
	imp int
}

func (b bounds) String() string {
	parts := make([]string, 0, len(b.off))
	for p, o := range b.off {
		parts = append(parts, fmt.Sprintf("%d:%d", p, o))
	}
	sort.Strings(parts)
	return fmt.Sprintf("{%s imported:%d}", strings.Join(parts, " "), b.imp)
}

// truthLog is the ground truth of one dataset.
type truthLog struct {
	mu   sync.Mutex
	recs []record
	// imported rows, inserted into raw by the test: impStarted have been sent, impDone are
	// known to be in raw.
	imported            []order
	impStarted, impDone int
	// cache holds the truths computed since the records last changed, by bounds.
	cache map[string]map[groupKey]*agg
}

func (l *truthLog) add(recs []record) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.recs = append(l.recs, recs...)
	l.cache = nil
}

// all is the bound that holds everything produced and imported so far.
func (l *truthLog) all() bounds {
	l.mu.Lock()
	defer l.mu.Unlock()
	b := bounds{off: map[int32]int64{}, imp: len(l.imported)}
	for _, r := range l.recs {
		b.off[r.part] = max(b.off[r.part], r.off+1)
	}
	return b
}

// days lists the days with orders, produced or imported.
func (l *truthLog) days() []time.Time {
	l.mu.Lock()
	defer l.mu.Unlock()
	seen := map[time.Time]bool{}
	for _, r := range l.recs {
		seen[dayOfT(r.o.t)] = true
	}
	for _, o := range l.imported {
		seen[dayOfT(o.t)] = true
	}
	out := make([]time.Time, 0, len(seen))
	for d := range seen {
		out = append(out, d)
	}
	slices.SortFunc(out, func(a, b time.Time) int { return a.Compare(b) })
	return out
}

// uncommitted reports whether a record of day d lies at or past the committed offsets.
func (l *truthLog) uncommitted(day time.Time, committed map[int32]int64) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, r := range l.recs {
		if r.off >= committed[r.part] && dayOfT(r.o.t).Equal(day) {
			return true
		}
	}
	return false
}

func dayOfT(t time.Time) time.Time { return t.UTC().Truncate(24 * time.Hour) }

// groupKey names one row of a grouping set: the day, the set ("" the day's total, "channel",
// "country", "channel,country") and the dimension values ("" outside the set).
type groupKey struct {
	day              time.Time
	grouping         string
	channel, country string
}

func (k groupKey) String() string {
	return fmt.Sprintf("%s grouping=%q channel=%q country=%q", k.day.Format(time.DateOnly), k.grouping, k.channel, k.country)
}

var faultGroupings = []string{"", "channel", "country", "channel,country"}

func keyOf(o order, grouping string) groupKey {
	k := groupKey{day: dayOfT(o.t), grouping: grouping}
	if strings.Contains(grouping, "channel") {
		k.channel = o.channel
	}
	if strings.Contains(grouping, "country") {
		k.country = o.country
	}
	return k
}

// agg is a group's orders, and the value of every metric over them once done.
type agg struct {
	orders    int
	customers map[string]bool
	amounts   []float64
	vals      map[string]*float64
}

// truth aggregates the orders within b, each id once (duplicates carry the same content). The
// result is shared and must not be changed.
func (l *truthLog) truth(b bounds) map[groupKey]*agg {
	l.mu.Lock()
	defer l.mu.Unlock()
	key := b.String()
	if out, ok := l.cache[key]; ok {
		return out
	}
	out := map[groupKey]*agg{}
	seen := map[string]bool{}
	add := func(o order) {
		if seen[o.id] {
			return
		}
		seen[o.id] = true
		for _, g := range faultGroupings {
			k := keyOf(o, g)
			a := out[k]
			if a == nil {
				a = &agg{customers: map[string]bool{}}
				out[k] = a
			}
			a.orders++
			if o.customer != "" {
				a.customers[o.customer] = true
			}
			if o.amount != nil {
				a.amounts = append(a.amounts, *o.amount)
			}
		}
	}
	for _, r := range l.recs {
		if r.off < b.off[r.part] {
			add(r.o)
		}
	}
	for _, o := range l.imported[:min(b.imp, len(l.imported))] {
		add(o)
	}
	for _, a := range out {
		a.done()
	}
	if l.cache == nil || len(l.cache) > 64 {
		l.cache = map[string]map[groupKey]*agg{}
	}
	l.cache[key] = out
	return out
}

// faultMetrics are the metrics of faultDataset, one of every type.
var faultMetrics = []string{"orders", "customers", "revenue", "min_amount", "max_amount", "avg_amount", "p90_amount",
	"revenue_exact", "revenue_per_order"}

// done computes the value of every metric over the group.
func (a *agg) done() {
	f := func(v float64) *float64 { return &v }
	a.vals = map[string]*float64{"orders": f(float64(a.orders)), "customers": f(float64(len(a.customers)))}
	s := a.amounts
	if len(s) == 0 {
		return
	}
	slices.Sort(s)
	var sum float64
	var cents int64
	for _, v := range s {
		sum += v
		cents += int64(math.Round(v * 100))
	}
	a.vals["revenue"] = f(sum)
	a.vals["revenue_exact"] = f(float64(cents) / 100)
	a.vals["revenue_per_order"] = f(sum / float64(a.orders))
	a.vals["min_amount"] = f(s[0])
	a.vals["max_amount"] = f(s[len(s)-1])
	a.vals["avg_amount"] = f(sum / float64(len(s)))
	// quantileExact(0.9): the element at floor(0.9 * n) of the sorted values.
	a.vals["p90_amount"] = f(s[int(0.9*float64(len(s)))])
}

// value is a metric's exact value over a group (nil: null); a nil agg is a group without
// orders.
func (a *agg) value(metric string) *float64 {
	if a == nil {
		switch metric {
		case "orders", "customers":
			zero := 0.0
			return &zero
		}
		return nil
	}
	if !slices.Contains(faultMetrics, metric) {
		panic("unknown metric " + metric)
	}
	return a.vals[metric]
}

func fmtVal(v *float64) string {
	if v == nil {
		return "null"
	}
	return fmt.Sprint(*v)
}

func sameVal(a, b *float64) bool {
	if a == nil || b == nil {
		return a == nil && b == nil
	}
	return math.Abs(*a-*b) <= 1e-9*math.Max(1, math.Abs(*b))
}

// within checks an exact value v of metric over a group against the truth at the bound
// before the read (lo) and after it (hi). Counts, distinct counts, sums of the test's
// non-negative amounts and max only grow as records are added (null below every value);
// min only shrinks (null above every value); avg, quantile and the ratio are checked only when
// the group held the same records at both bounds.
func within(metric string, v *float64, lo, hi *agg) error {
	vlo, vhi := lo.value(metric), hi.value(metric)
	less := func(a, b *float64) bool { // a <= b, null lowest
		if a == nil {
			return true
		}
		return b != nil && *a <= *b+1e-9*math.Max(1, math.Abs(*b))
	}
	ok := true
	switch metric {
	case "orders", "customers":
		ok = v != nil && less(vlo, v) && less(v, vhi)
	case "revenue", "revenue_exact", "max_amount":
		ok = less(vlo, v) && less(v, vhi)
	case "min_amount":
		// Reversed, null highest.
		lessMin := func(a, b *float64) bool { return b == nil || (a != nil && less(a, b)) }
		ok = lessMin(vhi, v) && lessMin(v, vlo)
	default:
		n := func(a *agg) int {
			if a == nil {
				return 0
			}
			return a.orders
		}
		if n(lo) != n(hi) {
			return nil
		}
		ok = sameVal(v, vlo)
	}
	if !ok {
		return fmt.Errorf("%s = %s, truth between %s (before the read) and %s (after)", metric, fmtVal(v), fmtVal(vlo), fmtVal(vhi))
	}
	return nil
}
