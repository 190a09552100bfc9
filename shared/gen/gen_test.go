package gen_test

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/IBM/sarama"

	"github.com/lambda-platform/lambda/shared/broker"
	"github.com/lambda-platform/lambda/shared/config"
	"github.com/lambda-platform/lambda/shared/gen"
)

func demo(t *testing.T) *config.Dataset {
	t.Helper()
	cfg, err := config.Parse("<demo>", config.DemoYAML, nil)
	if err != nil {
		t.Fatal(err)
	}
	return &cfg.Datasets[0]
}

func TestGeneratorOutput(t *testing.T) {
	ds := demo(t)
	g := gen.New(ds, gen.Options{Seed: 1, Days: 3, DupRatio: 0.1, LateRatio: 0.05, BadRatio: 0.05})
	now := time.Date(2026, 11, 20, 12, 0, 0, 0, time.UTC)
	kinds := map[gen.Kind]int{}
	countries := map[string]int{}
	users := map[string]bool{}
	const n = 20000
	for i := 0; i < n; i++ {
		e := g.Next(now, true)
		kinds[e.Kind]++
		var m map[string]any
		err := json.Unmarshal(e.Value, &m)
		if e.Kind == gen.Malformed {
			continue
		}
		if err != nil {
			t.Fatalf("kind %d event is not JSON: %s", e.Kind, e.Value)
		}
		if m["event_id"] != e.ID || e.ID == "" {
			t.Fatalf("id %v vs %q", m["event_id"], e.ID)
		}
		if e.Time.After(now) || e.Time.Before(now.Add(-4*24*time.Hour)) {
			t.Fatalf("time %v outside history", e.Time)
		}
		countries[m["country"].(string)]++
		users[m["user_id"].(string)] = true
	}
	for k, want := range map[gen.Kind]float64{gen.Malformed: 0.05, gen.Duplicate: 0.1, gen.Late: 0.05, gen.Valid: 0.8} {
		got := float64(kinds[k]) / n
		if got < want*0.8 || got > want*1.2 {
			t.Errorf("kind %d: share %.3f, want about %.2f", k, got, want)
		}
	}
	// Skew: the most common country is far more common than the least.
	lo, hi := n, 0
	for _, c := range countries {
		lo, hi = min(lo, c), max(hi, c)
	}
	if len(countries) < 8 || hi < 5*lo {
		t.Errorf("country distribution not skewed: %v", countries)
	}
	if len(users) < 500 || len(users) > 5000 {
		t.Errorf("%d distinct users", len(users))
	}
}

// TestProduceRoundTrip produces through the embedded broker over TCP and reads everything back
// with a sarama consumer.
func TestProduceRoundTrip(t *testing.T) {
	ds := demo(t)
	b, err := broker.Start(broker.Options{Listen: "127.0.0.1:0", Partitions: 3, Topics: []string{ds.Topic}})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	p, err := gen.NewProducer(config.Kafka{Brokers: []string{b.Addr()}}, "test")
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	sent := map[string]bool{}
	g := gen.New(ds, gen.Options{Seed: 7, Days: 2, DupRatio: 0.05, BadRatio: 0.02})
	st, err := gen.Produce(context.Background(), p, ds.Topic, g, gen.ProduceOptions{History: 5000, Rate: 2000, Count: 500,
		OnEvent: func(e gen.Event) { sent[string(e.Value)] = true }})
	if err != nil {
		t.Fatal(err)
	}
	if st.Sent != 5500 || st.Duplicates == 0 || st.Malformed == 0 {
		t.Fatalf("stats %+v", st)
	}
	c, err := sarama.NewConsumer([]string{b.Addr()}, sarama.NewConfig())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	got := 0
	for part := int32(0); part < 3; part++ {
		pc, err := c.ConsumePartition(ds.Topic, part, sarama.OffsetOldest)
		if err != nil {
			t.Fatal(err)
		}
		hw := pc.HighWaterMarkOffset()
		for hw > 0 {
			select {
			case m := <-pc.Messages():
				if !sent[string(m.Value)] {
					t.Fatalf("consumed a message that was not produced: %s", m.Value)
				}
				got++
				if m.Offset+1 >= hw {
					hw = 0
				}
			case <-time.After(10 * time.Second):
				t.Fatalf("partition %d: timed out at %d messages", part, got)
			}
		}
		pc.Close()
	}
	if got != st.Sent {
		t.Fatalf("consumed %d of %d", got, st.Sent)
	}
}
