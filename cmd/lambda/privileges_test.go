package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"

	"github.com/lambda-platform/lambda/shared/broker"
	"github.com/lambda-platform/lambda/shared/config"
	"github.com/lambda-platform/lambda/shared/gen"
)

// process is a lambda command running as a child process.
type process struct {
	name string
	cmd  *exec.Cmd
	out  *lockedBuffer
	done chan error
}

func startProcess(t *testing.T, name string, args ...string) *process {
	t.Helper()
	p := &process{name: name, cmd: exec.Command(lambdaBinary(t), args...), out: &lockedBuffer{}, done: make(chan error, 1)}
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.done <- p.cmd.Wait() }()
	t.Cleanup(func() { p.stop(t) })
	return p
}

// stop sends SIGTERM and waits; it fails the test when the process exits with an error.
func (p *process) stop(t *testing.T) {
	t.Helper()
	if p.cmd.ProcessState != nil {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-p.done:
		if err != nil {
			t.Errorf("%s exited with %v after SIGTERM:\n%s", p.name, err, p.out.String())
		}
	case <-time.After(time.Minute):
		_ = p.cmd.Process.Kill()
		t.Errorf("%s did not stop within a minute:\n%s", p.name, p.out.String())
	}
}

// exited reports whether the process has exited (and fails the test with its output if so).
func (p *process) mustRun(t *testing.T) {
	t.Helper()
	select {
	case err := <-p.done:
		p.done <- err
		t.Fatalf("%s exited: %v\n%s", p.name, err, p.out.String())
	default:
	}
}

