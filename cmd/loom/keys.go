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
	"github.com/loom-dev/loom/internal/secret"
	"github.com/loom-dev/loom/internal/sqldb"
)

const keysUsage = `Usage: loom keys <create|list|revoke|reseal> [flags]

Manages API keys directly in the auth database (the one 'loom serve' uses): how the first admin key of a
tenant is made. Afterwards admins can use AdminService instead.

  loom keys create --tenant acme --name ci --roles writer [--expires 720h]
  loom keys list   --tenant acme
  loom keys revoke --tenant acme KEY_ID
  loom keys reseal                       (tenants' provider keys, after a master-key rotation)

reseal re-encrypts every tenant's stored provider key under LOOM_MASTER_KEY that is still sealed under one of
LOOM_MASTER_KEY_PREVIOUS, then checks that every stored key opens with LOOM_MASTER_KEY alone: after it succeeds,
the previous keys can be removed. It is safe to run while 'loom serve' runs, and to run again after a failure.
`

// keysCmd runs `loom keys ...`.
func keysCmd(ctx context.Context, args []string, getenv func(string) string, stdout io.Writer, stderr *os.File) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, keysUsage)
		return errors.New("keys: no subcommand")
	}
	switch args[0] {
	case "-h", "-help", "--help", "help":
		fmt.Fprint(stdout, keysUsage)
		return flag.ErrHelp
	case "create", "list", "revoke", "reseal":
	default:
		fmt.Fprint(stderr, keysUsage)
		return fmt.Errorf("keys: unknown subcommand %q (want create, list, revoke or reseal)", args[0])
	}
	fs := flag.NewFlagSet("loom keys "+args[0], flag.ContinueOnError)
	tenant := fs.String("tenant", "", "tenant the key belongs to (required)")
	name := fs.String("name", "", "create: a name for people")
	roles := fs.String("roles", "reader", "create: comma-separated roles: reader, writer, admin")
	expires := fs.Duration("expires", 0, "create: lifetime; 0 means the key never expires")
	dataDir := fs.String("data-dir", envOr(getenv, "LOOM_DATA_DIR", "./loom-data"), "data directory (env LOOM_DATA_DIR)")
	dbURL := fs.String("database-url", getenv("LOOM_DATABASE_URL"), "Postgres URL (env LOOM_DATABASE_URL)")
	if err := parseCmdArgs(fs, keysUsage, args[1:], stdout, stderr); err != nil {
		return err
	}
	if args[0] != "revoke" && fs.NArg() > 0 {
		return fmt.Errorf("keys %s: unexpected argument %q", args[0], fs.Arg(0))
	}
	db, err := openDB(ctx, config{DataDir: *dataDir, DatabaseURL: *dbURL}, "auth.db")
	if err != nil {
		return err
	}
	defer db.Close()
	if args[0] == "reseal" {
		return resealCmd(ctx, getenv, db, stdout)
	}
	if *tenant == "" {
		return errors.New("keys: --tenant is required")
	}
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

// resealCmd runs `loom keys reseal`: re-seal tenants' provider keys under the current master key, then check
// that every one opens under it alone.
func resealCmd(ctx context.Context, getenv func(string) string, db *sqldb.DB, stdout io.Writer) error {
	var cfg config
	current, err := readSecret(getenv, "LOOM_MASTER_KEY")
	if err != nil {
		return err
	}
	previous, err := readSecret(getenv, "LOOM_MASTER_KEY_PREVIOUS")
	if err != nil {
		return err
	}
	cfg.Secrets.MasterKey, cfg.Secrets.MasterKeyPrevious = secret.String(current), secret.String(previous)
	if cfg.Secrets.MasterKey == "" {
		return errors.New("keys reseal: LOOM_MASTER_KEY (the new master key) is not set")
	}
	store, err := providerKeys(ctx, cfg, db)
	if err != nil {
		return fmt.Errorf("keys reseal: %w", err)
	}
	n, err := store.Reseal(ctx)
	if err != nil {
		return fmt.Errorf("keys reseal: %d resealed before: %w", n, err)
	}
	total, err := store.Check(ctx)
	if err != nil {
		return fmt.Errorf("keys reseal: %d resealed, but: %w", n, err)
	}
	fmt.Fprintf(stdout, "resealed %d provider keys; all %d open with the current master key: LOOM_MASTER_KEY_PREVIOUS can be removed\n", n, total)
	return nil
}
