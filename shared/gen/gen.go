// Package gen generates realistic events for any configured dataset and produces them to
// Kafka with sarama: skewed dimension values, user ids with realistic cardinality, log-normal
// amounts, history spread over past days, and chosen ratios of duplicates, late events and
// malformed events. `lambda gen`, `lambda dev`, the end-to-end tests and the benchmarks use it.
package gen

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"math/rand/v2"
	"strconv"
	"strings"
	"time"

	"github.com/IBM/sarama"

	"github.com/lambda-platform/lambda/shared/config"
	"github.com/lambda-platform/lambda/shared/kafkaconn"
	"github.com/lambda-platform/lambda/shared/metric"
)

// Kind says what an event is meant to be.
type Kind int

// Event kinds.
const (
	Valid Kind = iota
	Duplicate
	Late
	Malformed
)

// Options shape the stream.
type Options struct {
	Seed uint64
	// Days of history: history events are spread uniformly over [now - Days, now).
	Days int
	// DupRatio, LateRatio and BadRatio are the shares of duplicates (an earlier event sent
	// again, same id), late events (a time one to Days days back, sent now) and malformed
	// events.
	DupRatio, LateRatio, BadRatio float64
	// Users is the number of distinct users; 0 picks 5000.
	Users int
}

// Generator makes events for one dataset. It is not safe for concurrent use.
type Generator struct {
	ds     *config.Dataset
	o      Options
	rng    *rand.Rand
	vocab  [][]string
	zipfs  []*rand.Zipf
	users  *rand.Zipf
	seq    uint64
	recent [][]byte // recently sent valid events, for duplicates
	prefix string
}

// New returns a generator for a dataset.
func New(ds *config.Dataset, o Options) *Generator {
	if o.Users <= 0 {
		o.Users = 5000
	}
	rng := rand.New(rand.NewPCG(o.Seed, o.Seed^0x9e3779b97f4a7c15))
	g := &Generator{ds: ds, o: o, rng: rng, prefix: fmt.Sprintf("%x", o.Seed)}
	for _, d := range ds.Dimensions {
		v := vocabulary(d.Name)
		g.vocab = append(g.vocab, v)
		g.zipfs = append(g.zipfs, rand.NewZipf(rng, 1.3, 2, uint64(len(v)-1)))
	}
	g.users = rand.NewZipf(rng, 1.1, 10, uint64(o.Users-1))
	return g
}

var known = map[string][]string{
	"event":   {"page_view", "click", "search", "add_to_cart", "purchase", "signup", "share", "logout"},
	"country": {"us", "de", "in", "br", "gb", "fr", "jp", "ca", "es", "it", "mx", "nl", "pl", "se", "au", "kr"},
	"device":  {"android", "ios", "web", "tablet", "tv"},
	"browser": {"chrome", "safari", "firefox", "edge", "opera"},
	"os":      {"android", "ios", "windows", "macos", "linux"},
}

func vocabulary(dim string) []string {
	if v, ok := known[dim]; ok {
		return v
	}
	v := make([]string, 40)
	for i := range v {
		v[i] = fmt.Sprintf("%s_%d", dim, i+1)
	}
	return v
}

// Event is one generated event.
type Event struct {
	Key   []byte
	Value []byte
	Kind  Kind
	// ID and Time are those of a valid, duplicate or late event.
	ID   string
	Time time.Time
}

// Next returns the next event. History events (Options.Days > 0 and history true) get a time
// spread over the past days; live ones get now.
func (g *Generator) Next(now time.Time, history bool) Event {
	r := g.rng.Float64()
	switch {
	case r < g.o.BadRatio:
		return g.malformed(now)
	case r < g.o.BadRatio+g.o.DupRatio && len(g.recent) > 0:
		v := g.recent[g.rng.IntN(len(g.recent))]
		var probe map[string]any
		_ = json.Unmarshal(v, &probe)
		id, _ := lookup(probe, g.ds.IDField).(string)
		return Event{Key: []byte(id), Value: v, Kind: Duplicate, ID: id, Time: g.timeOf(probe)}
	case r < g.o.BadRatio+g.o.DupRatio+g.o.LateRatio && g.o.Days > 0:
		t := now.Add(-time.Duration(1+g.rng.IntN(g.o.Days)) * 24 * time.Hour).Add(-time.Duration(g.rng.Int64N(int64(time.Hour))))
		return g.valid(t, Late)
	}
	t := now
	if history && g.o.Days > 0 {
		t = now.Add(-time.Duration(g.rng.Int64N(int64(g.o.Days) * int64(24*time.Hour))))
	}
	return g.valid(t, Valid)
}

