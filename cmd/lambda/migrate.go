package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"

	"github.com/lambda-platform/lambda/shared/chconn"
	"github.com/lambda-platform/lambda/shared/config"
	"github.com/lambda-platform/lambda/shared/schema"
)

func init() {
	register("migrate", "create or upgrade the ClickHouse schema (idempotent; --allow-drop to drop removed columns)", runMigrate)
	describe("migrate", helpText{
		Examples: []string{
			"lambda migrate --config lambda.yaml",
			"lambda migrate --print                  # the CREATE statements, without connecting",
			"lambda migrate --allow-drop             # after removing a dimension or metric from the config",
			"lambda migrate --recompute-zone         # after changing a dataset's time_zone: rebuild its days from raw",
		},
		Notes: "The only command that needs DDL rights in ClickHouse (deploy/config/clickhouse/ has a user per command).\n" +
			"speed and batch also migrate at start unless --migrate=false; serve never does.",
	})
}

func runMigrate(ctx context.Context, args []string) error {
	fs, path := flags("migrate")
	allowDrop := fs.Bool("allow-drop", false, "drop columns of dimensions and metrics removed from the config")
	recomputeZone := fs.Bool("recompute-zone", false, "rebuild the per-day tables of a dataset whose time_zone changed from raw (the batch layer then recomputes every day)")
	printSQL := fs.Bool("print", false, "print the CREATE statements and exit without connecting")
	cfg, err := loadConfig(fs, path, args)
	if err != nil {
		return err
	}
	if *printSQL {
		for _, s := range schema.Statements(cfg) {
			fmt.Fprintf(stdout, "%s;\n\n", s)
		}
		return nil
	}
	return migrateWith(ctx, cfg, schema.MigrateOptions{AllowDrop: *allowDrop, RecomputeZone: *recomputeZone})
}

// migrate connects and applies the schema; speed, batch (unless --migrate=false) and dev call
// it at start. It waits for ClickHouse to answer, and starts over when the connection breaks
// midway (a server restarting while the process starts is not an error; migrating is
// idempotent), until ctx is done. A statement ClickHouse refuses, a refused TLS handshake or
// login, is an error at once.
func migrate(ctx context.Context, cfg *config.Config, allowDrop bool) error {
	return migrateWith(ctx, cfg, schema.MigrateOptions{AllowDrop: allowDrop})
}

// migrateWith is migrate with every option of schema.Migrate.
func migrateWith(ctx context.Context, cfg *config.Config, opts schema.MigrateOptions) error {
	start := time.Now()
	for wait := time.Second; ; wait = min(2*wait, 30*time.Second) {
		ran, err := migrateOnce(ctx, cfg, opts)
		if err == nil {
			slog.Info("schema ready", "database", cfg.ClickHouse.Database, "datasets", len(cfg.Datasets), "statements", len(ran), "took", time.Since(start).Round(time.Millisecond))
			return nil
		}
		if errors.Is(err, schema.ErrRefused) {
			return err // a change the config asks for needs an option: retrying cannot help
		}
		var ex *clickhouse.Exception
		if errors.As(err, &ex) {
			if deniedDDL(err) {
				return fmt.Errorf("cannot migrate %s as user %q: %w (this user may not change the schema: run lambda migrate as a user that may; speed and batch then run with --migrate=false)",
					cfg.ClickHouse.Database, cfg.ClickHouse.Username, err)
			}
			return fmt.Errorf("cannot migrate %s: %w", cfg.ClickHouse.Database, err)
		}
		if chconn.IsPermanent(err) {
			return err // a TLS or login setting: waiting cannot fix it
		}
		slog.Warn("waiting for clickhouse", "addr", cfg.ClickHouse.Addr, "retry_in", wait, "err", err)
		select {
		case <-ctx.Done():
			return err
		case <-time.After(wait):
		}
	}
}

// migrateOnce connects and migrates once.
func migrateOnce(ctx context.Context, cfg *config.Config, opts schema.MigrateOptions) ([]string, error) {
	conn, err := chconn.Open(ctx, cfg.ClickHouse)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	return schema.Migrate(ctx, conn, cfg, opts)
}

// deniedDDL reports whether err is ClickHouse refusing a statement for the user's rights:
// READONLY (164), DATABASE_ACCESS_DENIED (291), QUERY_IS_PROHIBITED (392, allow_ddl=0 on
// 18.16), ACCESS_DENIED (497, grants on current versions).
func deniedDDL(err error) bool {
	var ex *clickhouse.Exception
	return errors.As(err, &ex) && slices.Contains([]int32{164, 291, 392, 497}, ex.Code)
}

// missingObjects returns the tables and views of the configuration that the database lacks,
// reading system.tables only (a read-only user can call it).
func missingObjects(ctx context.Context, conn driver.Conn, cfg *config.Config) ([]string, error) {
	var want []string
	for _, o := range schema.NewGenerator(cfg).Objects(cfg) {
		if o.Kind != schema.Database {
			want = append(want, o.Name)
		}
	}
	rows, err := conn.Query(ctx, "SELECT name FROM system.tables WHERE database = ? AND has(?, name)", cfg.ClickHouse.Database, want)
	if err != nil {
		return nil, fmt.Errorf("cannot list the tables of %s: %w", cfg.ClickHouse.Database, err)
	}
	defer rows.Close()
	have := map[string]bool{}
	for rows.Next() {
		var name string
		if err := rows.Scan(&name); err != nil {
			return nil, fmt.Errorf("cannot list the tables of %s: %w", cfg.ClickHouse.Database, err)
		}
		have[name] = true
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("cannot list the tables of %s: %w", cfg.ClickHouse.Database, err)
	}
	var missing []string
	for _, n := range want {
		if !have[n] {
			missing = append(missing, n)
		}
	}
	return missing, nil
}

// waitSchema waits until ClickHouse answers and the database holds every table and view of
// the configuration, for a command that does not migrate (its user may lack DDL rights). It
// logs what is missing, and returns ctx.Err() when ctx is done first.
func waitSchema(ctx context.Context, cfg *config.Config) error {
	conn, err := clickhouse.Open(chconn.Options(cfg.ClickHouse)) // dials on first use
	if err != nil {
		return fmt.Errorf("cannot open clickhouse %v: %w", cfg.ClickHouse.Addr, err)
	}
	defer conn.Close()
	for wait := time.Second; ; wait = min(2*wait, 30*time.Second) {
		qctx, cancel := context.WithTimeout(ctx, cfg.ClickHouse.DialTimeout.D()+10*time.Second)
		missing, err := missingObjects(qctx, conn, cfg)
		cancel()
		switch {
		case err == nil && len(missing) == 0:
			slog.Info("schema present", "database", cfg.ClickHouse.Database)
			return nil
		case err != nil:
			slog.Warn("waiting for clickhouse", "addr", cfg.ClickHouse.Addr, "retry_in", wait, "err", err)
		default:
			slog.Warn("waiting for the schema: run lambda migrate", "database", cfg.ClickHouse.Database, "missing", missing, "retry_in", wait)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(wait):
		}
	}
}

// prepareSchema migrates, or with doMigrate false waits for the schema lambda migrate creates.
// It returns nil when ctx ends first (the command then stops without an error).
func prepareSchema(ctx context.Context, cfg *config.Config, doMigrate bool) error {
	var err error
	if doMigrate {
		err = migrate(ctx, cfg, false)
	} else {
		err = waitSchema(ctx, cfg)
	}
	if err != nil && ctx.Err() != nil {
		return nil
	}
	return err
}
