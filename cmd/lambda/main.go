// Command lambda is the one binary of the platform. Each subcommand builds a layer with its
// constructor and runs it until SIGINT or SIGTERM.
//
// Exit status: 0 on success and for -h, 1 when the command failed at run time (a config
// error, an unreachable server), 2 for a usage error (an unknown command, subcommand or flag,
// a malformed or missing flag value, an unexpected argument).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"sort"
	"strings"
	"syscall"
	// The zones of datasets and requests never depend on the host's zone database.
	_ "time/tzdata"

	"github.com/lambda-platform/lambda/shared/config"
)

type command struct {
	help string
	run  func(ctx context.Context, args []string) error
}

var commands = map[string]command{}

// register adds a command; help is its one-line summary in `lambda help`.
func register(name, help string, run func(ctx context.Context, args []string) error) {
	commands[name] = command{help: help, run: run}
}

// helpText is what `lambda <command> -h` prints besides the summary and the flags.
type helpText struct {
	// Usage lines after "lambda ", e.g. "batch [flags] run [flags]"; default "<command> [flags]".
	Usage []string
	// Summary of a subcommand (a command's own is its register help).
	Summary string
	// Subcommands, each with an example.
	Subcommands []subcommandHelp
	// Examples are whole command lines.
	Examples []string
	// Notes follow the examples.
	Notes string
}

type subcommandHelp struct{ Name, Summary, Example string }

var helps = map[string]helpText{}

// describe sets the help of a command or subcommand path ("batch", "batch run").
func describe(path string, h helpText) { helps[path] = h }

// Where commands write: the process's stdout and stderr, or a test's buffers (dispatch sets
// them).
var stdout, stderr io.Writer = os.Stdout, os.Stderr

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := dispatch(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// dispatch runs the command args name and returns the exit status. It writes to out and errw.
func dispatch(ctx context.Context, args []string, out, errw io.Writer) int {
	stdout, stderr = out, errw
	// The environment's log settings until a command's flags say otherwise.
	if err := setupLogging(envOr("LAMBDA_LOG_FORMAT", "text"), envOr("LAMBDA_LOG_LEVEL", "info")); err != nil {
		_ = setupLogging("text", "info")
	}
	if len(args) == 0 {
		usage(stderr)
		return 2
	}
	switch args[0] {
	case "help", "-h", "-help", "--help":
		if args[0] == "help" && len(args) > 1 {
			if _, ok := commands[args[1]]; ok {
				return dispatch(ctx, append(args[1:], "-h"), out, errw)
			}
			fmt.Fprintf(stderr, "lambda help: unknown command %q\n\n", args[1])
			usage(stderr)
			return 2
		}
		usage(stdout)
		return 0
	case "-version", "--version":
		args = []string{"version"}
	}
	cmd, ok := commands[args[0]]
	if !ok {
		fmt.Fprintf(stderr, "lambda: unknown command %q\n\n", args[0])
		usage(stderr)
		return 2
	}
	return exitCode(args[0], cmd.run(ctx, args[1:]))
}

// exitCode reports err and maps it to the exit status.
func exitCode(name string, err error) int {
	if err == nil || errors.Is(err, flag.ErrHelp) {
		return 0
	}
	var ue *usageError
	if errors.As(err, &ue) {
		fmt.Fprintf(stderr, "%s: %v\nRun '%s -h' for usage.\n", ue.cmd, ue.err, ue.cmd)
		return 2
	}
	fmt.Fprintf(stderr, "lambda %s: %v\n", name, err)
	return 1
}

func usage(w io.Writer) {
	fmt.Fprintf(w, "lambda: a Lambda-architecture analytics platform over Kafka and ClickHouse\n\nUsage: lambda <command> [flags]\n\nCommands:\n")
	names := make([]string, 0, len(commands))
	for n := range commands {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		fmt.Fprintf(w, "  %-9s %s\n", n, commands[n].help)
	}
	fmt.Fprintf(w, "\nEvery command takes --config FILE (or LAMBDA_CONFIG); without it the built-in demo config is used.\n"+
		"Logs: --log-format text|json (LAMBDA_LOG_FORMAT), --log-level debug|info|warn|error (LAMBDA_LOG_LEVEL).\n"+
		"Run 'lambda <command> -h' for its flags, subcommands and examples.\n"+
		"Exit status: 0 success, 1 failure, 2 usage error.\n")
}

// usageError is a command line the command cannot run: exit status 2.
type usageError struct {
	cmd string // "lambda batch run"
	err error
}

func (e *usageError) Error() string { return e.err.Error() }
func (e *usageError) Unwrap() error { return e.err }

// usagef returns a usage error of the command fs parses.
func usagef(fs *flag.FlagSet, format string, args ...any) error {
	return &usageError{cmd: fs.Name(), err: fmt.Errorf(format, args...)}
}

func envOr(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}

// newFlagSet returns an empty flag set for `lambda <name>` that prints nothing itself: parse
// prints the help and reports errors.
func newFlagSet(name string) *flag.FlagSet {
	fs := flag.NewFlagSet("lambda "+name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	return fs
}

// flags returns a flag set with the flags every command takes: --config, --log-format and
// --log-level.
func flags(name string) (*flag.FlagSet, *string) {
	fs := newFlagSet(name)
	path := fs.String("config", os.Getenv("LAMBDA_CONFIG"), "configuration `FILE` (default: the built-in demo config; env LAMBDA_CONFIG)")
	fs.String("log-format", envOr("LAMBDA_LOG_FORMAT", "text"), "log `FORMAT`: text or json (env LAMBDA_LOG_FORMAT)")
	fs.String("log-level", envOr("LAMBDA_LOG_LEVEL", "info"), "log `LEVEL`: debug, info, warn or error (env LAMBDA_LOG_LEVEL)")
	return fs, path
}

// parseFlags parses args and sets up logging from --log-format and --log-level. For -h it prints
// the help to stdout and returns flag.ErrHelp; a bad flag is a usage error. Positional
// arguments are left in fs.Args(): commands that take none call parse instead.
func parseFlags(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			printHelp(stdout, fs)
			return flag.ErrHelp
		}
		return &usageError{cmd: fs.Name(), err: err}
	}
	format, level := logFormat, logLevel.String()
	if f := fs.Lookup("log-format"); f != nil {
		format = f.Value.String()
	}
	if f := fs.Lookup("log-level"); f != nil {
		level = f.Value.String()
	}
	if err := setupLogging(format, level); err != nil {
		return &usageError{cmd: fs.Name(), err: err}
	}
	return nil
}

