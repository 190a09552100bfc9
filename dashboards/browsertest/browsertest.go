// Package browsertest runs the browser test of the built-in dashboards: tools/browser/shoot.js
// opens the page in headless Chromium (Debian's /usr/bin/chromium driven by playwright-core),
// waits for the charts, checks that every panel holds data, that the batch/speed boundary is
// drawn on every time chart and that freshness loaded, and writes a screenshot; then it exports
// a panel as CSV and drills down by clicking a bar, checking the file and the filtered page.
//
// It needs a running stack with data behind the URL; the end-to-end tests start one and call
// Check. Node and Chromium must be installed; the npm dependencies of tools/browser are
// installed on first use with `npm ci` from the committed lock file.
package browsertest

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"testing"
	"time"
)

// Options of one run. Only URL is required.
type Options struct {
	URL        string        // the page, e.g. http://127.0.0.1:8080/ (a #range=7d fragment selects a range)
	Screenshot string        // PNG to write; default <repo>/artifacts/dashboard.png
	Timeout    time.Duration // how long panels may take to fill; default 90s
	APIKey     string        // sent as Authorization: Bearer by the page
	NoBoundary bool          // do not require the boundary (no day is exact yet)
	NoInteract bool          // skip the CSV export and the drill-down
	Chromium   string        // default $CHROMIUM or /usr/bin/chromium
	Dir        string        // tools/browser; default found from this source file or the working directory
}

// Result is what shoot.js reports.
type Result struct {
	OK         bool            `json:"ok"`
	URL        string          `json:"url"`
	Screenshot string          `json:"screenshot"`
	TookMS     int64           `json:"took_ms"`
	Failures   []string        `json:"failures"`
	HTTPErrors []string        `json:"http_errors"`
	Export     json.RawMessage `json:"export"`
	DrillDown  json.RawMessage `json:"drill_down"`
	Page       json.RawMessage `json:"page"`
}

// Dir returns tools/browser of this repository.
func Dir() (string, error) {
	if _, file, _, ok := runtime.Caller(0); ok {
		d := filepath.Join(filepath.Dir(file), "..", "..", "tools", "browser")
		if _, err := os.Stat(filepath.Join(d, "shoot.js")); err == nil {
			return filepath.Clean(d), nil
		}
	}
	wd, err := os.Getwd()
	if err != nil {
		return "", fmt.Errorf("cannot find tools/browser: %w", err)
	}
	for d := wd; ; d = filepath.Dir(d) {
		if _, err := os.Stat(filepath.Join(d, "tools", "browser", "shoot.js")); err == nil {
			return filepath.Join(d, "tools", "browser"), nil
		}
		if filepath.Dir(d) == d {
			return "", fmt.Errorf("cannot find tools/browser/shoot.js above %s", wd)
		}
	}
}

// Missing says what the browser test lacks on this machine (node, npm, Chromium), or nil.
func Missing(chromium string) error {
	if chromium == "" {
		chromium = defaultChromium()
	}
	for _, bin := range []string{"node", "npm"} {
		if _, err := exec.LookPath(bin); err != nil {
			return fmt.Errorf("%s is not installed: %w", bin, err)
		}
	}
	if _, err := os.Stat(chromium); err != nil {
		return fmt.Errorf("chromium is not installed (apt-get install chromium): %w", err)
	}
	return nil
}

func defaultChromium() string {
	if c := os.Getenv("CHROMIUM"); c != "" {
		return c
	}
	return "/usr/bin/chromium"
}

// Install runs `npm ci` in dir unless playwright-core is there already.
func Install(ctx context.Context, dir string) error {
	if _, err := os.Stat(filepath.Join(dir, "node_modules", "playwright-core", "package.json")); err == nil {
		return nil
	}
	cmd := exec.CommandContext(ctx, "npm", "ci", "--no-audit", "--no-fund", "--loglevel=error")
	cmd.Dir = dir
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("cannot install the browser test's npm dependencies in %s: %w\n%s", dir, err, out)
	}
	return nil
}

// Run installs what is missing, runs shoot.js against o.URL and returns its report. The
// error is for a run that could not happen; a run that happened and found problems returns
// a Result with OK false and the Failures. Cancelling ctx kills the browser.
func Run(ctx context.Context, o Options) (*Result, error) {
	if o.URL == "" {
		return nil, errors.New("browser test: no URL")
	}
	if o.Chromium == "" {
		o.Chromium = defaultChromium()
	}
	if o.Timeout == 0 {
		o.Timeout = 90 * time.Second
	}
	if o.Dir == "" {
		d, err := Dir()
		if err != nil {
			return nil, err
		}
		o.Dir = d
	}
	if o.Screenshot == "" {
		o.Screenshot = filepath.Join(o.Dir, "..", "..", "artifacts", "dashboard.png")
	}
	shot, err := filepath.Abs(o.Screenshot)
	if err != nil {
		return nil, fmt.Errorf("cannot resolve screenshot path %s: %w", o.Screenshot, err)
	}
	if err := Missing(o.Chromium); err != nil {
		return nil, err
	}
	if err := Install(ctx, o.Dir); err != nil {
		return nil, err
	}
	args := []string{"shoot.js", "--url", o.URL, "--out", shot,
		"--timeout", strconv.FormatInt(o.Timeout.Milliseconds(), 10), "--chromium", o.Chromium}
	if o.NoBoundary {
		args = append(args, "--no-boundary")
	}
	if o.NoInteract {
		args = append(args, "--no-interact")
	}
	cmd := exec.CommandContext(ctx, "node", args...)
	cmd.Dir = o.Dir
	// The key goes through the environment, not the command line, so ps does not show it.
	cmd.Env = append(os.Environ(), "LAMBDA_API_KEY="+o.APIKey)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	runErr := cmd.Run()
	var res Result
	if err := json.Unmarshal(stdout.Bytes(), &res); err != nil {
		return nil, fmt.Errorf("browser test against %s did not report (%v): %s%s", o.URL, runErr, stderr.Bytes(), stdout.Bytes())
	}
	return &res, nil
}

// Check runs the browser test for a test: it fails t with every problem found and logs the
// screenshot path. It skips t when node, npm or Chromium is missing.
func Check(t testing.TB, o Options) *Result {
	t.Helper()
	if err := Missing(o.Chromium); err != nil {
		t.Skipf("browser test skipped: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), max(o.Timeout, 90*time.Second)+2*time.Minute)
	defer cancel()
	res, err := Run(ctx, o)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("dashboard screenshot: %s (%d ms); export: %s; drill-down: %s", res.Screenshot, res.TookMS, compact(res.Export), compact(res.DrillDown))
	for _, f := range res.Failures {
		t.Errorf("dashboard %s: %s", res.URL, f)
	}
	if !res.OK && len(res.Failures) == 0 {
		t.Errorf("dashboard %s: browser test failed without a reason", res.URL)
	}
	if !res.OK {
		t.Logf("page state: %s", res.Page)
	}
	return res
}

// compact shortens a report for the log: one line, without the drill-down's per-panel list.
func compact(raw json.RawMessage) string {
	var m map[string]any
	if json.Unmarshal(raw, &m) != nil {
		return string(raw)
	}
	if a, ok := m["after"].(map[string]any); ok {
		delete(a, "panels")
	}
	b, _ := json.Marshal(m)
	return string(b)
}
