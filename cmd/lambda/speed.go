package main

import (
	"context"
	"log/slog"
	"os"
	"runtime/debug"

	"golang.org/x/sync/errgroup"

	"github.com/lambda-platform/lambda/speed"
)

func init() {
	register("speed", "run the speed layer: consume Kafka into raw, speed and rejects, at least once", runSpeed)
	describe("speed", helpText{
		Examples: []string{
			"lambda speed --config lambda.yaml",
			"lambda speed --config lambda.yaml --migrate=false --log-format json   # a user without DDL rights",
		},
		Notes: "Run as many as the topics have partitions, with the same kafka.group_prefix. /metrics and /healthz on\n" +
			"speed.metrics_listen; /debug/pprof there too when it is loopback or with --pprof. SIGTERM flushes and commits.",
	})
}

func runSpeed(ctx context.Context, args []string) error {
	fs, path := flags("speed")
	consumer := fs.String("consumer-id", "", "name of this process in speed_flushes (default host:pid)")
	doMigrate := fs.Bool("migrate", true, "migrate the schema at start; false: wait until lambda migrate has created it (for a ClickHouse user without DDL rights)")
	askPprof := pprofFlag(fs)
	cfg, err := loadConfig(fs, path, args)
	if err != nil {
		return err
	}
	if err := prepareSchema(ctx, cfg, *doMigrate); err != nil || ctx.Err() != nil {
		return err
	}
	// Most of the heap is short-lived flush buffers: a soft limit keeps the process near
	// 256 MiB instead of twice its live heap (GOMEMLIMIT overrides it).
	if os.Getenv("GOMEMLIMIT") == "" {
		debug.SetMemoryLimit(256 << 20)
	}
	reg := newRegistry()
	layer, err := speed.New(cfg, speed.Options{Logger: slog.Default(), Registerer: reg, ConsumerID: *consumer})
	if err != nil {
		return err
	}
	// A metrics address that cannot be served stops the layer too (it flushes and commits
	// before Run returns). /healthz fails while a dataset is stopped or stuck.
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return serveMetrics(gctx, cfg.Speed.MetricsListen, reg, *askPprof, layer.Health) })
	g.Go(func() error { return layer.Run(gctx) })
	return g.Wait()
}
