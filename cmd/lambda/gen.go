package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/IBM/sarama"

	"github.com/lambda-platform/lambda/shared/config"
	"github.com/lambda-platform/lambda/shared/gen"
)

func init() {
	register("gen", "produce realistic events to a dataset's topic (history, live rate, duplicates, late, malformed)", runGen)
	describe("gen", helpText{
		Examples: []string{
			"lambda gen --config lambda.yaml --days 3 --per-day 20000 --rate 50",
			"lambda gen --dataset events --rate 0 --days 30          # history only, then exit",
			"lambda gen --days 7 --history-once --rate 0.25          # a demo that can be restarted (docker-compose)",
		},
	})
}

func runGen(ctx context.Context, args []string) error {
	fs, path := flags("gen")
	dataset := fs.String("dataset", "", "dataset to generate for (default: the first)")
	rate := fs.Float64("rate", 100, "live events per second after the history (0: none)")
	count := fs.Int("count", 0, "stop after this many live events (0: until stopped)")
	days := fs.Int("days", 0, "days of history before now")
	perDay := fs.Int("per-day", 20000, "history events per day")
	once := fs.Bool("history-once", false, "skip the history when the topic already holds records (a restarted demo does not add it twice)")
	dup := fs.Float64("dup", 0.02, "ratio of duplicates")
	late := fs.Float64("late", 0.01, "ratio of late events (times 1..days days back)")
	bad := fs.Float64("bad", 0.005, "ratio of malformed events")
	seed := fs.Uint64("seed", uint64(time.Now().UnixNano()), "random seed")
	cfg, err := loadConfig(fs, path, args)
	if err != nil {
		return err
	}
	ds := &cfg.Datasets[0]
	if *dataset != "" {
		d, ok := cfg.Dataset(*dataset)
		if !ok {
			return fmt.Errorf("unknown dataset %q", *dataset)
		}
		ds = d
	}
	history := *days * *perDay
	if *once && history > 0 {
		n, err := topicRecords(cfg.Kafka, cfg.Kafka.ClientID+"-gen", ds.Topic)
		if err != nil {
			return err
		}
		if n > 0 {
			slog.Info("topic already holds records: not producing history again", "dataset", ds.Name, "topic", ds.Topic, "records", n)
			history = 0
		}
	}
	p, err := gen.NewProducer(cfg.Kafka, cfg.Kafka.ClientID+"-gen")
	if err != nil {
		return err
	}
	defer p.Close()
	o := gen.Options{Seed: *seed, Days: *days, DupRatio: *dup, LateRatio: *late, BadRatio: *bad}
	slog.Info("generating", "dataset", ds.Name, "topic", ds.Topic, "history", history, "rate", *rate, "count", *count)
	st, err := produce(ctx, p, ds, o, history, *rate, *count)
	slog.Info("generated", "sent", st.Sent, "valid", st.Valid, "duplicates", st.Duplicates, "late", st.Late, "malformed", st.Malformed)
	if errors.Is(err, context.Canceled) {
		return nil
	}
	return err
}

// produce sends history events (spread over o.Days days before now), then live events at
// rate per second (count of them, 0: until ctx is done; rate 0: none).
//
// The live events come from a generator of their own: a live duplicate then repeats a recent
// live event, never a history event from a sealed day, which would arrive after the speed
// layer's dedup window and keep making past days dirty (approximate until the next tick).
func produce(ctx context.Context, p sarama.SyncProducer, ds *config.Dataset, o gen.Options, history int, rate float64, count int) (gen.Stats, error) {
	var st gen.Stats
	var err error
	if history > 0 {
		start := time.Now()
		st, err = gen.Produce(ctx, p, ds.Topic, gen.New(ds, o), gen.ProduceOptions{History: history})
		if err == nil && ctx.Err() == nil {
			slog.Info("history produced", "dataset", ds.Name, "events", st.Sent, "took", time.Since(start).Round(time.Millisecond))
		}
	}
	if err == nil && rate > 0 && ctx.Err() == nil {
		o.Seed += 1 << 32 // other ids than the history's (the seed is their prefix)
		var live gen.Stats
		live, err = gen.Produce(ctx, p, ds.Topic, gen.New(ds, o), gen.ProduceOptions{Rate: rate, Count: count})
		st.Sent, st.Valid, st.Duplicates = st.Sent+live.Sent, st.Valid+live.Valid, st.Duplicates+live.Duplicates
		st.Late, st.Malformed = st.Late+live.Late, st.Malformed+live.Malformed
	}
	return st, err
}
