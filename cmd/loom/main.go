// Command loom runs Loom's services (agent, orchestrator, memory) from one binary.
//
//	loom serve [flags]      run the services (all of them on embedded defaults, or a subset)
//	loom keys ...           create, list and revoke API keys
//	loom backup --to DIR    a consistent copy of the embedded data dir, while serving
//	loom restore --from DIR restore a backup into an empty data dir
//	loom bench memory       the memory benchmark (docs/benchmarks.md)
//	loom version            print the version (also loom --version)
//	loom completion bash    a bash completion script: source <(loom completion bash)
//
// Run `loom serve --help` for every flag and the environment variable behind it.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"runtime/debug"
	"syscall"
)

// version is set at build time with -ldflags "-X main.version=v1.2.3"; otherwise the module version is used.
var version = ""

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr)
	stop()
	if errors.Is(err, flag.ErrHelp) {
		return
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "loom:", err)
		os.Exit(1)
	}
}

const usage = `Usage: loom <command> [flags]

Commands:
  serve     run Loom's services on one port (Connect, gRPC and gRPC-Web)
  keys      create, list and revoke API keys
  backup    back up the embedded data dir, while serve runs: 'loom backup --to DIR'
  restore   restore a backup into a new or empty data dir: 'loom restore --from DIR'
  bench     benchmarks: 'loom bench memory'
  version   print the version (also: loom --version)
  completion  shell completion: 'source <(loom completion bash)'

Run 'loom <command> --help' for a command's flags.
`

// run is the whole program, with its environment passed in so tests can call it.
func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr *os.File) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return errors.New("no command given")
	}
	switch args[0] {
	case "serve":
		out := stderr
		if wantsHelp(args[1:]) {
			out = stdout
		}
		cfg, err := parseServe(args[1:], getenv, out)
		if err != nil {
			return err
		}
		return serve(ctx, cfg, stderr)
	case "bench":
		return benchCmd(ctx, args[1:], getenv, stdout, stderr)
	case "keys":
		return keysCmd(ctx, args[1:], getenv, stdout, stderr)
	case "backup":
		return backupCmd(ctx, args[1:], getenv, stdout, stderr)
	case "restore":
		return restoreCmd(ctx, args[1:], getenv, stdout, stderr)
	case "version", "--version", "-version":
		if wantsHelp(args[1:]) {
			fmt.Fprint(stdout, "Usage: loom version\n\nPrints the version of this binary (also: loom --version).\n")
			return flag.ErrHelp
		}
		fmt.Fprintln(stdout, "loom", buildVersion())
		return nil
	case "completion":
		return completionCmd(args[1:], stdout, stderr)
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return nil
	default:
		fmt.Fprint(stderr, usage)
		return fmt.Errorf("unknown command %q", args[0])
	}
}

// wantsHelp reports whether args ask for help the way the flag package understands it (-h, -help, --help,
// before any "--").
func wantsHelp(args []string) bool {
	for _, a := range args {
		switch a {
		case "--":
			return false
		case "-h", "-help", "--help", "--h":
			return true
		}
	}
	return false
}

func buildVersion() string {
	if version != "" {
		return version
	}
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" {
		return bi.Main.Version
	}
	return "(devel)"
}
