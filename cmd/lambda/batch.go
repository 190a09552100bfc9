package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/lambda-platform/lambda/batchlayer"
)

func init() {
	register("batch", "run the batch scheduler; 'batch run --dataset D --from DAY --to DAY' backfills, 'batch status' reports", runBatch)
}

func runBatch(ctx context.Context, args []string) error {
	if len(args) > 0 {
		switch args[0] {
		case "run":
			return runBatchRun(ctx, args[1:])
		case "status":
			return runBatchStatus(ctx, args[1:])
		case "sql":
			return runBatchSQL(args[1:])
		}
	}
	fs, path := flags("batch")
	schedule := fs.String("schedule", "", `cron spec overriding every dataset's batch.schedule, e.g. "@every 30s"`)
	cfg, err := loadConfig(fs, path, args)
	if err != nil {
		return err
	}
	if err := migrate(ctx, cfg, false); err != nil {
		return err
	}
	reg := newRegistry()
	layer, err := batchlayer.New(cfg, batchlayer.Options{Logger: slog.Default(), Registerer: reg, Schedule: *schedule})
	if err != nil {
		return err
	}
	defer layer.Close()
	g, gctx := errgroup.WithContext(ctx)
	var stopping time.Time
	g.Go(func() error { <-gctx.Done(); stopping = time.Now(); return nil })
	g.Go(func() error { return serveMetrics(gctx, cfg.Batch.MetricsListen, reg) })
	g.Go(func() error { return layer.Run(gctx) })
	err = g.Wait()
	slog.Info("batch stopped", "took", time.Since(stopping).Round(time.Millisecond))
	return err
}

func parseDay(name, s string) (time.Time, error) {
	d, err := time.ParseInLocation(time.DateOnly, s, time.UTC)
	if err != nil {
		return time.Time{}, fmt.Errorf("--%s: want a day such as 2024-03-01, got %q", name, s)
	}
	return d, nil
}

func runBatchRun(ctx context.Context, args []string) error {
	fs, path := flags("batch run")
	ds := fs.String("dataset", "", "dataset to recompute (required)")
	from := fs.String("from", "", "first day, YYYY-MM-DD (required)")
	to := fs.String("to", "", "last day, YYYY-MM-DD (default: --from)")
	cfg, err := loadConfig(fs, path, args)
	if err != nil {
		return err
	}
	if *ds == "" || *from == "" {
		fs.Usage()
		return errors.New("--dataset and --from are required")
	}
	if *to == "" {
		*to = *from
	}
	f, err := parseDay("from", *from)
	if err != nil {
		return err
	}
	t, err := parseDay("to", *to)
	if err != nil {
		return err
	}
	tty := isTerminal(os.Stdout)
	log := slog.Default()
	if tty {
		// The progress line says what the per-day log lines would; keep warnings and errors.
		log = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: max(slog.LevelWarn, logLevel())}))
	}
	layer, err := batchlayer.New(cfg, batchlayer.Options{Logger: log})
	if err != nil {
		return err
	}
	defer layer.Close()
	var rows uint64
	progress := func(p batchlayer.Progress) {
		if p.Phase != "" {
			// A pass of the day's run: the phase and how far it is.
			if !tty {
				if p.Step == p.Steps {
					slog.Info("phase done", "dataset", p.Dataset, "day", p.Day.Format(time.DateOnly), "phase", p.Phase, "passes", p.Steps,
						"elapsed", p.Elapsed.Round(time.Millisecond))
				}
				return
			}
			fmt.Printf("\r%s %s  day %d/%d  %s %d/%d  elapsed %s\x1b[K", p.Dataset, p.Day.Format(time.DateOnly), p.Done+1, p.Total,
				p.Phase, p.Step, p.Steps, p.Elapsed.Round(time.Second))
			return
		}
		rows += p.RowsRaw
		eta := time.Duration(0)
		if p.Done > 0 {
			eta = p.Elapsed / time.Duration(p.Done) * time.Duration(p.Total-p.Done)
		}
		if !tty {
			if p.Err == nil {
				slog.Info("day recomputed", "dataset", p.Dataset, "day", p.Day.Format(time.DateOnly), "done", p.Done, "total", p.Total,
					"rows_raw", p.RowsRaw, "rows_dedup", p.RowsDedup, "rows", p.RowsOut, "elapsed", p.Elapsed.Round(time.Millisecond), "eta", eta.Round(time.Second))
			}
			return
		}
		fmt.Printf("\r%s %s  day %d/%d  %d raw rows  elapsed %s  eta %s\x1b[K", p.Dataset, p.Day.Format(time.DateOnly),
			p.Done, p.Total, rows, p.Elapsed.Round(time.Second), eta.Round(time.Second))
		if p.Done == p.Total || p.Err != nil {
			fmt.Println()
		}
	}
	return layer.RunDays(ctx, *ds, f, t, progress)
}

