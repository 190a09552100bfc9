package main

import (
	"context"
	"io/fs"
	"log/slog"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/lambda-platform/lambda/dashboards"
	"github.com/lambda-platform/lambda/serving"
	"github.com/lambda-platform/lambda/shared/config"
)

func init() {
	register("serve", "serve the HTTP API and the dashboards", runServe)
}

func runServe(ctx context.Context, args []string) error {
	fs, path := flags("serve")
	cfg, err := loadConfig(fs, path, args)
	if err != nil {
		return err
	}
	if err := migrate(ctx, cfg, false); err != nil {
		return err
	}
	srv, err := newServer(cfg, newRegistry())
	if err != nil {
		return err
	}
	return srv.Run(ctx)
}

// newServer builds the API with the dashboards: the embedded ones, or those under
// serving.dashboards_dir when set. Its metrics go to reg, served at /metrics.
func newServer(cfg *config.Config, reg *prometheus.Registry) (*serving.Server, error) {
	var dash fs.FS = dashboards.FS()
	if dir := cfg.Serving.DashboardsDir; dir != "" {
		dash = dashboards.DirFS(dir)
	}
	return serving.New(cfg, serving.Options{Logger: slog.Default(), Registry: reg, Dashboards: dash})
}