func (g *Generator) timeOf(m map[string]any) time.Time {
	if ms, ok := lookup(m, g.ds.TimeField).(float64); ok {
		return time.UnixMilli(int64(ms)).UTC()
	}
	s, _ := lookup(m, g.ds.TimeField).(string)
	t, _ := time.Parse(time.RFC3339Nano, s)
	return t
}

func (g *Generator) valid(t time.Time, kind Kind) Event {
	g.seq++
	id := fmt.Sprintf("%s-%d", g.prefix, g.seq)
	m := map[string]any{}
	set(m, g.ds.IDField, id)
	// Half the events carry RFC 3339 times, half epoch milliseconds: both are accepted.
	if g.seq%2 == 0 {
		set(m, g.ds.TimeField, t.UTC().Format(time.RFC3339Nano))
	} else {
		set(m, g.ds.TimeField, t.UnixMilli())
	}
	for i, d := range g.ds.Dimensions {
		set(m, d.Field, g.vocab[i][g.zipfs[i].Uint64()])
	}
	for _, c := range g.ds.ValueColumns() {
		if c.Type == metric.KeyType {
			set(m, c.Field, "u"+strconv.FormatUint(g.users.Uint64(), 10))
			continue
		}
		// Amounts are log-normal; about one event in ten has none (missing is NULL).
		if g.rng.IntN(10) == 0 {
			continue
		}
		set(m, c.Field, math.Round(math.Exp(2.5+g.rng.NormFloat64())*100)/100)
	}
	v, _ := json.Marshal(m)
	if len(g.recent) < 4096 {
		g.recent = append(g.recent, v)
	} else {
		g.recent[g.rng.IntN(len(g.recent))] = v
	}
	return Event{Key: []byte(id), Value: v, Kind: kind, ID: id, Time: t.UTC().Truncate(time.Millisecond)}
}

func (g *Generator) malformed(now time.Time) Event {
	g.seq++
	id := fmt.Sprintf("%s-bad-%d", g.prefix, g.seq)
	var v string
	switch g.rng.IntN(6) {
	case 0:
		v = `{"` + g.ds.IDField + `": "` + id + `", "broken": `
	case 1:
		v = fmt.Sprintf(`{%q: %q}`, g.ds.IDField, id)
	case 2:
		v = fmt.Sprintf(`{%q: %q, %q: "yesterday-ish"}`, g.ds.IDField, id, g.ds.TimeField)
	case 3:
		v = fmt.Sprintf(`{%q: %q, %q: %d}`, g.ds.IDField, id, g.ds.TimeField, now.Add(240*time.Hour).UnixMilli())
	case 4:
		m := map[string]any{}
		set(m, g.ds.IDField, id)
		set(m, g.ds.TimeField, now.UnixMilli())
		for _, c := range g.ds.ValueColumns() {
			if c.Type == metric.NumberType {
				set(m, c.Field, "lots")
			}
		}
		if len(g.ds.Dimensions) > 0 {
			set(m, g.ds.Dimensions[0].Field, map[string]any{"nested": true})
		}
		b, _ := json.Marshal(m)
		v = string(b)
	default:
		v = "not json at all"
	}
	return Event{Key: []byte(id), Value: []byte(v), Kind: Malformed}
}

// set puts v at a dotted path, creating nested objects.
func set(m map[string]any, path string, v any) {
	parts := strings.Split(path, ".")
	for _, p := range parts[:len(parts)-1] {
		next, ok := m[p].(map[string]any)
		if !ok {
			next = map[string]any{}
			m[p] = next
		}
		m = next
	}
	m[parts[len(parts)-1]] = v
}

