package main

import (
	"flag"
	"net"
	"net/http"
	"net/http/pprof"
)

// pprofFlag adds --pprof to the flag set of a command that serves metrics.
func pprofFlag(fs *flag.FlagSet) *bool {
	return fs.Bool("pprof", false, "serve /debug/pprof on the metrics listener even when it is not on loopback (on loopback it always is)")
}

// pprofOn reports whether the metrics listener on addr serves /debug/pprof: when asked for, or
// when addr is a loopback address. Profiles show what the process is doing and cost CPU to
// take, so a listener reachable from elsewhere serves them only on request.
func pprofOn(asked bool, addr string) bool {
	return asked || loopback(addr)
}

// loopback reports whether a listen address binds only to a loopback interface.
func loopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// mountPprof adds the profile handlers (make bench-speed takes CPU profiles through them).
func mountPprof(mux *http.ServeMux) {
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
}
