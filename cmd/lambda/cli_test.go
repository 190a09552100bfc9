package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/IBM/sarama"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/lambda-platform/lambda/shared/broker"
	"github.com/lambda-platform/lambda/shared/chtest"
	"github.com/lambda-platform/lambda/shared/schema"
)

func TestMain(m *testing.M) {
	code := m.Run()
	if binDir != "" {
		os.RemoveAll(binDir)
	}
	os.Exit(code)
}

var (
	binOnce sync.Once
	binDir  string
	binErr  error
)

// lambdaBinary builds the binary once per test run, with a version set through -ldflags, for
// tests that need real processes (os.Exit, several long-running commands at once).
// binHead is the commit the test binary was built from.
var binHead string

func lambdaBinary(t *testing.T) string {
	t.Helper()
	binOnce.Do(func() {
		if binDir, binErr = os.MkdirTemp("", "lambda-cmd-test"); binErr != nil {
			return
		}
		// The revision the build stamps, read just before it (commits made while the tests
		// run must not make the check fail).
		if head, err := exec.Command("git", "rev-parse", "HEAD").Output(); err == nil {
			binHead = strings.TrimSpace(string(head))
		}
		build := exec.Command("go", "build", "-buildvcs=true", "-ldflags=-X main.buildVersion=v9.9.9-test -X main.buildRevision=ldflags-rev",
			"-o", filepath.Join(binDir, "lambda"), ".")
		if out, err := build.CombinedOutput(); err != nil {
			binErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if binErr != nil {
		t.Fatal(binErr)
	}
	return filepath.Join(binDir, "lambda")
}

// lockedBuffer is an output safe for the goroutines of a command.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (w *lockedBuffer) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.Write(p)
}

func (w *lockedBuffer) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.String()
}

// runCLI runs `lambda args…` in-process through dispatch and returns the exit status, stdout
// and stderr. The default logger and the outputs are restored after it.
func runCLI(ctx context.Context, args ...string) (code int, stdoutText, stderrText string) {
	var out, errw lockedBuffer
	code = dispatch(ctx, args, &out, &errw)
	stdout, stderr = os.Stdout, os.Stderr
	slog.SetDefault(slog.New(slog.NewTextHandler(os.Stderr, nil)))
	return code, out.String(), errw.String()
}

// TestCLI checks exit statuses and messages of command lines that need no server: help exits
// 0 and prints to stdout, usage errors exit 2 and say what is wrong on stderr, runtime failures
// exit 1. Flags before `batch`'s subcommand reach the subcommand.
func TestCLI(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "missing.yaml")
	f := func(args []string, env map[string]string, wantCode int, wantStdout, wantStderr []string) {
		t.Helper()
		for k, v := range env {
			t.Setenv(k, v)
		}
		code, out, errOut := runCLI(context.Background(), args...)
		for k := range env {
			os.Unsetenv(k)
		}
		where := fmt.Sprintf("lambda %s", strings.Join(args, " "))
		if code != wantCode {
			t.Errorf("%s: exit status %d, want %d\nstdout: %s\nstderr: %s", where, code, wantCode, out, errOut)
		}
		for _, w := range wantStdout {
			if !strings.Contains(out, w) {
				t.Errorf("%s: stdout lacks %q:\n%s", where, w, out)
			}
		}
		for _, w := range wantStderr {
			if !strings.Contains(errOut, w) {
				t.Errorf("%s: stderr lacks %q:\n%s", where, w, errOut)
			}
		}
		if wantCode == 0 && len(wantStderr) == 0 && errOut != "" {
			t.Errorf("%s: unexpected stderr: %s", where, errOut)
		}
		if wantCode == 2 && !strings.Contains(errOut, "-h") && !strings.Contains(errOut, "Usage:") {
			t.Errorf("%s: a usage error without a pointer to the usage: %s", where, errOut)
		}
	}
	none := []string(nil)

	// Help: exit 0, on stdout.
	f(nil, nil, 2, none, []string{"Usage: lambda <command>", "batch", "version"})
	f([]string{"help"}, nil, 0, []string{"Commands:", "serve", "Exit status: 0 success, 1 failure, 2 usage error"}, none)
	f([]string{"-h"}, nil, 0, []string{"Commands:"}, none)
	f([]string{"--help"}, nil, 0, []string{"Commands:"}, none)
	f([]string{"help", "batch"}, nil, 0, []string{"Usage: lambda batch", "Subcommands:"}, none)
	f([]string{"help", "nope"}, nil, 2, none, []string{`unknown command "nope"`})
	f([]string{"batch", "-h"}, nil, 0, []string{
		"Subcommands:",
		"run ", "lambda batch --config lambda.yaml run --dataset events --from 2024-03-01 --to 2024-03-07",
		"status ", "lambda batch status --config lambda.yaml",
		"sql ", "lambda batch sql --dataset events --day 2024-03-01 --table floor_daily",
		"--schedule", "--migrate", "--pprof", "--log-format FORMAT",
	}, none)
	f([]string{"batch", "run", "-h"}, nil, 0, []string{"Usage: lambda batch run --dataset D --from DAY", "--dataset", "--to", "Examples:"}, none)
	f([]string{"batch", "--config", missing, "run", "--help"}, nil, 0, []string{"Usage: lambda batch run"}, none)
	f([]string{"version"}, nil, 0, []string{"lambda ", "revision: ", "go:       go1."}, none)
	f([]string{"--version"}, nil, 0, []string{"revision: "}, none)

	// Usage errors: exit 2.
	f([]string{"nope"}, nil, 2, none, []string{`lambda: unknown command "nope"`, "Usage:"})
	f([]string{"version", "extra"}, nil, 2, none, []string{`unexpected argument "extra"`})
	f([]string{"batch", "--dataset", "events", "run", "--from", "2024-03-01"}, nil, 2, none,
		[]string{"flag provided but not defined: -dataset", "a subcommand's flags go after it", "Run 'lambda batch -h' for usage."})
	f([]string{"batch", "frobnicate"}, nil, 2, none, []string{`unknown subcommand "frobnicate": want run, status or sql`})
	f([]string{"batch", "--schedule", "@every 1s", "status"}, nil, 2, none, []string{"--schedule is a flag of the scheduler, not of 'batch status'"})
	f([]string{"batch", "--config", missing, "run", "--dataset", "events"}, nil, 2, none,
		[]string{"lambda batch run: --dataset and --from are required", "Run 'lambda batch run -h' for usage."})
	f([]string{"batch", "run", "--dataset", "events", "--from", "2024-13-01"}, nil, 2, none, []string{`--from: want a day such as 2024-03-01, got "2024-13-01"`})
	f([]string{"batch", "run", "--dataset", "events", "--from", "2024-03-02", "--to", "2024-03-01"}, nil, 2, none, []string{"--to 2024-03-01 is before --from 2024-03-02"})
	f([]string{"batch", "run", "--dataset", "events", "--from", "2024-03-01", "extra", "--to", "2024-03-02"}, nil, 2, none, []string{`unexpected argument "extra"`})
	f([]string{"batch", "sql", "--dataset", "events"}, nil, 2, none, []string{"--dataset, --day and --table are required"})
	f([]string{"migrate", "--print", "extra"}, nil, 2, none, []string{`lambda migrate: unexpected argument "extra"`})
	f([]string{"migrate", "--bogus"}, nil, 2, none, []string{"flag provided but not defined: -bogus"})
	f([]string{"speed", "--log-format", "xml"}, nil, 2, none, []string{`--log-format (LAMBDA_LOG_FORMAT): want text or json, got "xml"`})
	f([]string{"speed", "--log-level", "loud"}, nil, 2, none, []string{`--log-level (LAMBDA_LOG_LEVEL): want debug, info, warn or error, got "loud"`})
	f([]string{"migrate", "--print"}, map[string]string{"LAMBDA_LOG_FORMAT": "xml"}, 2, none, []string{`--log-format (LAMBDA_LOG_FORMAT): want text or json, got "xml"`})
	f([]string{"serve", "extra"}, nil, 2, none, []string{`unexpected argument "extra"`})
	f([]string{"speed", "--config", missing, "now"}, nil, 2, none, []string{`unexpected argument "now"`})
	f([]string{"topics"}, nil, 2, none, []string{"--partitions is required"})
	f([]string{"gen", "--rate", "fast"}, nil, 2, none, []string{`invalid value "fast" for flag -rate`})

	// Runtime failures: exit 1.
	f([]string{"batch", "--config", missing, "run", "--dataset", "events", "--from", "2024-03-01"}, nil, 1, none, []string{"lambda batch: ", "missing.yaml"})
	f([]string{"migrate", "--print", "--config", missing}, nil, 1, none, []string{"missing.yaml"})

	// Success without a server.
	f([]string{"migrate", "--print"}, nil, 0, []string{"CREATE TABLE IF NOT EXISTS `lambda`.`events_raw`"}, none)
	f([]string{"migrate", "--print"}, map[string]string{"LAMBDA_LOG_FORMAT": "json"}, 0, []string{"CREATE TABLE"}, none)
}

