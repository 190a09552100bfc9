package main

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/lambda-platform/lambda/shared/chtest"
	"github.com/lambda-platform/lambda/shared/config"
)

// TestMigrateZoneChange: `lambda migrate` refuses a changed time_zone at once (exit 1, naming
// the field and --recompute-zone, no waiting and retrying), and --recompute-zone applies it.
func TestMigrateZoneChange(t *testing.T) {
	cfg := chtest.Config(t, nil)
	chtest.New(t, cfg)
	t.Setenv("LAMBDA_CLICKHOUSE_ADDR", chtest.Addr())
	t.Setenv("LAMBDA_CLICKHOUSE_DATABASE", cfg.ClickHouse.Database)
	ny := filepath.Join(t.TempDir(), "ny.yaml")
	if err := os.WriteFile(ny, append(append([]byte{}, config.DemoYAML...), "    time_zone: America/New_York\n"...), 0o644); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if code, _, errOut := runCLI(ctx, "migrate"); code != 0 {
		t.Fatalf("migrate: %d %s", code, errOut)
	}
	start := time.Now()
	code, _, errOut := runCLI(ctx, "migrate", "--config", ny)
	if code != 1 || !strings.Contains(errOut, "datasets[0] (events).time_zone") || !strings.Contains(errOut, "--recompute-zone") {
		t.Errorf("migrate to another zone: exit %d, stderr %s; want 1 naming time_zone and --recompute-zone", code, errOut)
	}
	if took := time.Since(start); took > 10*time.Second {
		t.Errorf("the refusal took %v: retried as if ClickHouse were away", took)
	}
	if code, _, errOut := runCLI(ctx, "migrate", "--config", ny, "--recompute-zone"); code != 0 {
		t.Fatalf("migrate --recompute-zone: %d %s", code, errOut)
	}
	if code, _, errOut := runCLI(ctx, "migrate", "--config", ny); code != 0 {
		t.Fatalf("migrate again in the new zone: %d %s", code, errOut)
	}
}
