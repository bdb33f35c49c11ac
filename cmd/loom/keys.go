package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/loom-dev/loom/internal/authn"
)

const keysUsage = `Usage: loom keys <create|list|revoke> [flags]

Manages API keys directly in the auth database (the one 'loom serve' uses): how the first admin key of a
tenant is made. Afterwards admins can use AdminService instead.

  loom keys create --tenant acme --name ci --roles writer [--expires 720h]
  loom keys list   --tenant acme
  loom keys revoke --tenant acme KEY_ID
`

// keysCmd runs `loom keys ...`.
func keysCmd(ctx context.Context, args []string, getenv func(string) string, stdout io.Writer, stderr *os.File) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, keysUsage)
		return errors.New("keys: no subcommand")
	}
	fs := flag.NewFlagSet("loom keys "+args[0], flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, keysUsage); fs.PrintDefaults() }
	tenant := fs.String("tenant", "", "tenant the key belongs to (required)")
	name := fs.String("name", "", "create: a name for people")
	roles := fs.String("roles", "reader", "create: comma-separated roles: reader, writer, admin")
	expires := fs.Duration("expires", 0, "create: lifetime; 0 means the key never expires")
	dataDir := fs.String("data-dir", envOr(getenv, "LOOM_DATA_DIR", "./loom-data"), "data directory (env LOOM_DATA_DIR)")
	dbURL := fs.String("database-url", getenv("LOOM_DATABASE_URL"), "Postgres URL (env LOOM_DATABASE_URL)")
	if err := fs.Parse(args[1:]); err != nil {
		return err
	}
	if *tenant == "" {
		return errors.New("keys: --tenant is required")
	}
	db, err := openDB(ctx, config{DataDir: *dataDir, DatabaseURL: *dbURL}, "auth.db")
	if err != nil {
		return err
	}
	defer db.Close()
	store, err := authn.NewKeyStore(ctx, db)
	if err != nil {
		return err
	}
	switch args[0] {
	case "create":
		var exp time.Time
		if *expires > 0 {
			exp = time.Now().Add(*expires)
		}
		if *name == "" {
			return errors.New("keys create: --name is required")
		}
		secret, key, err := store.Create(ctx, *tenant, *name, splitList(*roles), exp)
		if err != nil {
			return fmt.Errorf("keys create: %w", err)
		}
		fmt.Fprintf(stdout, "id: %s\nsecret: %s\n(the secret is shown once; send it as 'Authorization: Bearer <secret>')\n", key.ID, secret)
	case "list":
		keys, err := store.List(ctx, *tenant)
		if err != nil {
			return fmt.Errorf("keys list: %w", err)
		}
		for _, k := range keys {
			state := "active"
			if !k.RevokedAt.IsZero() {
				state = "revoked"
			}
			fmt.Fprintf(stdout, "%s\t%s\t%v\t%s\t%s\n", k.ID, k.Name, k.Roles, k.CreatedAt.Format(time.RFC3339), state)
		}
	case "revoke":
		if fs.NArg() != 1 {
			return errors.New("keys revoke: give one key id")
		}
		if err := store.Revoke(ctx, *tenant, fs.Arg(0)); err != nil {
			return fmt.Errorf("keys revoke: %w", err)
		}
		fmt.Fprintln(stdout, "revoked", fs.Arg(0))
	default:
		fmt.Fprint(stderr, keysUsage)
		return fmt.Errorf("keys: unknown subcommand %q", args[0])
	}
	return nil
}

func envOr(getenv func(string) string, name, def string) string {
	if v := getenv(name); v != "" {
		return v
	}
	return def
}
