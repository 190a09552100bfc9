package main

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"

	"github.com/lambda-platform/lambda/shared/chconn"
	"github.com/lambda-platform/lambda/shared/config"
	"github.com/lambda-platform/lambda/shared/schema"
)

func init() {
	register("migrate", "create or upgrade the ClickHouse schema (idempotent; --allow-drop to drop removed columns)", runMigrate)
}

func runMigrate(ctx context.Context, args []string) error {
	fs, path := flags("migrate")
	allowDrop := fs.Bool("allow-drop", false, "drop columns of dimensions and metrics removed from the config")
	printSQL := fs.Bool("print", false, "print the CREATE statements and exit without connecting")
	cfg, err := loadConfig(fs, path, args)
	if err != nil {
		return err
	}
	if *printSQL {
		for _, s := range schema.Statements(cfg) {
			fmt.Printf("%s;\n\n", s)
		}
		return nil
	}
	return migrate(ctx, cfg, *allowDrop)
}

// migrate connects and applies the schema; every long-running command calls it at start. It
// waits for ClickHouse to answer (a server that starts after the process is not an error),
// until ctx is done, but returns at once when the TLS handshake or the login is refused.
func migrate(ctx context.Context, cfg *config.Config, allowDrop bool) error {
	start := time.Now()
	var conn driver.Conn
	for wait := time.Second; ; wait = min(2*wait, 30*time.Second) {
		var err error
		if conn, err = chconn.Open(ctx, cfg.ClickHouse); err == nil {
			break
		} else if chconn.IsPermanent(err) {
			return err // a TLS or login setting: waiting cannot fix it
		}
		slog.Warn("waiting for clickhouse", "addr", cfg.ClickHouse.Addr, "retry_in", wait, "err", err)
		select {
		case <-ctx.Done():
			return err
		case <-time.After(wait):
		}
	}
	defer conn.Close()
	ran, err := schema.Migrate(ctx, conn, cfg, schema.MigrateOptions{AllowDrop: allowDrop})
	if err != nil {
		return fmt.Errorf("cannot migrate %s: %w", cfg.ClickHouse.Database, err)
	}
	slog.Info("schema ready", "database", cfg.ClickHouse.Database, "datasets", len(cfg.Datasets), "statements", len(ran), "took", time.Since(start).Round(time.Millisecond))
	return nil
}