func lookup(m map[string]any, path string) any {
	var cur any = m
	for _, p := range strings.Split(path, ".") {
		mm, ok := cur.(map[string]any)
		if !ok {
			return nil
		}
		cur = mm[p]
	}
	return cur
}

// ProduceOptions say how much to send.
type ProduceOptions struct {
	// History is the number of history events sent first, as fast as the broker takes them.
	History int
	// Rate is live events per second after the history; 0 sends none.
	Rate float64
	// Count stops after this many live events; 0 runs until ctx is done.
	Count int
	Now   func() time.Time
	// OnEvent, when set, sees every event that the broker acknowledged, in send order per
	// partition; tests keep their ground truth with it.
	OnEvent func(Event)
}

// Stats counts what was sent.
type Stats struct {
	Sent, Valid, Duplicates, Late, Malformed int
}

// NewProducer returns a sarama producer to the Kafka of k (TLS and SASL included) tuned for
// throughput with acknowledged writes.
func NewProducer(k config.Kafka, clientID string) (sarama.SyncProducer, error) {
	sc, err := kafkaconn.Config(k, clientID)
	if err != nil {
		return nil, err
	}
	sc.Producer.Return.Successes = true
	sc.Producer.RequiredAcks = sarama.WaitForAll
	sc.Producer.Partitioner = sarama.NewHashPartitioner
	sc.Producer.Flush.Messages = 1000
	sc.Producer.Flush.Frequency = 20 * time.Millisecond
	sc.Producer.Retry.Max = 10
	p, err := sarama.NewSyncProducer(k.Brokers, sc)
	if err != nil {
		if err := kafkaconn.Check(context.Background(), k, sc); kafkaconn.IsPermanent(err) {
			return nil, err
		}
		return nil, fmt.Errorf("cannot connect producer to %v: %w", k.Brokers, err)
	}
	return p, nil
}

// Produce sends events of g to topic until the options are met or ctx is done. Cancelling ctx
// stops after the batch in flight.
func Produce(ctx context.Context, p sarama.SyncProducer, topic string, g *Generator, o ProduceOptions) (Stats, error) {
	if o.Now == nil {
		o.Now = time.Now
	}
	var st Stats
	send := func(evs []Event) error {
		msgs := make([]*sarama.ProducerMessage, len(evs))
		for i, e := range evs {
			msgs[i] = &sarama.ProducerMessage{Topic: topic, Key: sarama.ByteEncoder(e.Key), Value: sarama.ByteEncoder(e.Value)}
		}
		if err := p.SendMessages(msgs); err != nil {
			return fmt.Errorf("cannot produce to %s: %w", topic, err)
		}
		for _, e := range evs {
			st.Sent++
			switch e.Kind {
			case Valid:
				st.Valid++
			case Duplicate:
				st.Duplicates++
			case Late:
				st.Late++
			case Malformed:
				st.Malformed++
			}
			if o.OnEvent != nil {
				o.OnEvent(e)
			}
		}
		return nil
	}
	const batch = 2000
	for done := 0; done < o.History && ctx.Err() == nil; {
		n := min(batch, o.History-done)
		evs := make([]Event, n)
		now := o.Now()
		for i := range evs {
			evs[i] = g.Next(now, true)
		}
		if err := send(evs); err != nil {
			return st, err
		}
		done += n
	}
	if o.Rate <= 0 {
		return st, ctx.Err()
	}
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	start, sent := time.Now(), 0
	for o.Count == 0 || sent < o.Count {
		select {
		case <-ctx.Done():
			return st, nil
		case <-tick.C:
		}
		due := int(time.Since(start).Seconds()*o.Rate) - sent
		if o.Count > 0 {
			due = min(due, o.Count-sent)
		}
		for due > 0 {
			n := min(batch, due)
			evs := make([]Event, n)
			now := o.Now()
			for i := range evs {
				evs[i] = g.Next(now, false)
			}
			if err := send(evs); err != nil {
				return st, err
			}
			due -= n
			sent += n
		}
	}
	return st, nil
}
