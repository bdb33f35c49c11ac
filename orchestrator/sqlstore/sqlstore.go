// Package sqlstore is the orchestrator's [orchestrator.Store] over internal/sqldb: one implementation for SQLite
// (embedded) and PostgreSQL, with its migrations embedded.
package sqlstore

import (
	"context"
	"database/sql"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	orchestratorv1 "github.com/loom-dev/loom/gen/loom/orchestrator/v1"
	"github.com/loom-dev/loom/internal/pagetoken"
	"github.com/loom-dev/loom/internal/sqldb"
	"github.com/loom-dev/loom/orchestrator"
)

// migrations holds the schema, one goose directory per dialect.
//
//go:embed migrations
var migrations embed.FS

// Store is an orchestrator.Store in a SQL database. It is safe for concurrent use.
type Store struct {
	db     *sqldb.DB
	now    func() time.Time
	logger *slog.Logger
}

// Option configures a Store.
type Option func(*Store)

// WithLogger sets the logger that records rows a list skipped because they cannot be decoded; the default is
// slog.Default().
func WithLogger(l *slog.Logger) Option { return func(s *Store) { s.logger = l } }

var _ orchestrator.Store = (*Store)(nil)

// New migrates db to the current schema and returns a Store over it. The caller keeps ownership of db.
func New(ctx context.Context, db *sqldb.DB, opts ...Option) (*Store, error) {
	sub, err := fs.Sub(migrations, "migrations")
	if err != nil {
		return nil, fmt.Errorf("orchestrator store: %w", err)
	}
	db = db.Component(sqldb.OrchestratorComponent)
	// River's tables, types and functions move too: the engine's River client works in the same schema.
	if err := db.Migrate(ctx, "orchestrator", sub, "blueprints", "blueprint_versions", "runs(blueprint)", "run_steps", "run_events", "river_%"); err != nil {
		return nil, fmt.Errorf("orchestrator store: %w", err)
	}
	s := &Store{db: db, now: time.Now, logger: slog.Default()}
	for _, o := range opts {
		o(s)
	}
	return s, nil
}

// CreateBlueprint implements orchestrator.Store.
func (s *Store) CreateBlueprint(ctx context.Context, tenant string, bp *orchestratorv1.Blueprint) (*orchestratorv1.Blueprint, error) {
	var out *orchestratorv1.Blueprint
	err := s.inTx(ctx, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, s.db.Rebind(
			`INSERT INTO loom.blueprints (tenant, name, latest_version) VALUES (?, ?, 1) ON CONFLICT DO NOTHING`),
			tenant, bp.GetName())
		if err != nil {
			return err
		}
		if n, err := res.RowsAffected(); err != nil {
			return err
		} else if n == 0 {
			return fmt.Errorf("blueprint %q: %w", bp.GetName(), orchestrator.ErrAlreadyExists)
		}
		out, err = s.insertVersion(ctx, tx, tenant, bp, 1)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("create blueprint: %w", err)
	}
	return out, nil
}

