package main

import (
	"context"
	"fmt"
	"runtime"
	"runtime/debug"

	"github.com/prometheus/client_golang/prometheus"
)

func init() {
	register("version", "print the version, the VCS revision and the Go version of this binary", runVersion)
	describe("version", helpText{Examples: []string{"lambda version"}})
}

// Set with -ldflags "-X main.buildVersion=… -X main.buildRevision=…" where the build has no
// VCS information to stamp (a Docker build context without .git, a git worktree): the
// version replaces Go's "(devel)", the revision is used when Go stamped none.
var buildVersion, buildRevision string

// build is what the binary knows about its own build.
type build struct {
	Version   string // module version: a tag, a pseudo-version, or "(devel)"
	Revision  string // VCS revision, "unknown" without VCS stamping (go test, -buildvcs=false)
	Time      string // VCS commit time, "" when unknown
	Modified  bool   // built from a tree with uncommitted changes
	GoVersion string
}

// buildInfo reads the build information Go embeds (runtime/debug.ReadBuildInfo).
func buildInfo() build {
	b := build{Version: "unknown", Revision: "unknown", GoVersion: runtime.Version()}
	if buildRevision != "" {
		b.Revision = buildRevision
	}
	bi, ok := debug.ReadBuildInfo()
	if ok && bi.Main.Version != "" {
		b.Version = bi.Main.Version
	}
	if buildVersion != "" {
		b.Version = buildVersion
	}
	if !ok {
		return b
	}
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			b.Revision = s.Value
		case "vcs.time":
			b.Time = s.Value
		case "vcs.modified":
			b.Modified = s.Value == "true"
		}
	}
	return b
}

func runVersion(_ context.Context, args []string) error {
	fs := newFlagSet("version")
	if err := parse(fs, args); err != nil {
		return err
	}
	b := buildInfo()
	rev := b.Revision
	if b.Modified {
		rev += " (modified)"
	}
	if b.Time != "" {
		rev += " " + b.Time
	}
	fmt.Fprintf(stdout, "lambda %s\n  revision: %s\n  go:       %s %s/%s\n", b.Version, rev, b.GoVersion, runtime.GOOS, runtime.GOARCH)
	return nil
}

// buildInfoCollector is lambda_build_info{version,revision,goversion} = 1, on every metrics
// endpoint, so that dashboards and alerts can tell which build runs where.
func buildInfoCollector() prometheus.Collector {
	b := buildInfo()
	g := prometheus.NewGauge(prometheus.GaugeOpts{
		Name:        "lambda_build_info",
		Help:        "Always 1; the labels say which build of lambda runs (module version, VCS revision, Go version).",
		ConstLabels: prometheus.Labels{"version": b.Version, "revision": b.Revision, "goversion": b.GoVersion},
	})
	g.Set(1)
	return g
}
