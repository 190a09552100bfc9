package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/lambda-platform/lambda/batchlayer"
	"github.com/lambda-platform/lambda/shared/config"
)

func init() {
	register("batch", "run the batch scheduler; 'batch run --dataset D --from DAY --to DAY' backfills, 'batch status' reports", runBatch)
	describe("batch", helpText{
		Usage: []string{"batch [flags]                           the scheduler, until SIGTERM",
			"batch [--config FILE] <subcommand> [flags]"},
		Subcommands: []subcommandHelp{
			{"run", "recompute days now and swap them in, whatever the schedule (a backfill)",
				"lambda batch --config lambda.yaml run --dataset events --from 2024-03-01 --to 2024-03-07"},
			{"status", "print per dataset the watermarks, due and dirty days, the last runs and drift",
				"lambda batch status --config lambda.yaml"},
			{"sql", "print the statement that recomputes one day into a table (benchmarks)",
				"lambda batch sql --dataset events --day 2024-03-01 --table floor_daily"},
		},
		Examples: []string{
			"lambda batch --config lambda.yaml",
			`lambda batch --schedule "@every 1m"        # every dataset, whatever batch.schedule says`,
		},
		Notes: "--config and the log flags may go before the subcommand or after it; the subcommand's own flags go after it.",
	})
	describe("batch run", helpText{
		Usage:    []string{"batch run --dataset D --from DAY [--to DAY] [flags]"},
		Summary:  "Recompute the days from --from to --to (inclusive) of one dataset now, in day order, and swap each in.",
		Examples: []string{"lambda batch run --config lambda.yaml --dataset events --from 2024-03-01 --to 2024-03-07"},
		Notes:    "With batch.lease set it takes the dataset's lease and refuses, naming the holder, while a scheduler holds it.",
	})
	describe("batch status", helpText{
		Usage:    []string{"batch status [flags]"},
		Summary:  "Print per dataset the batch and speed watermarks, due and dirty days, the last runs and the drift of the last sealed day.",
		Examples: []string{"lambda batch status --config lambda.yaml"},
	})
	describe("batch sql", helpText{
		Usage:    []string{"batch sql --dataset D --day DAY --table T [flags]"},
		Summary:  "Print the statement that recomputes one day into table T (created AS <dataset>_daily); bench/batch.sh times it bare.",
		Examples: []string{"lambda batch sql --dataset events --day 2024-03-01 --table floor_daily"},
	})
}

// batchSubcommands run `lambda batch <name>`.
var batchSubcommands = map[string]func(ctx context.Context, args []string) error{
	"run":    runBatchRun,
	"status": runBatchStatus,
	"sql":    func(_ context.Context, args []string) error { return runBatchSQL(args) },
}

// inherited are the flags of `lambda batch` that its subcommands take too, so that
// `lambda batch --config F run …` means what it says.
var inherited = []string{"config", "log-format", "log-level"}

func runBatch(ctx context.Context, args []string) error {
	fs, path := flags("batch")
	schedule := fs.String("schedule", os.Getenv("LAMBDA_BATCH_SCHEDULE"), `cron spec overriding every dataset's batch.schedule, e.g. "@every 30s" (env LAMBDA_BATCH_SCHEDULE)`)
	doMigrate := fs.Bool("migrate", true, "migrate the schema at start; false: wait until lambda migrate has created it (for a ClickHouse user without DDL rights)")
	askPprof := pprofFlag(fs)
	if err := parseFlags(fs, args); err != nil {
		var ue *usageError
		if errors.As(err, &ue) && slices.ContainsFunc(args, func(a string) bool { return batchSubcommands[a] != nil }) {
			return usagef(fs, "%v: a subcommand's flags go after it, e.g. lambda batch --config FILE run --dataset D --from DAY", ue.err)
		}
		return err
	}
	if fs.NArg() > 0 {
		name := fs.Arg(0)
		sub, ok := batchSubcommands[name]
		if !ok {
			return usagef(fs, "unknown subcommand %q: want run, status or sql (or none for the scheduler)", name)
		}
		var pass []string
		var misplaced error
		fs.Visit(func(f *flag.Flag) {
			if slices.Contains(inherited, f.Name) {
				pass = append(pass, "--"+f.Name+"="+f.Value.String())
			} else if misplaced == nil {
				misplaced = usagef(fs, "--%s is a flag of the scheduler, not of 'batch %s'", f.Name, name)
			}
		})
		if misplaced != nil {
			return misplaced
		}
		return sub(ctx, append(pass, fs.Args()[1:]...))
	}
	cfg, err := config.Load(*path)
	if err != nil {
		return err
	}
	if err := prepareSchema(ctx, cfg, *doMigrate); err != nil || ctx.Err() != nil {
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
	g.Go(func() error { return serveMetrics(gctx, cfg.Batch.MetricsListen, reg, *askPprof, layer.Health) })
	g.Go(func() error { return layer.Run(gctx) })
	err = g.Wait()
	slog.Info("batch stopped", "took", time.Since(stopping).Round(time.Millisecond))
	return err
}

// parseDay parses the value of a day flag; a malformed one is a usage error.
func parseDay(fs *flag.FlagSet, name, s string) (time.Time, error) {
	d, err := time.ParseInLocation(time.DateOnly, s, time.UTC)
	if err != nil {
		return time.Time{}, usagef(fs, "--%s: want a day such as 2024-03-01, got %q", name, s)
	}
	return d, nil
}

func runBatchRun(ctx context.Context, args []string) error {
	fs, path := flags("batch run")
	ds := fs.String("dataset", "", "dataset to recompute (required)")
	from := fs.String("from", "", "first day, YYYY-MM-DD (required)")
	to := fs.String("to", "", "last day, YYYY-MM-DD (default: --from)")
	if err := parse(fs, args); err != nil {
		return err
	}
	if *ds == "" || *from == "" {
		return usagef(fs, "--dataset and --from are required")
	}
	if *to == "" {
		*to = *from
	}
	f, err := parseDay(fs, "from", *from)
	if err != nil {
		return err
	}
	t, err := parseDay(fs, "to", *to)
	if err != nil {
		return err
	}
	if t.Before(f) {
		return usagef(fs, "--to %s is before --from %s", *to, *from)
	}
	cfg, err := config.Load(*path)
	if err != nil {
		return err
	}
	out, ok := stdout.(*os.File)
	tty := ok && isTerminal(out)
	log := slog.Default()
	if tty {
		// The progress line says what the per-day log lines would; keep warnings and errors.
		h, err := newLogHandler(stderr, logFormat, max(slog.LevelWarn, logLevel))
		if err != nil {
			return err
		}
		log = slog.New(h)
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
		fmt.Fprintf(stdout, "\r%s %s  day %d/%d  %d raw rows  elapsed %s  eta %s\x1b[K", p.Dataset, p.Day.Format(time.DateOnly),
			p.Done, p.Total, rows, p.Elapsed.Round(time.Second), eta.Round(time.Second))
		if p.Done == p.Total || p.Err != nil {
			fmt.Fprintln(stdout)
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
	w := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
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
	if err := parse(fs, args); err != nil {
		return err
	}
	if *ds == "" || *dayFlag == "" || *table == "" {
		return usagef(fs, "--dataset, --day and --table are required")
	}
	switch *grain {
	case "day", "hour", "minute":
	default:
		return usagef(fs, "--grain: %q is not day, hour or minute", *grain)
	}
	d, err := parseDay(fs, "day", *dayFlag)
	if err != nil {
		return err
	}
	cfg, err := config.Load(*path)
	if err != nil {
		return err
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
	fmt.Fprintln(stdout, q)
	return nil
}