// TestEveryCommandHelp checks that every command's -h exits 0 with its usage, flags and at
// least one example.
func TestEveryCommandHelp(t *testing.T) {
	names := make([]string, 0, len(commands))
	for n := range commands {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		code, out, errOut := runCLI(context.Background(), n, "-h")
		if code != 0 || errOut != "" {
			t.Errorf("lambda %s -h: exit %d, stderr %q; want 0 and nothing", n, code, errOut)
		}
		for _, want := range []string{"Usage: lambda " + n, "Examples:\n  lambda " + n} {
			if !strings.Contains(out, want) {
				t.Errorf("lambda %s -h lacks %q:\n%s", n, want, out)
			}
		}
	}
}

// TestBatchRunAfterFlags is the case: `lambda batch --config F run --dataset D …`
// started the scheduler. It must recompute the day and return, logging JSON lines when asked.
func TestBatchRunAfterFlags(t *testing.T) {
	cfg := chtest.Config(t, nil)
	conn := chtest.New(t, cfg)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if _, err := schema.Migrate(ctx, conn, cfg, schema.MigrateOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := conn.Exec(ctx, fmt.Sprintf("INSERT INTO `%s`.events_raw (id, time, event, country, device, user_id, value) SELECT 'e1', toDateTime('2024-03-01 10:00:00', 'UTC'), 'view', 'de', 'ios', 'u1', 1.5",
		cfg.ClickHouse.Database)); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "lambda.yaml")
	yaml := fmt.Sprintf("clickhouse: {addr: [%q], database: %s}\n", cfg.ClickHouse.Addr[0], cfg.ClickHouse.Database) +
		demoDatasets(t)
	if err := os.WriteFile(path, []byte(yaml), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Setenv("LAMBDA_LOG_FORMAT", "json")
	code, out, errOut := runCLI(ctx, "batch", "--config", path, "run", "--dataset", "events", "--from", "2024-03-01")
	if code != 0 {
		t.Fatalf("exit %d\nstdout: %s\nstderr: %s", code, out, errOut)
	}
	var n uint64
	if err := conn.QueryRow(ctx, fmt.Sprintf("SELECT count() FROM `%s`.batch_runs WHERE day = toDate('2024-03-01') AND status = 'succeeded'", cfg.ClickHouse.Database)).Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n != 1 {
		t.Errorf("%d succeeded runs of 2024-03-01, want 1 (did the scheduler start instead of the backfill?)", n)
	}
	recomputed := false
	for _, line := range strings.Split(strings.TrimSpace(errOut), "\n") {
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Errorf("LAMBDA_LOG_FORMAT=json: log line is not JSON: %q", line)
			continue
		}
		if m["msg"] == "day recomputed" && m["day"] == "2024-03-01" {
			recomputed = true
		}
	}
	if !recomputed {
		t.Errorf("no JSON log line for the recomputed day:\n%s", errOut)
	}
}

