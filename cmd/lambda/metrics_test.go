package main

import (
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"
)

func TestHealthz(t *testing.T) {
	f := func(checks []healthCheck, code int, body string) {
		t.Helper()
		rec := httptest.NewRecorder()
		healthz(checks)(rec, httptest.NewRequest(http.MethodGet, "/healthz", nil))
		got, _ := io.ReadAll(rec.Result().Body)
		if rec.Code != code || string(got) != body {
			t.Errorf("/healthz = %d %q, want %d %q", rec.Code, got, code, body)
		}
	}
	ok := func() error { return nil }
	f(nil, 200, "ok\n")
	f([]healthCheck{ok, ok}, 200, "ok\n")
	f([]healthCheck{ok, func() error { return errors.New("dataset events stopped: code: 16") }, ok,
		func() error { return errors.New("a\nb") }}, 503, "dataset events stopped: code: 16\na\nb\n")
}