// UpdateBlueprint implements orchestrator.Store.
func (s *Store) UpdateBlueprint(ctx context.Context, tenant string, bp *orchestratorv1.Blueprint, expectedVersion int64) (*orchestratorv1.Blueprint, error) {
	var out *orchestratorv1.Blueprint
	err := s.inTx(ctx, func(tx *sql.Tx) error {
		// The UPDATE locks the row, so concurrent updates serialise and versions never collide.
		var version int64
		err := tx.QueryRowContext(ctx, s.db.Rebind(
			`UPDATE loom.blueprints SET latest_version = latest_version + 1
			 WHERE tenant = ? AND name = ? AND (? = 0 OR latest_version = ?)
			 RETURNING latest_version`),
			tenant, bp.GetName(), expectedVersion, expectedVersion).Scan(&version)
		if errors.Is(err, sql.ErrNoRows) {
			var latest int64
			err := tx.QueryRowContext(ctx, s.db.Rebind(
				`SELECT latest_version FROM loom.blueprints WHERE tenant = ? AND name = ?`), tenant, bp.GetName()).Scan(&latest)
			if errors.Is(err, sql.ErrNoRows) {
				return fmt.Errorf("blueprint %q: %w", bp.GetName(), orchestrator.ErrNotFound)
			}
			if err != nil {
				return err
			}
			return fmt.Errorf("blueprint %q is at version %d, not %d: %w", bp.GetName(), latest, expectedVersion, orchestrator.ErrConflict)
		}
		if err != nil {
			return err
		}
		out, err = s.insertVersion(ctx, tx, tenant, bp, version)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("update blueprint: %w", err)
	}
	return out, nil
}

func (s *Store) insertVersion(ctx context.Context, tx *sql.Tx, tenant string, bp *orchestratorv1.Blueprint, version int64) (*orchestratorv1.Blueprint, error) {
	stored := proto.Clone(bp).(*orchestratorv1.Blueprint)
	stored.Version, stored.CreateTime = 0, nil
	def, err := proto.MarshalOptions{Deterministic: true}.Marshal(stored)
	if err != nil {
		return nil, err
	}
	created := s.now().UTC().Truncate(time.Microsecond)
	if _, err := tx.ExecContext(ctx, s.db.Rebind(
		`INSERT INTO loom.blueprint_versions (tenant, name, version, definition, create_time) VALUES (?, ?, ?, ?, ?)`),
		tenant, bp.GetName(), version, def, created.UnixMicro()); err != nil {
		return nil, err
	}
	stored.Version, stored.CreateTime = version, timestamppb.New(created)
	return stored, nil
}

// GetBlueprint implements orchestrator.Store.
func (s *Store) GetBlueprint(ctx context.Context, tenant, name string, version int64) (*orchestratorv1.Blueprint, error) {
	var row *sql.Row
	if version == 0 {
		row = s.db.QueryRowContext(ctx, s.db.Rebind(
			`SELECT v.version, v.definition, v.create_time FROM loom.blueprints b
			 JOIN loom.blueprint_versions v ON v.tenant = b.tenant AND v.name = b.name AND v.version = b.latest_version
			 WHERE b.tenant = ? AND b.name = ?`), tenant, name)
	} else {
		row = s.db.QueryRowContext(ctx, s.db.Rebind(
			`SELECT version, definition, create_time FROM loom.blueprint_versions
			 WHERE tenant = ? AND name = ? AND version = ?`), tenant, name, version)
	}
	bp, err := scanBlueprint(row)
	if errors.Is(err, sql.ErrNoRows) {
		if version == 0 {
			return nil, fmt.Errorf("get blueprint %q: %w", name, orchestrator.ErrNotFound)
		}
		return nil, fmt.Errorf("get blueprint %q version %d: %w", name, version, orchestrator.ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("get blueprint: %w", err)
	}
	return bp, nil
}

// ListBlueprints implements orchestrator.Store.
func (s *Store) ListBlueprints(ctx context.Context, tenant string, pageSize int, pageToken string) ([]*orchestratorv1.Blueprint, string, error) {
	pageSize = max(pageSize, 1)
	after := "" // the last name of the previous page
	if err := pagetoken.Decode("blueprints", pageToken, &after); err != nil {
		return nil, "", fmt.Errorf("list blueprints: %w", orchestrator.ErrInvalidPageToken)
	}
	rows, err := s.db.QueryContext(ctx, s.db.Rebind(
		`SELECT b.name, v.version, v.definition, v.create_time FROM loom.blueprints b
		 JOIN loom.blueprint_versions v ON v.tenant = b.tenant AND v.name = b.name AND v.version = b.latest_version
		 WHERE b.tenant = ? AND b.name > ?
		 ORDER BY b.name
		 LIMIT ?`), tenant, after, pageSize+1)
	if err != nil {
		return nil, "", fmt.Errorf("list blueprints: %w", err)
	}
	defer rows.Close()
	// A row that cannot be decoded is skipped with a logged error, so one bad record never takes the whole list
	// down; DeleteBlueprint still removes it. Pages are cut on the rows read, decodable or not.
	var out []*orchestratorv1.Blueprint
	next, err := sqldb.ReadPage(rows, pageSize, "blueprints", func(rows *sql.Rows) (string, error) {
		var name string
		var version, created int64
		var def []byte
		if err := rows.Scan(&name, &version, &def, &created); err != nil {
			return "", err
		}
		bp := &orchestratorv1.Blueprint{}
		if err := proto.Unmarshal(def, bp); err != nil {
			s.logger.ErrorContext(ctx, "orchestrator store: list blueprints skips an undecodable blueprint", "tenant", tenant, "blueprint", name, "version", version, "err", err)
			return name, nil
		}
		bp.Version, bp.CreateTime = version, timestamppb.New(time.UnixMicro(created))
		out = append(out, bp)
		return name, nil
	})
	if err != nil {
		return nil, "", fmt.Errorf("list blueprints: %w", err)
	}
	return out, next, nil
}

// DeleteBlueprint implements orchestrator.Store.
func (s *Store) DeleteBlueprint(ctx context.Context, tenant, name string) error {
	err := s.inTx(ctx, func(tx *sql.Tx) error {
		// Versions first: the cascade is declared, but deleting explicitly does not depend on SQLite's
		// foreign_keys pragma.
		if _, err := tx.ExecContext(ctx, s.db.Rebind(
			`DELETE FROM loom.blueprint_versions WHERE tenant = ? AND name = ?`), tenant, name); err != nil {
			return err
		}
		res, err := tx.ExecContext(ctx, s.db.Rebind(`DELETE FROM loom.blueprints WHERE tenant = ? AND name = ?`), tenant, name)
		if err != nil {
			return err
		}
		if n, err := res.RowsAffected(); err != nil {
			return err
		} else if n == 0 {
			return fmt.Errorf("blueprint %q: %w", name, orchestrator.ErrNotFound)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("delete blueprint: %w", err)
	}
	return nil
}

type scanner interface{ Scan(dest ...any) error }

func scanBlueprint(row scanner) (*orchestratorv1.Blueprint, error) {
	var (
		version int64
		def     []byte
		created int64
	)
	if err := row.Scan(&version, &def, &created); err != nil {
		return nil, err
	}
	bp := &orchestratorv1.Blueprint{}
	if err := proto.Unmarshal(def, bp); err != nil {
		return nil, fmt.Errorf("decode blueprint: %w", err)
	}
	bp.Version, bp.CreateTime = version, timestamppb.New(time.UnixMicro(created))
	return bp, nil
}

func (s *Store) inTx(ctx context.Context, fn func(*sql.Tx) error) error {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	if err := fn(tx); err != nil {
		_ = tx.Rollback()
		return err
	}
	return tx.Commit()
}
