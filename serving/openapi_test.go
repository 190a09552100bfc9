package serving

import (
	"encoding/json"
	"fmt"
	"net/http/httptest"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// TestOpenAPICoversResponses: every route the server registers is in the document with each
// of its methods, every reference resolves, and the real answers of every JSON endpoint (and
// of refusals) have exactly the documented fields, so the document cannot drift from the code.
func TestOpenAPICoversResponses(t *testing.T) {
	e := newEnvWith(t, biConfig, biEvents())
	raw, err := json.Marshal(e.srv.OpenAPI())
	if err != nil {
		t.Fatal(err)
	}
	var doc map[string]any
	if err := json.Unmarshal(raw, &doc); err != nil {
		t.Fatal(err)
	}
	paths := doc["paths"].(map[string]any)
	for _, r := range e.srv.engine.Routes() {
		p, ok := paths[r.Path].(map[string]any)
		if !ok || p[strings.ToLower(r.Method)] == nil {
			t.Errorf("route %s %s is not in the OpenAPI document", r.Method, r.Path)
			continue
		}
		for code, resp := range p[strings.ToLower(r.Method)].(map[string]any)["responses"].(map[string]any) {
			if resp.(map[string]any)["content"] == nil {
				t.Errorf("%s %s: response %s has no content", r.Method, r.Path, code)
			}
		}
	}
	schemas := doc["components"].(map[string]any)["schemas"].(map[string]any)
	for _, ref := range regexpAll(string(raw), `"#/components/schemas/([A-Za-z]+)"`) {
		if schemas[ref] == nil {
			t.Errorf("$ref to a missing schema %s", ref)
		}
	}

	check := func(name, method, path, body, schema string, wantCode int) {
		t.Helper()
		var v any
		if code := e.do(t, method, path, "", body, &v); code != wantCode {
			t.Fatalf("%s: status %d, want %d", name, code, wantCode)
		}
		for _, p := range conform(schemas, map[string]any{"$ref": "#/components/schemas/" + schema}, v, name) {
			t.Error(p)
		}
	}
	check("datasets", "GET", "/api/v1/datasets", "", "DatasetsResponse", 200)
	check("query", "POST", "/api/v1/query", `{"dataset":"events","metrics":["events","revenue_per_user"],"dimensions":["country"],"having":[{"metric":"events","op":"gt","value":1}],"from":"2024-03-05","to":"2024-03-11","limit":5,"offset":2}`, "QueryResponse", 200)
	check("values", "GET", "/api/v1/values?dataset=events&dimension=device&from=2024-03-05&to=2024-03-11", "", "ValuesResponse", 200)
	check("freshness", "GET", "/api/v1/freshness", "", "FreshnessResponse", 200)
	check("readyz", "GET", "/readyz", "", "Ready", 200)
	check("refusal", "POST", "/api/v1/query", `{"dataset":"events","metrics":["nope"],"from":"2024-03-05","to":"2024-03-11"}`, "Error", 400)
	check("not found", "GET", "/api/v1/nope", "", "Error", 404)

	w := httptest.NewRecorder()
	e.http.ServeHTTP(w, httptest.NewRequest("GET", "/healthz", nil))
	if w.Body.String() != "ok\n" {
		t.Errorf("healthz: %q", w.Body.String())
	}
}

func regexpAll(s, re string) []string {
	var out []string
	for _, m := range mustRE(re).FindAllStringSubmatch(s, -1) {
		if !slices.Contains(out, m[1]) {
			out = append(out, m[1])
		}
	}
	return out
}

// conform reports where v departs from schema: a missing required field, a field an object
// without additionalProperties does not list, a value of another JSON type.
func conform(schemas map[string]any, schema map[string]any, v any, at string) []string {
	if ref, ok := schema["$ref"].(string); ok {
		return conform(schemas, schemas[strings.TrimPrefix(ref, "#/components/schemas/")].(map[string]any), v, at)
	}
	if v == nil {
		if schema["nullable"] == true {
			return nil
		}
		return []string{at + ": null, not nullable"}
	}
	var out []string
	switch schema["type"] {
	case "object":
		m, ok := v.(map[string]any)
		if !ok {
			return []string{fmt.Sprintf("%s: %T, want an object", at, v)}
		}
		props, _ := schema["properties"].(map[string]any)
		for _, r := range asStrings(schema["required"]) {
			if _, ok := m[r]; !ok {
				out = append(out, at+": lacks required "+r)
			}
		}
		for k, x := range m {
			p, ok := props[k].(map[string]any)
			if !ok {
				if schema["additionalProperties"] != true {
					out = append(out, at+": undocumented field "+k)
				}
				continue
			}
			out = append(out, conform(schemas, p, x, at+"."+k)...)
		}
	case "array":
		a, ok := v.([]any)
		if !ok {
			return []string{fmt.Sprintf("%s: %T, want an array", at, v)}
		}
		for i, x := range a {
			out = append(out, conform(schemas, schema["items"].(map[string]any), x, fmt.Sprintf("%s[%d]", at, i))...)
		}
	case "string":
		s, ok := v.(string)
		if !ok {
			return []string{fmt.Sprintf("%s: %T, want a string", at, v)}
		}
		if enum := asStrings(schema["enum"]); len(enum) > 0 && !slices.Contains(enum, s) {
			out = append(out, fmt.Sprintf("%s: %q is not one of %v", at, s, enum))
		}
	case "integer", "number":
		if _, ok := v.(float64); !ok {
			return []string{fmt.Sprintf("%s: %T, want a number", at, v)}
		}
	case "boolean":
		if _, ok := v.(bool); !ok {
			return []string{fmt.Sprintf("%s: %T, want a boolean", at, v)}
		}
	}
	return out
}

func asStrings(v any) []string {
	a, _ := v.([]any)
	out := make([]string, 0, len(a))
	for _, x := range a {
		if s, ok := x.(string); ok {
			out = append(out, s)
		}
	}
	return out
}

func mustRE(s string) *regexp.Regexp { return regexp.MustCompile(s) }