// TestLeastPrivilegeUsers runs every command as its own ClickHouse user of
// deploy/config/clickhouse/clickhouse-18.16 on a 18.16 server of the test's own: migrate as
// lambda_migrate, speed and batch with --migrate=false as lambda_speed and lambda_batch, serve
// as the read-only lambda_serve. Each does its work, and what a user must not do is refused.
func TestLeastPrivilegeUsers(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a ClickHouse server and the commands as processes")
	}
	passwords := map[string]string{"migrate": "pw-migrate", "speed": "pw-speed", "batch": "pw-batch", "serve": "pw-serve"}
	tcp, http_, inter := freeAddr(t), freeAddr(t), freeAddr(t)
	port := func(addr string) string { return addr[strings.LastIndexByte(addr, ':')+1:] }
	usersD, err := filepath.Abs(filepath.Join("..", "..", "deploy", "config", "clickhouse", "clickhouse-18.16"))
	if err != nil {
		t.Fatal(err)
	}
	env := append(os.Environ(), "CH_TCP_PORT="+port(tcp), "CH_HTTP_PORT="+port(http_), "CH_INTERSERVER_PORT="+port(inter),
		"CH_DATA_DIR="+filepath.Join(t.TempDir(), "clickhouse"), "CH_USERS_D="+usersD)
	for u, pw := range passwords {
		env = append(env, fmt.Sprintf("CLICKHOUSE_%s_PASSWORD=%s", strings.ToUpper(u), pw))
	}
	chScript := func(verb string) {
		t.Helper()
		cmd := exec.Command("bash", filepath.Join("..", "..", "deploy", "local", "clickhouse.sh"), verb)
		cmd.Env = env
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("clickhouse.sh %s: %v\n%s", verb, err, out)
		}
	}
	chScript("start")
	t.Cleanup(func() { chScript("stop") })

	b, err := broker.Start(broker.Options{Listen: "127.0.0.1:0", Partitions: 2, Topics: []string{"events"}})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()

	serveAddr := freeAddr(t)
	dir := t.TempDir()
	// A grace of one second, so that yesterday is sealed at any time of day, and an insert
	// timeout of 5 s: the batch layer takes rows ingested within it before a run as possibly
	// unseen, so the days just filled turn exact 5 s later rather than a minute.
	datasets := strings.Replace(demoDatasets(t), "grace: 30m", "grace: 1s", 1)
	configFor := func(user, password string) string {
		yaml := fmt.Sprintf(`clickhouse: {addr: [%q], database: lambda, username: %s, password: %q, insert_timeout: 5s}
kafka: {brokers: [%q]}
speed: {metrics_listen: %q, flush_interval: 200ms}
batch: {metrics_listen: ""}
serving: {listen: %q}
`, tcp, user, password, b.Addr(), freeAddr(t), serveAddr) + datasets
		path := filepath.Join(dir, user+".yaml")
		if err := os.WriteFile(path, []byte(yaml), 0o644); err != nil {
			t.Fatal(err)
		}
		return path
	}
	cfgs := map[string]string{"default": configFor("default", "")}
	for u, pw := range passwords {
		cfgs[u] = configFor("lambda_"+u, pw)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	open := func(user string) driver.Conn {
		t.Helper()
		cfg, err := config.Load(cfgs[user])
		if err != nil {
			t.Fatal(err)
		}
		conn, err := clickhouse.Open(&clickhouse.Options{Addr: cfg.ClickHouse.Addr,
			Auth: clickhouse.Auth{Username: cfg.ClickHouse.Username, Password: cfg.ClickHouse.Password}})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		return conn
	}
	admin := open("default")
	bin := lambdaBinary(t)
	run := func(wantCode int, wantOut string, args ...string) {
		t.Helper()
		cmd := exec.CommandContext(ctx, bin, args...)
		out, err := cmd.CombinedOutput()
		code := 0
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			code = ee.ExitCode()
		} else if err != nil {
			t.Fatal(err)
		}
		if code != wantCode || !strings.Contains(string(out), wantOut) {
			t.Fatalf("lambda %s: exit %d, want %d with %q:\n%s", strings.Join(args, " "), code, wantCode, wantOut, out)
		}
	}

	// Only the migrate user may create the schema; the others say what to do instead.
	run(1, "may not change the schema", "migrate", "--config", cfgs["speed"])
	run(1, "run with --migrate=false", "speed", "--config", cfgs["speed"])
	run(0, "schema ready", "migrate", "--config", cfgs["migrate"])

	serve := startProcess(t, "serve", "serve", "--config", cfgs["serve"])
	speed := startProcess(t, "speed", "speed", "--config", cfgs["speed"], "--migrate=false")
	get := func(path string, body string, out any) int {
		t.Helper()
		var resp *http.Response
		var err error
		if body == "" {
			resp, err = http.Get("http://" + serveAddr + path)
		} else {
			resp, err = http.Post("http://"+serveAddr+path, "application/json", strings.NewReader(body))
		}
		if err != nil {
			return 0
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if out != nil {
			if err := json.Unmarshal(b, out); err != nil {
				t.Fatalf("%s: %v: %s", path, err, b)
			}
		}
		return resp.StatusCode
	}
	eventually := func(what string, f func() bool) {
		t.Helper()
		for deadline := time.Now().Add(2 * time.Minute); !f(); time.Sleep(200 * time.Millisecond) {
			serve.mustRun(t)
			speed.mustRun(t)
			if time.Now().After(deadline) {
				t.Fatalf("%s: not within 2 minutes\nserve:\n%s\nspeed:\n%s", what, serve.out.String(), speed.out.String())
			}
		}
	}
	eventually("serve ready as lambda_serve", func() bool { return get("/readyz", "", nil) == http.StatusOK })

	cfg, err := config.Load(cfgs["speed"])
	if err != nil {
		t.Fatal(err)
	}
	p, err := gen.NewProducer(config.Kafka{Brokers: []string{b.Addr()}, Version: cfg.Kafka.Version}, "privileges-test")
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	ds := &cfg.Datasets[0]
	st, err := gen.Produce(ctx, p, ds.Topic, gen.New(ds, gen.Options{Seed: 11, Days: 2, DupRatio: 0.02, BadRatio: 0.01}), gen.ProduceOptions{History: 3000})
	if err != nil {
		t.Fatal(err)
	}
	eventually("speed, as lambda_speed, accounts for every record in speed_flushes", func() bool {
		var n uint64
		err := admin.QueryRow(ctx, "SELECT sum(raw_rows + rejected_rows + duplicate_rows) FROM lambda.speed_flushes WHERE dataset = 'events'").Scan(&n)
		return err == nil && n == uint64(st.Sent)
	})

	today := time.Now().UTC().Truncate(24 * time.Hour)
	from, to := today.AddDate(0, 0, -2).Format(time.DateOnly), today.AddDate(0, 0, -1).Format(time.DateOnly)
	run(0, "", "batch", "--config", cfgs["batch"], "run", "--dataset", "events", "--from", from, "--to", to)
	var runs uint64
	if err := admin.QueryRow(ctx, "SELECT uniqExact(day) FROM lambda.batch_runs WHERE status = 'succeeded'").Scan(&runs); err != nil || runs != 2 {
		t.Errorf("batch run as lambda_batch: %d days succeeded (%v), want 2", runs, err)
	}

	// The scheduler as lambda_batch seals the past days (watermark, drift, partition swaps):
	// the API, as lambda_serve, then answers them from the batch side.
	batch := startProcess(t, "batch", "batch", "--config", cfgs["batch"], "--migrate=false", "--schedule", "@every 1s")
	var res struct {
		Rows []struct {
			Source string  `json:"source"`
			Exact  bool    `json:"exact"`
			Events float64 `json:"events"`
		} `json:"rows"`
	}
	q := fmt.Sprintf(`{"dataset":"events","metrics":["events"],"from":%q,"to":%q,"granularity":"day"}`, from, today.Format(time.DateOnly))
	eventually("the past days exact through the API", func() bool {
		batch.mustRun(t)
		code := get("/api/v1/query", q, &res)
		return code == http.StatusOK && len(res.Rows) == 2 && res.Rows[0].Source == "batch" && res.Rows[1].Source == "batch" && res.Rows[1].Exact
	})
	batch.stop(t)

	// What each user must not do. Codes: 164 readonly, 291 database access denied,
	// 392 DDL prohibited (allow_ddl=0).
	if err := admin.Exec(ctx, "CREATE DATABASE IF NOT EXISTS other"); err != nil {
		t.Fatal(err)
	}
	if err := admin.Exec(ctx, "CREATE TABLE IF NOT EXISTS other.t (a UInt8) ENGINE = MergeTree ORDER BY a"); err != nil {
		t.Fatal(err)
	}
	refused := func(user, sql string, code int32) {
		t.Helper()
		err := open(user).Exec(ctx, sql)
		var ex *clickhouse.Exception
		if !errors.As(err, &ex) || ex.Code != code {
			t.Errorf("lambda_%s: %s: got %v, want ClickHouse error %d", user, sql, err, code)
		}
	}
	refused("serve", "INSERT INTO lambda.batch_runs (dataset) SELECT 'x'", 164)
	refused("serve", "CREATE TABLE lambda.x (a UInt8) ENGINE = MergeTree ORDER BY a", 164)
	refused("serve", "DROP TABLE lambda.events_raw", 164)
	refused("speed", "DROP TABLE lambda.events_raw", 392)
	refused("speed", "CREATE TABLE lambda.x (a UInt8) ENGINE = MergeTree ORDER BY a", 392)
	refused("speed", "ALTER TABLE lambda.events_raw DELETE WHERE 1", 392)
	for _, u := range []string{"migrate", "speed", "batch", "serve"} {
		refused(u, "SELECT count() FROM other.t", 291)
	}

	speed.stop(t)
	serve.stop(t)
	if out := serve.out.String(); !strings.Contains(out, `msg=request method=POST path=/api/v1/query`) {
		t.Errorf("serve's access log has no line for the query:\n%s", out)
	}
	if bytes.Contains([]byte(serve.out.String()), []byte("schema ready")) {
		t.Errorf("serve migrated:\n%s", serve.out.String())
	}
}
