// Package e2e runs the product as a user deploys it: separate `lambda broker`, `lambda speed`,
// `lambda batch` and `lambda serve` processes against a ClickHouse server of the test's own,
// with generated data whose ground truth the test keeps, and faults injected along the way.
package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/lambda-platform/lambda/shared/chtest"
)

func repoRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..")
}

var (
	buildOnce sync.Once
	binPath   string
	buildErr  error
)

// binary builds cmd/lambda once per test process.
func binary(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "lambda-e2e-bin")
		if err != nil {
			buildErr = err
			return
		}
		binPath = filepath.Join(dir, "lambda")
		cmd := exec.Command("go", "build", "-o", binPath, "./cmd/lambda")
		cmd.Dir = repoRoot()
		out, err := cmd.CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binPath
}

// freePort returns a TCP port nobody listens on right now.
func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// clickhouse is a ClickHouse server of the test's own (deploy/local/clickhouse.sh with its own
// ports and data folder), so that restarting it disturbs no other test.
type clickhouse struct {
	t                    *testing.T
	env                  []string
	dataDir              string
	tcp, http, interPort int
}

func startClickHouse(t *testing.T) *clickhouse {
	t.Helper()
	c := &clickhouse{t: t, tcp: freePort(t), http: freePort(t), interPort: freePort(t), dataDir: filepath.Join(t.TempDir(), "clickhouse")}
	c.env = append(os.Environ(),
		fmt.Sprintf("CH_TCP_PORT=%d", c.tcp), fmt.Sprintf("CH_HTTP_PORT=%d", c.http),
		fmt.Sprintf("CH_INTERSERVER_PORT=%d", c.interPort), "CH_DATA_DIR="+c.dataDir)
	c.run("start")
	t.Cleanup(func() { c.run("stop") })
	return c
}

// sharedClickHouse is the test server that `make test` started (LAMBDA_TEST_CLICKHOUSE_ADDR,
// chtest.Addr), for tests that do not restart ClickHouse: each gives itself a database of its
// own. Its HTTP port is LAMBDA_TEST_CLICKHOUSE_HTTP_PORT, 8123 by default (deploy/local).
func sharedClickHouse(t *testing.T) *clickhouse {
	t.Helper()
	_, port, err := net.SplitHostPort(chtest.Addr())
	if err != nil {
		t.Fatalf("LAMBDA_TEST_CLICKHOUSE_ADDR %q: %v", chtest.Addr(), err)
	}
	c := &clickhouse{t: t, http: 8123}
	c.tcp, _ = strconv.Atoi(port)
	if v := os.Getenv("LAMBDA_TEST_CLICKHOUSE_HTTP_PORT"); v != "" {
		c.http, _ = strconv.Atoi(v)
	}
	if _, err := c.query("SELECT 1"); err != nil {
		t.Fatalf("the test server's HTTP interface (port %d, LAMBDA_TEST_CLICKHOUSE_HTTP_PORT): %v", c.http, err)
	}
	return c
}

func (c *clickhouse) run(verb string) {
	c.t.Helper()
	if c.env == nil {
		c.t.Fatalf("clickhouse.sh %s: the shared test server is not the test's to %s", verb, verb)
	}
	cmd := exec.Command("bash", filepath.Join(repoRoot(), "deploy", "local", "clickhouse.sh"), verb)
	cmd.Env = c.env
	if out, err := cmd.CombinedOutput(); err != nil {
		c.t.Fatalf("clickhouse.sh %s: %v\n%s", verb, err, out)
	}
}

// crash SIGKILLs the server (no graceful shutdown: queries in flight die with it); start it
// again with run("start").
func (c *clickhouse) crash() {
	c.t.Helper()
	if c.env == nil {
		c.t.Fatal("crash: the shared test server is not the test's to crash")
	}
	pidFile := filepath.Join(c.dataDir, "clickhouse-server.pid")
	b, err := os.ReadFile(pidFile)
	if err != nil {
		c.t.Fatalf("crash: %v", err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		c.t.Fatalf("crash: pid file %s: %v", pidFile, err)
	}
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		c.t.Fatalf("crash: kill %d: %v", pid, err)
	}
	for syscall.Kill(pid, 0) == nil {
		time.Sleep(20 * time.Millisecond)
	}
	_ = os.Remove(pidFile)
}

func (c *clickhouse) addr() string { return fmt.Sprintf("127.0.0.1:%d", c.tcp) }

