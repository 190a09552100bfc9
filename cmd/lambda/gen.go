package main

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/lambda-platform/lambda/shared/gen"
)

func init() {
	register("gen", "produce realistic events to a dataset's topic (history, live rate, duplicates, late, malformed)", runGen)
}

func runGen(ctx context.Context, args []string) error {
	fs, path := flags("gen")
	dataset := fs.String("dataset", "", "dataset to generate for (default: the first)")
	rate := fs.Float64("rate", 100, "live events per second after the history (0: none)")
	count := fs.Int("count", 0, "stop after this many live events (0: until stopped)")
	days := fs.Int("days", 0, "days of history before now")
	perDay := fs.Int("per-day", 20000, "history events per day")
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
	p, err := gen.NewProducer(cfg.Kafka, cfg.Kafka.ClientID+"-gen")
	if err != nil {
		return err
	}
	defer p.Close()
	g := gen.New(ds, gen.Options{Seed: *seed, Days: *days, DupRatio: *dup, LateRatio: *late, BadRatio: *bad})
	slog.Info("generating", "dataset", ds.Name, "topic", ds.Topic, "history", *days**perDay, "rate", *rate, "count", *count)
	st, err := gen.Produce(ctx, p, ds.Topic, g, gen.ProduceOptions{History: *days * *perDay, Rate: *rate, Count: *count})
	slog.Info("generated", "sent", st.Sent, "valid", st.Valid, "duplicates", st.Duplicates, "late", st.Late, "malformed", st.Malformed)
	return err
}