// demoDatasets returns the datasets part of the demo config.
func demoDatasets(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile("../../shared/config/demo.yaml")
	if err != nil {
		t.Fatal(err)
	}
	i := bytes.Index(b, []byte("\ndatasets:"))
	if i < 0 {
		t.Fatal("no datasets: in the demo config")
	}
	return string(b[i+1:])
}

// TestServeWithoutSchema: serve starts on a database without the schema (it does not migrate),
// /readyz says what is missing, and is ready once migrate has run; /metrics carries
// lambda_build_info.
func TestServeWithoutSchema(t *testing.T) {
	cfg := chtest.Config(t, nil)
	conn := chtest.New(t, cfg)
	listen := freeAddr(t)
	t.Setenv("LAMBDA_CLICKHOUSE_ADDR", chtest.Addr())
	t.Setenv("LAMBDA_CLICKHOUSE_DATABASE", cfg.ClickHouse.Database)
	t.Setenv("LAMBDA_SERVING_LISTEN", listen)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	type result struct {
		code    int
		errText string
	}
	done := make(chan result, 1)
	go func() {
		var out, errw lockedBuffer
		code := dispatch(ctx, []string{"serve"}, &out, &errw)
		done <- result{code, errw.String()}
	}()
	base := "http://" + listen
	get := func(path string) (int, string) {
		resp, err := http.Get(base + path)
		if err != nil {
			return 0, err.Error()
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		code, body := get("/readyz")
		if code == http.StatusServiceUnavailable && strings.Contains(body, "events_raw") && strings.Contains(body, "batch_runs") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("/readyz on a database without the schema: %d %s, want 503 naming the missing objects", code, body)
		}
		select {
		case r := <-done:
			t.Fatalf("serve exited with %d: %s", r.code, r.errText)
		case <-time.After(100 * time.Millisecond):
		}
	}
	if code, body := get("/metrics"); code != http.StatusOK || !regexp.MustCompile(`lambda_build_info\{goversion="go1\.[^"]+",revision="[^"]+",version="[^"]+"\} 1`).MatchString(body) {
		t.Errorf("/metrics: %d, no lambda_build_info{goversion,revision,version} 1", code)
	}
	mctx, mcancel := context.WithTimeout(context.Background(), time.Minute)
	defer mcancel()
	if _, err := schema.Migrate(mctx, conn, cfg, schema.MigrateOptions{}); err != nil {
		t.Fatal(err)
	}
	if code, body := get("/readyz"); code != http.StatusOK {
		t.Errorf("/readyz after migrate: %d %s, want 200", code, body)
	}
	cancel()
	select {
	case r := <-done:
		if r.code != 0 {
			t.Errorf("serve exited with %d after cancel: %s", r.code, r.errText)
		}
		if !strings.Contains(r.errText, "waiting for the schema: run lambda migrate") {
			t.Errorf("serve did not log that the schema is missing:\n%s", r.errText)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("serve did not stop")
	}
	stdout, stderr = os.Stdout, os.Stderr
	slog.SetDefault(slog.New(slog.NewTextHandler(os.Stderr, nil)))
}

// TestMetricsPprof: /debug/pprof on the metrics listener only on loopback or with --pprof.
func TestMetricsPprof(t *testing.T) {
	f := func(listen string, ask, want bool) {
		t.Helper()
		_, port, _ := net.SplitHostPort(listen)
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- serveMetrics(ctx, listen, newRegistry(), ask) }()
		defer func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("serveMetrics %s: %v", listen, err)
			}
		}()
		var code int
		for i := 0; i < 100; i++ {
			resp, err := http.Get("http://127.0.0.1:" + port + "/debug/pprof/")
			if err == nil {
				code = resp.StatusCode
				resp.Body.Close()
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
		if got := code == http.StatusOK; got != want {
			t.Errorf("listen %s, --pprof=%v: /debug/pprof/ answered %d, want served=%v", listen, ask, code, want)
		}
	}
	f(freeAddr(t), false, true)
	_, port, _ := net.SplitHostPort(freeAddr(t))
	f("0.0.0.0:"+port, false, false)
	_, port, _ = net.SplitHostPort(freeAddr(t))
	f("0.0.0.0:"+port, true, true)

	for addr, want := range map[string]bool{"127.0.0.1:9101": true, "localhost:9101": true, "[::1]:9101": true,
		"0.0.0.0:9101": false, ":9101": false, "10.0.0.5:9101": false} {
		if got := pprofOn(false, addr); got != want {
			t.Errorf("pprofOn(false, %q) = %v, want %v", addr, got, want)
		}
	}
}

