package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/lambda-platform/lambda/dashboards/browsertest"
	"github.com/lambda-platform/lambda/shared/chtest"
	"github.com/lambda-platform/lambda/shared/config"
)

// TestDev runs `lambda dev` in-process against the test ClickHouse (a database of its own, an
// in-memory broker, free ports), waits until the API answers exact batch rows for the past
// days and approximate speed rows for today, opens the dashboards in headless Chromium (the
// screenshot is written to artifacts/dashboard.png) and stops the stack.
func TestDev(t *testing.T) {
	if testing.Short() {
		t.Skip("starts the whole stack and a browser")
	}
	cfg := chtest.Config(t, nil)
	chtest.New(t, cfg)
	listen := freeAddr(t)
	t.Setenv("LAMBDA_CLICKHOUSE_ADDR", chtest.Addr())
	t.Setenv("LAMBDA_CLICKHOUSE_DATABASE", cfg.ClickHouse.Database)
	t.Setenv("LAMBDA_SERVING_LISTEN", listen)
	// The demo config with a grace of one second, so that yesterday is sealed at any time of
	// day (with 30 minutes it is not between 00:00 and 00:30 UTC).
	yaml := strings.Replace(string(config.DemoYAML), "grace: 30m", "grace: 1s", 1)
	if yaml == string(config.DemoYAML) {
		t.Fatal("the demo config has no grace: 30m to replace")
	}
	path := filepath.Join(t.TempDir(), "dev.yaml")
	if err := os.WriteFile(path, []byte(yaml), 0o644); err != nil {
		t.Fatal(err)
	}

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	errc := make(chan error, 1)
	go func() {
		errc <- runDev(ctx, []string{"--config", path, "--broker-listen", "127.0.0.1:0", "--data-dir", "",
			"--history-days", "3", "--per-day", "3000", "--rate", "5", "--batch-schedule", "@every 5s"})
	}()
	stopped := false
	stop := func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		select {
		case err := <-errc:
			if err != nil {
				t.Errorf("lambda dev returned %v after SIGINT, want nil", err)
			}
		case <-time.After(time.Minute):
			t.Error("lambda dev did not stop within a minute")
		}
	}
	defer stop()

	base := "http://" + listen + "/"
	deadline := time.Now().Add(3 * time.Minute)
	var last string
	for {
		select {
		case err := <-errc:
			stopped = true
			t.Fatalf("lambda dev exited early: %v", err)
		case <-time.After(time.Second):
		}
		ok, state := devReady(base, time.Now().UTC())
		if ok {
			t.Logf("ready: %s", state)
			break
		}
		last = state
		if time.Now().After(deadline) {
			t.Fatalf("no exact past days and approximate today within 3 minutes; last answer: %s", last)
		}
	}

	browsertest.Check(t, browsertest.Options{URL: base + "#range=7d"})
	stop()
}

// devReady asks the API for the last days by day and reports whether every past day is exact
// from the batch layer (at least two of them) and today is approximate from the speed layer.
func devReady(base string, now time.Time) (bool, string) {
	today := now.Truncate(24 * time.Hour)
	body, _ := json.Marshal(map[string]any{"dataset": "events", "metrics": []string{"events", "users"},
		"from": today.AddDate(0, 0, -3).Format(time.DateOnly), "to": "now", "granularity": "day"})
	c := &http.Client{Timeout: 10 * time.Second}
	resp, err := c.Post(base+"api/v1/query", "application/json", bytes.NewReader(body))
	if err != nil {
		return false, err.Error()
	}
	defer resp.Body.Close()
	var res struct {
		Rows []struct {
			Time   time.Time `json:"time"`
			Events float64   `json:"events"`
			Source string    `json:"source"`
			Exact  bool      `json:"exact"`
		} `json:"rows"`
		Meta struct {
			BatchWatermark string `json:"batch_watermark"`
		} `json:"meta"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&res); err != nil || resp.StatusCode != http.StatusOK {
		return false, fmt.Sprintf("status %d, %v", resp.StatusCode, err)
	}
	state := fmt.Sprintf("watermark %q, rows %+v", res.Meta.BatchWatermark, res.Rows)
	past, live := 0, false
	for _, r := range res.Rows {
		switch {
		case r.Time.Before(today):
			if r.Source != "batch" || !r.Exact || r.Events <= 0 {
				return false, state
			}
			past++
		case r.Time.Equal(today):
			live = r.Source == "speed" && !r.Exact && r.Events > 0
		}
	}
	return past >= 2 && live, state
}

// freeAddr returns a loopback address with a port nobody listens on right now.
func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}
