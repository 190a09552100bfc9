// Command lambda is the one binary of the platform. Each subcommand builds a layer with its
// constructor and runs it until SIGINT or SIGTERM.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"sort"
	"syscall"

	"github.com/lambda-platform/lambda/shared/config"
)

type command struct {
	help string
	run  func(ctx context.Context, args []string) error
}

var commands = map[string]command{}

func register(name, help string, run func(ctx context.Context, args []string) error) {
	commands[name] = command{help: help, run: run}
}

func usage() {
	fmt.Fprintf(os.Stderr, "lambda: a Lambda-architecture analytics platform over Kafka and ClickHouse\n\nUsage: lambda <command> [flags]\n\nCommands:\n")
	names := make([]string, 0, len(commands))
	for n := range commands {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		fmt.Fprintf(os.Stderr, "  %-9s %s\n", n, commands[n].help)
	}
	fmt.Fprintf(os.Stderr, "\nEvery command takes --config FILE (or LAMBDA_CONFIG); without it the built-in demo config is used.\nRun 'lambda <command> -h' for its flags.\n")
}

func main() {
	slog.SetDefault(slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: logLevel()})))
	if len(os.Args) < 2 || os.Args[1] == "help" || os.Args[1] == "-h" || os.Args[1] == "--help" {
		usage()
		if len(os.Args) < 2 {
			os.Exit(2)
		}
		return
	}
	cmd, ok := commands[os.Args[1]]
	if !ok {
		fmt.Fprintf(os.Stderr, "lambda: unknown command %q\n\n", os.Args[1])
		usage()
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := cmd.run(ctx, os.Args[2:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(2)
		}
		fmt.Fprintf(os.Stderr, "lambda %s: %v\n", os.Args[1], err)
		os.Exit(1)
	}
}

func logLevel() slog.Level {
	var l slog.Level
	if err := l.UnmarshalText([]byte(os.Getenv("LAMBDA_LOG_LEVEL"))); err != nil {
		return slog.LevelInfo
	}
	return l
}

// flags returns a flag set with the --config flag every command takes.
func flags(name string) (*flag.FlagSet, *string) {
	fs := flag.NewFlagSet("lambda "+name, flag.ContinueOnError)
	path := fs.String("config", os.Getenv("LAMBDA_CONFIG"), "configuration file (default: the built-in demo config; env LAMBDA_CONFIG)")
	return fs, path
}

// loadConfig parses the flags and loads the configuration.
func loadConfig(fs *flag.FlagSet, path *string, args []string) (*config.Config, error) {
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	return config.Load(*path)
}