// TestBuildInfo: the gauge is 1 with the three labels.
func TestBuildInfo(t *testing.T) {
	b := buildInfo()
	want := fmt.Sprintf(`# HELP lambda_build_info Always 1; the labels say which build of lambda runs (module version, VCS revision, Go version).
# TYPE lambda_build_info gauge
lambda_build_info{goversion=%q,revision=%q,version=%q} 1
`, b.GoVersion, b.Revision, b.Version)
	if err := testutil.GatherAndCompare(newRegistry(), strings.NewReader(want), "lambda_build_info"); err != nil {
		t.Error(err)
	}
}

// TestTopics creates the configured topics on a broker over TCP, once: a second run leaves
// them as they are.
func TestTopics(t *testing.T) {
	b, err := broker.Start(broker.Options{Listen: "127.0.0.1:0", Partitions: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	t.Setenv("LAMBDA_KAFKA_BROKERS", b.Addr())
	for i := 0; i < 2; i++ {
		code, _, errOut := runCLI(context.Background(), "topics", "--partitions", "3")
		if code != 0 {
			t.Fatalf("lambda topics (run %d): exit %d: %s", i+1, code, errOut)
		}
		want := "topic created"
		if i == 1 {
			want = "topic exists"
		}
		if !strings.Contains(errOut, want) {
			t.Errorf("lambda topics (run %d): no %q in the log:\n%s", i+1, want, errOut)
		}
	}
	c, err := sarama.NewClient([]string{b.Addr()}, sarama.NewConfig())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	parts, err := c.Partitions("events")
	if err != nil || len(parts) != 3 {
		t.Errorf("topic events: partitions %v (%v), want 3", parts, err)
	}
}

// TestBinary builds the binary and checks what only a real process shows: the exit statuses
// of os.Exit and the version Go stamps (or -ldflags sets).
func TestBinary(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary")
	}
	bin := lambdaBinary(t)
	run := func(args ...string) (int, string) {
		cmd := exec.Command(bin, args...)
		out, err := cmd.CombinedOutput()
		if ee, ok := err.(*exec.ExitError); ok {
			return ee.ExitCode(), string(out)
		} else if err != nil {
			t.Fatal(err)
		}
		return 0, string(out)
	}
	code, out := run("version")
	// Go stamps the revision from a git checkout (not from a worktree, whose .git is a file).
	wantRev := "ldflags-rev"
	if st, err := os.Stat("../../.git"); err == nil && st.IsDir() && binHead != "" {
		wantRev = binHead
	}
	if code != 0 || !strings.Contains(out, "lambda v9.9.9-test\n") || !strings.Contains(out, "revision: "+wantRev) {
		t.Errorf("lambda version: exit %d, output %q; want version v9.9.9-test, revision %s", code, out, wantRev)
	}
	for _, c := range []struct {
		args []string
		code int
	}{
		{[]string{"batch", "-h"}, 0},
		{[]string{"nope"}, 2},
		{nil, 2},
		{[]string{"serve", "--nope"}, 2},
		{[]string{"migrate", "--print", "--config", "/nonexistent/lambda.yaml"}, 1},
	} {
		if code, out := run(c.args...); code != c.code {
			t.Errorf("lambda %s: exit %d, want %d: %s", strings.Join(c.args, " "), code, c.code, out)
		}
	}
}