// isTerminal reports whether f is a character device, as a terminal is.
func isTerminal(f *os.File) bool {
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}

func runBatchStatus(ctx context.Context, args []string) error {
	fs, path := flags("batch status")
	cfg, err := loadConfig(fs, path, args)
	if err != nil {
		return err
	}
	layer, err := batchlayer.New(cfg, batchlayer.Options{Logger: slog.Default()})
	if err != nil {
		return err
	}
	defer layer.Close()
	st, err := layer.Status(ctx)
	if err != nil {
		return err
	}
	day := func(t time.Time) string {
		if t.IsZero() {
			return "-"
		}
		return t.Format(time.DateOnly)
	}
	days := func(ts []time.Time) string {
		if len(ts) == 0 {
			return "none"
		}
		var s []string
		for _, t := range ts {
			s = append(s, day(t))
		}
		return strings.Join(s, " ")
	}
	num := func(p *float64) string {
		if p == nil {
			return "-"
		}
		return fmt.Sprintf("%g", *p)
	}
	w := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	for _, s := range st {
		swm := "none (nothing consumed yet)"
		if !s.SpeedWatermark.IsZero() {
			swm = s.SpeedWatermark.Format(time.RFC3339)
		}
		fmt.Fprintf(w, "dataset %s\n  boundary (daily up to)\t%s\n  exact up to\t%s\n  speed watermark\t%s\n  due\t%s\n  dirty\t%s\n  unrun\t%s\n",
			s.Dataset, day(s.Watermark), day(s.Exact), swm, days(s.Due), days(s.Dirty), days(s.Unrun))
		if len(s.Outside) > 0 {
			fmt.Fprintf(w, "  dirty outside the lookback (approximate until rerun: lambda batch run --dataset %s --from %s --to %s)\t%s\n",
				s.Dataset, day(s.Outside[0]), day(s.Outside[len(s.Outside)-1]), days(s.Outside))
		}
		fmt.Fprintf(w, "  runs:\tday\tstatus\tstarted\ttook\traw\tdedup\tout\trun id\terror\n")
		for _, r := range s.Runs {
			took := "-"
			if !r.FinishedAt.IsZero() {
				took = r.FinishedAt.Sub(r.StartedAt).String()
			}
			fmt.Fprintf(w, "\t%s\t%s\t%s\t%s\t%d\t%d\t%d\t%s\t%s\n", day(r.Day), r.Status, r.StartedAt.Format(time.RFC3339), took,
				r.RowsRead, r.RowsDedup, r.RowsOut, r.RunID, r.Error)
		}
		if len(s.Drift) > 0 {
			fmt.Fprintf(w, "  drift %s:\tmetric\tspeed\texact\tabs error\trel error\n", day(s.Drift[0].Day))
			for _, d := range s.Drift {
				fmt.Fprintf(w, "\t%s\t%s\t%s\t%s\t%s\n", d.Metric, num(d.Speed), num(d.Exact), num(d.AbsError), num(d.RelError))
			}
		}
	}
	return w.Flush()
}

// runBatchSQL prints the single-query recompute of one day into a table (the benchmark's floor).
func runBatchSQL(args []string) error {
	fs, path := flags("batch sql")
	ds := fs.String("dataset", "", "dataset")
	dayFlag := fs.String("day", "", "day, YYYY-MM-DD")
	table := fs.String("table", "", "target table, created AS <dataset>_daily (_hourly, _speed for --grain hour, minute) in the configured database")
	grain := fs.String("grain", "day", "day (<ds>_daily rows), hour (<ds>_hourly rows) or minute (the day's <ds>_speed partition)")
	cfg, err := loadConfig(fs, path, args)
	if err != nil {
		return err
	}
	d, err := parseDay("day", *dayFlag)
	if err != nil {
		return err
	}
	if *table == "" {
		return errors.New("--table is required")
	}
	layer, err := batchlayer.New(cfg, batchlayer.Options{Logger: slog.Default()})
	if err != nil {
		return err
	}
	defer layer.Close()
	q, err := layer.RecomputeSQL(*ds, d, *grain, *table, "floor")
	if err != nil {
		return err
	}
	fmt.Println(q)
	return nil
}
