package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/lambda-platform/lambda/shared/config"
)

func init() {
	register("check", "validate a config without connecting anywhere: every problem at once, with file, line and field", runCheck)
	describe("check", helpText{
		Usage: []string{"check [flags] [FILE]"},
		Examples: []string{
			"lambda check --config lambda.yaml",
			"lambda check lambda.yaml --skip-files        # in CI, without the secret files",
		},
		Notes: "Exit 0 and a summary of what the config connects to and declares (secrets by source only), or every\n" +
			"problem with file:line and field and exit 1. docs/configuration.md#checking-a-configuration.",
	})
}

func runCheck(_ context.Context, args []string) error {
	fs, path := flags("check")
	skipFiles := fs.Bool("skip-files", false, "do not read password_file, ca_file, cert_file and key_file (a check without the secrets, e.g. in CI)")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	switch {
	case fs.NArg() == 1 && *path == "":
		*path = fs.Arg(0) // `lambda check lambda.yaml`
	case fs.NArg() > 0:
		return fmt.Errorf("unexpected arguments %q: give the file with --config", fs.Args())
	}
	return checkConfig(stdout, *path, os.LookupEnv, !*skipFiles)
}

// checkConfig writes every problem of the configuration at path (the demo's when empty), one
// a line, or a summary of what the configuration connects to and declares. The environment
// applies as it does for every command. It returns an error when there are problems.
func checkConfig(w io.Writer, path string, lookup func(string) (string, bool), readFiles bool) error {
	data, name := config.DemoYAML, "<demo>"
	if path != "" {
		b, err := os.ReadFile(path)
		if err != nil {
			return fmt.Errorf("cannot read config: %w", err)
		}
		data, name = b, path
	}
	cfg, problems := config.Check(name, data, lookup, readFiles)
	if len(problems) > 0 {
		for _, p := range problems {
			fmt.Fprintln(w, p.Error())
		}
		s := "s"
		if len(problems) == 1 {
			s = ""
		}
		return fmt.Errorf("%s: %d problem%s", name, len(problems), s)
	}
	fmt.Fprintf(w, "%s: OK\n", name)
	ch, k := cfg.ClickHouse, cfg.Kafka
	fmt.Fprintf(w, "  clickhouse  %s, database %s, user %s (password: %s), tls: %s\n", strings.Join(ch.Addr, ","),
		ch.Database, ch.Username, secretSource(cfg, "clickhouse.password", ch.Password, ch.PasswordFile), tlsSummary(ch.TLS))
	sasl := "off"
	if s := k.SASL; s.Mechanism != "" {
		sasl = fmt.Sprintf("%s as %s (password: %s)", s.Mechanism, s.Username, secretSource(cfg, "kafka.sasl.password", s.Password, s.PasswordFile))
	}
	fmt.Fprintf(w, "  kafka       %s, tls: %s, sasl: %s\n", strings.Join(k.Brokers, ","), tlsSummary(k.TLS), sasl)
	for _, d := range cfg.Datasets {
		fmt.Fprintf(w, "  dataset     %s: topic %s, %d dimensions (%s), %d metrics (%s), batch %q, raw retention %s\n",
			d.Name, d.Topic, len(d.Dimensions), strings.Join(d.DimensionNames(), ", "), len(d.Metrics), metricNames(d),
			d.BatchConf.Schedule, days(d.RawRetention.D()))
	}
	if !readFiles {
		fmt.Fprintln(w, "  (password and TLS files not read: --skip-files)")
	}
	return nil
}

// secretSource says where a secret comes from, never what it is.
func secretSource(cfg *config.Config, field, value, file string) string {
	switch {
	case cfg.FromEnv(field) != "":
		return "from " + cfg.FromEnv(field)
	case file != "":
		return "from " + file
	case value != "":
		return "in the file"
	}
	return "none"
}

func tlsSummary(t config.TLS) string {
	if !t.Enabled {
		return "off"
	}
	var parts []string
	if t.CAFile != "" {
		parts = append(parts, "ca "+t.CAFile)
	} else {
		parts = append(parts, "system roots")
	}
	if t.CertFile != "" {
		parts = append(parts, "client certificate "+t.CertFile)
	}
	if t.ServerName != "" {
		parts = append(parts, "server name "+t.ServerName)
	}
	if t.InsecureSkipVerify {
		parts = append(parts, "CERTIFICATE NOT VERIFIED")
	}
	return "on (" + strings.Join(parts, ", ") + ")"
}

func metricNames(d config.Dataset) string {
	var out []string
	for _, m := range d.Metrics {
		out = append(out, m.Name+" "+m.Type)
	}
	return strings.Join(out, ", ")
}

// days writes a whole number of days as "90d", other durations as Go does.
func days(d time.Duration) string {
	if d > 0 && d%(24*time.Hour) == 0 {
		return fmt.Sprintf("%dd", d/(24*time.Hour))
	}
	return d.String()
}
