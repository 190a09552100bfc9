package main

import (
	"context"
	"fmt"
	"io/fs"
	"log/slog"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/lambda-platform/lambda/dashboards"
	"github.com/lambda-platform/lambda/serving"
	"github.com/lambda-platform/lambda/shared/chconn"
	"github.com/lambda-platform/lambda/shared/config"
)

func init() {
	register("serve", "serve the HTTP API and the dashboards", runServe)
	describe("serve", helpText{
		Examples: []string{
			"lambda serve --config lambda.yaml",
			"LAMBDA_API_KEYS=k1,k2 LAMBDA_SERVING_LISTEN=0.0.0.0:8080 lambda serve --log-format json",
		},
		Notes: "serve only reads: it never creates or changes the schema, so its ClickHouse user may be read-only.\n" +
			"It starts without ClickHouse or the schema; /readyz answers 503, naming what is missing, until both are there.\n" +
			"Every request is logged (method, path, status, duration, bytes, request id; X-Request-Id is honoured or generated).",
	})
}

func runServe(ctx context.Context, args []string) error {
	fs, path := flags("serve")
	cfg, err := loadConfig(fs, path, args)
	if err != nil {
		return err
	}
	// No migrate, and no ping: the connection dials on first use, so serve listens at once and
	// /readyz tells an orchestrator when ClickHouse and the schema are there.
	conn, err := clickhouse.Open(chconn.Options(cfg.ClickHouse))
	if err != nil {
		return fmt.Errorf("cannot open clickhouse %v: %w", cfg.ClickHouse.Addr, err)
	}
	defer conn.Close()
	srv, err := newServer(cfg, newRegistry(), conn)
	if err != nil {
		return err
	}
	go func() { _ = waitSchema(ctx, cfg) }() // logs what is missing until it is there
	return srv.Run(ctx)
}

// newServer builds the API with the dashboards: the embedded ones, or those under
// serving.dashboards_dir when set. Its metrics go to reg, served at /metrics. With conn nil
// the server opens a connection of its own.
func newServer(cfg *config.Config, reg *prometheus.Registry, conn driver.Conn, health ...func() error) (*serving.Server, error) {
	var dash fs.FS = dashboards.FS()
	if dir := cfg.Serving.DashboardsDir; dir != "" {
		dash = dashboards.DirFS(dir)
	}
	return serving.New(cfg, serving.Options{Logger: slog.Default(), Registry: reg, Dashboards: dash, Conn: conn, Health: health})
}
