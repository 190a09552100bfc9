package main

import (
	"bytes"
	"flag"
	"os"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite testdata/**/*.golden")

// golden compares got with the file at path, or rewrites it with -update.
func golden(t *testing.T, path string, got []byte) {
	t.Helper()
	if *update {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run with -update to create it)", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("output differs from %s (-update rewrites it):\n--- got\n%s\n--- want\n%s", path, got, want)
	}
}

func noEnv(string) (string, bool) { return "", false }

// TestCheckMany: every problem of a config with many, each with file, line and field.
func TestCheckMany(t *testing.T) {
	var out bytes.Buffer
	err := checkConfig(&out, "testdata/check/many.yaml", noEnv, true)
	if err == nil || err.Error() != "testdata/check/many.yaml: 21 problems" {
		t.Errorf("error: %v", err)
	}
	golden(t, "testdata/check/many.golden", out.Bytes())
	if strings.Contains(out.String(), "config.") || strings.Contains(out.String(), "!!") || strings.Contains(out.String(), "unmarshal") {
		t.Errorf("a Go type or a YAML tag in the output:\n%s", out.String())
	}
}

// TestCheckDemo: the demo config is fine, and the summary says where secrets come from
// without showing them.
func TestCheckDemo(t *testing.T) {
	var out bytes.Buffer
	if err := checkConfig(&out, "", noEnv, true); err != nil {
		t.Fatalf("%v\n%s", err, out.String())
	}
	if !strings.HasPrefix(out.String(), "<demo>: OK\n") || !strings.Contains(out.String(), "dataset     events: topic events") {
		t.Errorf("output:\n%s", out.String())
	}
	env := map[string]string{"LAMBDA_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512", "LAMBDA_KAFKA_SASL_USERNAME": "svc",
		"LAMBDA_KAFKA_SASL_PASSWORD": "hunter2", "LAMBDA_CLICKHOUSE_TLS_ENABLED": "true"}
	out.Reset()
	if err := checkConfig(&out, "", func(k string) (string, bool) { v, ok := env[k]; return v, ok }, true); err != nil {
		t.Fatalf("%v\n%s", err, out.String())
	}
	for _, want := range []string{"tls: on (system roots)", "sasl: SCRAM-SHA-512 as svc (password: from LAMBDA_KAFKA_SASL_PASSWORD)"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("no %q in:\n%s", want, out.String())
		}
	}
	if strings.Contains(out.String(), "hunter2") {
		t.Errorf("the password is shown:\n%s", out.String())
	}
}