// query runs SQL through the HTTP interface and returns the TSV answer.
func (c *clickhouse) query(sql string) (string, error) {
	resp, err := http.Post(fmt.Sprintf("http://127.0.0.1:%d/", c.http), "text/plain", strings.NewReader(sql))
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		return "", fmt.Errorf("clickhouse %d: %s", resp.StatusCode, b)
	}
	return strings.TrimSpace(string(b)), nil
}

// proc is one lambda process.
type proc struct {
	t    *testing.T
	name string
	env  []string
	args []string
	cmd  *exec.Cmd
	log  *bytes.Buffer
	mu   *sync.Mutex
	done chan error
}

type syncWriter struct {
	mu *sync.Mutex
	b  *bytes.Buffer
}

func (w syncWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.Write(p)
}

// startProc starts `lambda args...` with extra environment variables env. Its log is printed
// when the test fails, or always with LAMBDA_E2E_LOGS set.
func startProc(t *testing.T, name string, env []string, args ...string) *proc {
	t.Helper()
	p := &proc{t: t, name: name, env: env, args: args, log: &bytes.Buffer{}, mu: &sync.Mutex{}}
	p.start()
	t.Cleanup(func() {
		p.stop(syscall.SIGTERM)
		if t.Failed() || os.Getenv("LAMBDA_E2E_LOGS") != "" {
			p.mu.Lock()
			t.Logf("--- %s log (last 4 KiB) ---\n%s", p.name, tail(p.log.String(), 4096))
			p.mu.Unlock()
		}
	})
	return p
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

func (p *proc) start() {
	p.t.Helper()
	p.cmd = exec.Command(binary(p.t), p.args...)
	w := syncWriter{p.mu, p.log}
	p.cmd.Stdout, p.cmd.Stderr = w, w
	p.cmd.Env = append(append(os.Environ(), "LAMBDA_LOG_LEVEL=info"), p.env...)
	if err := p.cmd.Start(); err != nil {
		p.t.Fatalf("start %s: %v", p.name, err)
	}
	p.done = make(chan error, 1)
	go func(cmd *exec.Cmd, done chan error) { done <- cmd.Wait() }(p.cmd, p.done)
}

// stop sends sig and waits for the exit; it returns the exit error (nil for exit 0).
func (p *proc) stop(sig syscall.Signal) error {
	if p.cmd == nil || p.cmd.Process == nil {
		return nil
	}
	select {
	case err := <-p.done:
		p.done <- err
		return err
	default:
	}
	_ = p.cmd.Process.Signal(sig)
	select {
	case err := <-p.done:
		p.done <- err
		return err
	case <-time.After(30 * time.Second):
		_ = p.cmd.Process.Kill()
		err := <-p.done
		p.done <- err
		return fmt.Errorf("%s did not stop within 30s after %v", p.name, sig)
	}
}

// output is what the process has logged so far (every run of it).
func (p *proc) output() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.log.String()
}

// signal sends sig to the running process (SIGSTOP and SIGCONT to stall it and let it go).
func (p *proc) signal(sig syscall.Signal) {
	p.t.Helper()
	if p.cmd == nil || p.cmd.Process == nil {
		p.t.Fatalf("%s: no process to signal", p.name)
	}
	if err := p.cmd.Process.Signal(sig); err != nil {
		p.t.Fatalf("%s: %v: %v", p.name, sig, err)
	}
}

// exited reports whether the process has exited, and how.
func (p *proc) exited() (bool, error) {
	select {
	case err := <-p.done:
		p.done <- err
		return true, err
	default:
		return false, nil
	}
}

// eventually polls f until it returns nil or the timeout passes.
func eventually(t *testing.T, timeout time.Duration, what string, f func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var err error
	for time.Now().Before(deadline) {
		if err = f(); err == nil {
			return
		}
		time.Sleep(500 * time.Millisecond)
	}
	t.Fatalf("%s: not reached within %s: %v", what, timeout, err)
}

// api calls the serving API and decodes the JSON answer into out.
func api(ctx context.Context, base, method, path string, body any, out any) (int, error) {
	var r io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return 0, err
		}
		r = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, base+path, r)
	if err != nil {
		return 0, err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if out != nil && resp.StatusCode == 200 {
		if err := json.Unmarshal(b, out); err != nil {
			return resp.StatusCode, fmt.Errorf("decode %s: %v: %s", path, err, b)
		}
	}
	if resp.StatusCode != 200 {
		return resp.StatusCode, fmt.Errorf("%s %s: %d %s", method, path, resp.StatusCode, b)
	}
	return resp.StatusCode, nil
}