// parse is parseFlags for a command that takes no positional arguments: one is a usage error
// (the flag package stops at the first one, so flags after it would be ignored silently).
func parse(fs *flag.FlagSet, args []string) error {
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return usagef(fs, "unexpected argument %q: %s takes flags only", fs.Arg(0), fs.Name())
	}
	return nil
}

// loadConfig parses the flags (refusing positional arguments) and loads the configuration.
func loadConfig(fs *flag.FlagSet, path *string, args []string) (*config.Config, error) {
	if err := parse(fs, args); err != nil {
		return nil, err
	}
	return config.Load(*path)
}

// printHelp writes the help of the command fs parses: usage, summary, subcommands with an
// example each, flags and examples.
func printHelp(w io.Writer, fs *flag.FlagSet) {
	path := strings.TrimPrefix(fs.Name(), "lambda ")
	h := helps[path]
	usage := h.Usage
	if len(usage) == 0 {
		usage = []string{path + " [flags]"}
	}
	for i, u := range usage {
		prefix := "Usage: "
		if i > 0 {
			prefix = "       "
		}
		fmt.Fprintf(w, "%slambda %s\n", prefix, u)
	}
	summary := h.Summary
	if summary == "" {
		summary = commands[path].help
	}
	if summary != "" {
		fmt.Fprintf(w, "\n%s\n", summary)
	}
	if len(h.Subcommands) > 0 {
		fmt.Fprintf(w, "\nSubcommands:\n")
		for _, s := range h.Subcommands {
			fmt.Fprintf(w, "  %-8s %s\n             %s\n", s.Name, s.Summary, s.Example)
		}
	}
	fmt.Fprintf(w, "\nFlags:\n")
	fs.VisitAll(func(f *flag.Flag) {
		name, use := flag.UnquoteUsage(f)
		fmt.Fprintf(w, "  --%s", f.Name)
		if name != "" {
			fmt.Fprintf(w, " %s", name)
		}
		fmt.Fprintf(w, "\n        %s", use)
		switch {
		case f.DefValue == "" || f.DefValue == "false" || f.DefValue == "0":
		case name != "" && (name == "string" || name == strings.ToUpper(name)):
			fmt.Fprintf(w, " (default %q)", f.DefValue)
		default:
			fmt.Fprintf(w, " (default %s)", f.DefValue)
		}
		fmt.Fprintln(w)
	})
	if len(h.Examples) > 0 {
		fmt.Fprintf(w, "\nExamples:\n")
		for _, e := range h.Examples {
			fmt.Fprintf(w, "  %s\n", e)
		}
	}
	if h.Notes != "" {
		fmt.Fprintf(w, "\n%s\n", strings.TrimSpace(h.Notes))
	}
}

// The logger's settings, for commands that build a logger of their own (batch run on a
// terminal).
var (
	logFormat = "text"
	logLevel  = slog.LevelInfo
)

// setupLogging sets the default logger: text or JSON lines on stderr, at level and above.
func setupLogging(format, level string) error {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return fmt.Errorf("--log-level (LAMBDA_LOG_LEVEL): want debug, info, warn or error, got %q", level)
	}
	h, err := newLogHandler(stderr, format, l)
	if err != nil {
		return err
	}
	logFormat, logLevel = format, l
	slog.SetDefault(slog.New(h))
	return nil
}

func newLogHandler(w io.Writer, format string, level slog.Level) (slog.Handler, error) {
	o := &slog.HandlerOptions{Level: level}
	switch format {
	case "text":
		return slog.NewTextHandler(w, o), nil
	case "json":
		return slog.NewJSONHandler(w, o), nil
	}
	return nil, fmt.Errorf("--log-format (LAMBDA_LOG_FORMAT): want text or json, got %q", format)
}
