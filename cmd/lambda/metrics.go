package main

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// newRegistry returns a registry with the Go and process collectors and lambda_build_info.
func newRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}), buildInfoCollector())
	return reg
}

// healthCheck returns a layer's problems (one per line), nil when it has none.
type healthCheck func() error

// healthz answers 200 "ok" while every check passes, else 503 with every problem, one per
// line: what an orchestrator's liveness probe restarts the process on.
func healthz(checks []healthCheck) http.HandlerFunc {
	return func(w http.ResponseWriter, _ *http.Request) {
		var problems []string
		for _, check := range checks {
			if err := check(); err != nil {
				problems = append(problems, err.Error())
			}
		}
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		if len(problems) > 0 {
			w.WriteHeader(http.StatusServiceUnavailable)
			_, _ = w.Write([]byte(strings.Join(problems, "\n") + "\n"))
			return
		}
		_, _ = w.Write([]byte("ok\n"))
	}
}

// serveMetrics serves /metrics, /healthz (healthy while every check passes) and, when asked
// for or on loopback (pprofOn), /debug/pprof on addr until ctx is done. An empty addr serves
// nothing.
func serveMetrics(ctx context.Context, addr string, reg *prometheus.Registry, askPprof bool, checks ...healthCheck) error {
	if addr == "" {
		<-ctx.Done()
		return nil
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	pprof := pprofOn(askPprof, addr)
	if pprof {
		mountPprof(mux)
	}
	mux.HandleFunc("/healthz", healthz(checks))
	srv := &http.Server{Addr: addr, Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	errc := make(chan error, 1)
	go func() { errc <- srv.ListenAndServe() }()
	slog.Info("metrics listening", "addr", addr, "pprof", pprof)
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := srv.Shutdown(sctx); err != nil && !errors.Is(err, http.ErrServerClosed) {
			return err
		}
		return nil
	}
}
