package dashboards_test

import (
	"encoding/json"
	"io"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"
	"testing/fstest"

	"github.com/lambda-platform/lambda/dashboards"
	"github.com/lambda-platform/lambda/shared/config"
)

func TestDefinitionsMatchDemoConfig(t *testing.T) {
	cfg, err := config.Parse("demo.yaml", config.DemoYAML, nil)
	if err != nil {
		t.Fatal(err)
	}
	defs, err := dashboards.Definitions()
	if err != nil {
		t.Fatal(err)
	}
	if len(defs) == 0 {
		t.Fatal("no dashboard definitions embedded")
	}
	covered := map[string]bool{}
	for _, d := range defs {
		if err := d.Check(cfg); err != nil {
			t.Error(err)
		}
		covered[d.Dataset] = true
	}
	for _, ds := range cfg.Datasets {
		if !covered[ds.Name] {
			t.Errorf("demo dataset %s has no dashboard definition", ds.Name)
		}
	}
}

func TestServedTree(t *testing.T) {
	srv := httptest.NewServer(http.FileServer(http.FS(dashboards.FS())))
	defer srv.Close()
	get := func(path string) (int, string, string) {
		t.Helper()
		res, err := http.Get(srv.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		defer res.Body.Close()
		b, err := io.ReadAll(res.Body)
		if err != nil {
			t.Fatal(err)
		}
		return res.StatusCode, res.Header.Get("Content-Type"), string(b)
	}
	f := func(path, contentType, contains string) {
		t.Helper()
		code, ct, body := get(path)
		if code != http.StatusOK {
			t.Fatalf("GET %s: %d", path, code)
		}
		if !strings.HasPrefix(ct, contentType) {
			t.Errorf("GET %s: content type %q, want %s", path, ct, contentType)
		}
		if !strings.Contains(body, contains) {
			t.Errorf("GET %s: body lacks %q", path, contains)
		}
	}
	f("/", "text/html", `src="app.js"`)
	f("/app.js", "text/javascript", "api/v1/query")
	f("/app.css", "text/css", ".panel")
	f("/vendor/uPlot.iife.min.js", "text/javascript", "uPlot")
	f("/vendor/uPlot.min.css", "text/css", ".uplot")
	f("/defs/events.json", "application/json", `"dataset": "events"`)
	f("/dashboards.json", "application/json", `"dashboards"`)

	_, _, body := get("/dashboards.json")
	var idx struct{ Dashboards []dashboards.Dashboard }
	if err := json.Unmarshal([]byte(body), &idx); err != nil {
		t.Fatal(err)
	}
	if len(idx.Dashboards) == 0 || idx.Dashboards[0].ID != "events" || len(idx.Dashboards[0].Panels) == 0 {
		t.Errorf("dashboards.json: %s", body)
	}
	if code, _, _ := get("/nope.js"); code != http.StatusNotFound {
		t.Errorf("GET /nope.js: %d, want 404", code)
	}
	// A range request on the generated file (it must seek).
	req, _ := http.NewRequest("GET", srv.URL+"/dashboards.json", nil)
	req.Header.Set("Range", "bytes=0-9")
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(res.Body)
	res.Body.Close()
	if res.StatusCode != http.StatusPartialContent || string(b) != body[:10] {
		t.Errorf("range request: %d %q", res.StatusCode, b)
	}
}

// The page works offline and behind a path prefix: no absolute or remote URLs.
func TestPageUsesRelativeURLs(t *testing.T) {
	remote := regexp.MustCompile(`(?i)(src|href)\s*=\s*["'](https?:|//|/)`)
	fetchAbs := regexp.MustCompile(`(api|fetch)\(\s*['"\x60]/`)
	for _, name := range []string{"index.html", "app.js", "app.css"} {
		b, err := fs.ReadFile(dashboards.FS(), name)
		if err != nil {
			t.Fatal(err)
		}
		if m := remote.Find(b); m != nil {
			t.Errorf("%s: absolute or remote URL %q", name, m)
		}
		if m := fetchAbs.Find(b); m != nil {
			t.Errorf("%s: absolute API path %q", name, m)
		}
		if strings.Contains(string(b), "cdn") {
			t.Errorf("%s mentions a CDN", name)
		}
	}
}

func TestParseRejects(t *testing.T) {
	f := func(def, want string) {
		t.Helper()
		_, err := dashboards.Parse("x.json", []byte(def))
		if err == nil {
			t.Fatalf("%s: no error, want %q", def, want)
		}
		if !strings.Contains(err.Error(), want) {
			t.Fatalf("%s: error %q, want %q", def, err, want)
		}
	}
	const p = `{"id":"a","type":"timeseries","metrics":["m"]}`
	f(`{"dataset":"d","panels":[`+p+`]}`, "title: missing")
	f(`{"title":"t","panels":[`+p+`]}`, "dataset: missing")
	f(`{"title":"t","dataset":"d","panels":[]}`, "panels: none")
	f(`{"title":"t","dataset":"d","range":"2h","panels":[`+p+`]}`, `range: "2h"`)
	f(`{"title":"t","dataset":"d","granularity":"second","panels":[`+p+`]}`, `granularity: "second"`)
	f(`{"title":"t","dataset":"d","panels":[`+p+`],"colour":1}`, `unknown field "colour"`)
	f(`{"title":"t","dataset":"d","panels":[`+p+`,`+p+`]}`, `panels[1].id: "a" used twice`)
	f(`{"title":"t","dataset":"d","panels":[{"id":"a","type":"pie","metrics":["m"]}]}`, `panels[0].type: "pie"`)
	f(`{"title":"t","dataset":"d","panels":[{"id":"a","type":"bar","metrics":["m"]}]}`, "panels[0].dimension: a bar panel needs one")
	f(`{"title":"t","dataset":"d","panels":[{"id":"a","type":"stat","metrics":[]}]}`, "panels[0].metrics: none")
	f(`{"title":"t","dataset":"d","panels":[{"id":"a","type":"stat","metrics":["m"],"filters":[{"dimension":"x","op":"like","values":["a"]}]}]}`, `panels[0].filters[0].op: "like"`)
	f(`{"title":"t","dataset":"d","panels":[`+p+`]} {}`, "trailing data")
}

func TestCheckNamesUnknownFields(t *testing.T) {
	cfg, err := config.Parse("demo.yaml", config.DemoYAML, nil)
	if err != nil {
		t.Fatal(err)
	}
	src := fstest.MapFS{
		"ui/index.html":  {Data: []byte("<!doctype html>")},
		"defs/bad.json":  {Data: []byte(`{"title":"t","dataset":"events","panels":[{"id":"a","type":"bar","metrics":["events"],"dimension":"city"}]}`)},
		"defs/bad2.json": {Data: []byte(`{"title":"t","dataset":"nope","panels":[{"id":"a","type":"stat","metrics":["events"]}]}`)},
	}
	defs, err := dashboards.Load(src)
	if err != nil {
		t.Fatal(err)
	}
	for i, want := range []string{`dashboard bad: panels[0].dimension: dataset events has no dimension "city"`, `dashboard bad2: dataset: "nope" is not in demo.yaml`} {
		if err := defs[i].Check(cfg); err == nil || err.Error() != want {
			t.Errorf("Check: %v, want %s", err, want)
		}
	}
	// A broken definition makes the generated index unavailable rather than half served.
	src["defs/broken.json"] = &fstest.MapFile{Data: []byte(`{`)}
	if _, err := fs.ReadFile(dashboards.New(src), dashboards.IndexFile); err == nil {
		t.Error("dashboards.json served from a broken definition")
	}
	if b, err := fs.ReadFile(dashboards.New(src), "index.html"); err != nil || string(b) != "<!doctype html>" {
		t.Errorf("index.html: %q, %v", b, err)
	}
}
