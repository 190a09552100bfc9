package serving

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/gin-gonic/gin"

	"github.com/lambda-platform/lambda/shared/chconn"
	"github.com/lambda-platform/lambda/shared/chtest"
	"github.com/lambda-platform/lambda/shared/schema"
)

// syncBuffer is a log sink safe for the server's goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (w *syncBuffer) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.Write(p)
}

// lines decodes the JSON log lines written so far.
func (w *syncBuffer) lines(t *testing.T) []map[string]any {
	t.Helper()
	w.mu.Lock()
	defer w.mu.Unlock()
	var out []map[string]any
	for _, l := range strings.Split(strings.TrimSpace(w.b.String()), "\n") {
		if l == "" {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(l), &m); err != nil {
			t.Fatalf("log line %q: %v", l, err)
		}
		out = append(out, m)
	}
	return out
}

// TestAccessLog checks the access log and the request id on a server whose database has no
// schema yet: it starts anyway, /readyz names what is missing, a query fails with a 500 whose
// error line and access line carry the id the response echoes, and a panic does the same.
// After migrate, /readyz is ready.
func TestAccessLog(t *testing.T) {
	cfg := chtest.Config(t, nil)
	admin := chtest.New(t, cfg) // drops the database at the end; creates nothing
	conn, err := clickhouse.Open(chconn.Options(cfg.ClickHouse))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	logs := &syncBuffer{}
	log := slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	srv, err := New(cfg, Options{Logger: log, Conn: conn})
	if err != nil {
		t.Fatal(err)
	}
	srv.engine.GET("/test-panic", func(*gin.Context) { panic("boom") })

	do := func(method, path, id, body string) *httptest.ResponseRecorder {
		t.Helper()
		r := httptest.NewRequest(method, path, strings.NewReader(body))
		if id != "" {
			r.Header.Set("X-Request-Id", id)
		}
		w := httptest.NewRecorder()
		srv.Handler().ServeHTTP(w, r)
		return w
	}
	// access returns the access log line of a request id.
	access := func(id string) map[string]any {
		t.Helper()
		for _, l := range logs.lines(t) {
			if l["msg"] == "request" && l["request_id"] == id {
				return l
			}
		}
		t.Fatalf("no access log line with request_id %q in:\n%s", id, logs.b.String())
		return nil
	}
	generated := regexp.MustCompile(`^[0-9a-f]{24}$`)

	f := func(name, method, path, sentID, body string, wantStatus int, wantLevel string) string {
		t.Helper()
		w := do(method, path, sentID, body)
		if w.Code != wantStatus {
			t.Fatalf("%s: %s %s: status %d, want %d: %s", name, method, path, w.Code, wantStatus, w.Body)
		}
		id := w.Header().Get("X-Request-Id")
		switch {
		case validRequestID(sentID) && id != sentID:
			t.Errorf("%s: X-Request-Id %q echoed as %q", name, sentID, id)
		case !validRequestID(sentID) && !generated.MatchString(id):
			t.Errorf("%s: sent X-Request-Id %q, got %q, want a generated one", name, sentID, id)
		}
		l := access(id)
		if l["method"] != method || l["path"] != path || l["status"] != float64(wantStatus) || l["level"] != wantLevel {
			t.Errorf("%s: access log %v: want method %s, path %s, status %d, level %s", name, l, method, path, wantStatus, wantLevel)
		}
		if l["bytes"] != float64(w.Body.Len()) {
			t.Errorf("%s: access log bytes %v, response has %d", name, l["bytes"], w.Body.Len())
		}
		if _, ok := l["duration"].(float64); !ok {
			t.Errorf("%s: access log without a duration: %v", name, l)
		}
		return id
	}

	f("probe with a client id", "GET", "/healthz", "client-id-42", "", 200, "DEBUG")
	f("no id", "GET", "/healthz", "", "", 200, "DEBUG")
	f("id with a space", "GET", "/healthz", "two words", "", 200, "DEBUG")
	f("id too long", "GET", "/healthz", strings.Repeat("x", 129), "", 200, "DEBUG")
	f("unknown dataset", "POST", "/api/v1/query", "", `{"dataset":"nope","metrics":["events"]}`, 404, "INFO")

	// Not ready: the schema is missing, and /readyz says which objects.
	w := do("GET", "/readyz", "", "")
	var ready struct {
		Ready   bool     `json:"ready"`
		Missing []string `json:"missing"`
	}
	if err := json.Unmarshal(w.Body.Bytes(), &ready); err != nil || w.Code != 503 || ready.Ready {
		t.Fatalf("/readyz without a schema: %d %s (%v), want 503", w.Code, w.Body, err)
	}
	for _, want := range []string{"events_raw", "events_daily", "events_lambda", "batch_runs"} {
		if !slices.Contains(ready.Missing, want) {
			t.Errorf("/readyz missing %v does not name %s", ready.Missing, want)
		}
	}

	// A 500: the error log line carries the id the client got.
	body := `{"dataset":"events","metrics":["events"],"from":"2024-03-01","to":"2024-03-02","granularity":"day"}`
	id := f("query without a schema", "POST", "/api/v1/query", "q-500", body, 500, "ERROR")
	errLine := false
	for _, l := range logs.lines(t) {
		if l["level"] == "ERROR" && l["msg"] != "request" && l["request_id"] == id {
			errLine = true
		}
	}
	if !errLine {
		t.Errorf("no error log line with request_id %q besides the access line:\n%s", id, logs.b.String())
	}

	id = f("panic", "GET", "/test-panic", "", "", 500, "ERROR")
	panicLine := false
	for _, l := range logs.lines(t) {
		if l["msg"] == "panic serving request" && l["request_id"] == id && strings.Contains(l["stack"].(string), "access_test.go") {
			panicLine = true
		}
	}
	if !panicLine {
		t.Errorf("no panic log line with request_id %q and the stack:\n%s", id, logs.b.String())
	}

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := schema.Migrate(ctx, admin, cfg, schema.MigrateOptions{}); err != nil {
		t.Fatal(err)
	}
	if w := do("GET", "/readyz", "", ""); w.Code != http.StatusOK {
		t.Errorf("/readyz after migrate: %d %s, want 200", w.Code, w.Body)
	}
}
