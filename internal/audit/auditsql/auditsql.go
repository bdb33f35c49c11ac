// Package auditsql keeps the audit trail in the database: an append-only table (SQLite or Postgres, in the admin
// component's schema) of the events internal/audit's interceptor records, read by admins through
// AdminService.ListAuditEvents. The store has no update or delete: events are only ever appended.
package auditsql

import (
	"context"
	"database/sql"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"time"

	"github.com/loom-dev/loom/internal/audit"
	"github.com/loom-dev/loom/internal/pagetoken"
	"github.com/loom-dev/loom/internal/sqldb"
)

//go:embed migrations
var migrations embed.FS

// ErrInvalidPageToken is returned for a page token the store did not issue.
var ErrInvalidPageToken = errors.New("invalid page token")

// Store appends and lists events. It is safe for concurrent use.
type Store struct {
	db *sqldb.DB
}

// Open migrates db and returns a store over it.
func Open(ctx context.Context, db *sqldb.DB) (*Store, error) {
	sub, err := fs.Sub(migrations, "migrations")
	if err != nil {
		return nil, err
	}
	db = db.Component(sqldb.AdminComponent)
	if err := db.Migrate(ctx, "audit", sub, "audit_events"); err != nil {
		return nil, err
	}
	return &Store{db: db}, nil
}

// Append records e; the store assigns its sequence number.
func (s *Store) Append(ctx context.Context, e audit.Event) error {
	_, err := s.db.ExecContext(ctx, s.db.Rebind(`INSERT INTO loom.audit_events (tenant, time_ms, subject, procedure, resource, result)
		VALUES (?, ?, ?, ?, ?, ?)`), e.Tenant, e.Time.UnixMilli(), e.Subject, e.Procedure, e.Resource, e.Result)
	if err != nil {
		return fmt.Errorf("append audit event: %w", err)
	}
	return nil
}

// List returns tenant's events newest first, a page at a time.
func (s *Store) List(ctx context.Context, tenant string, pageSize int, pageToken string) ([]audit.Event, string, error) {
	before := int64(1<<63 - 1) // the sequence number of the previous page's last event
	if err := pagetoken.Decode("audit", pageToken, &before); err != nil || before <= 0 {
		return nil, "", ErrInvalidPageToken
	}
	rows, err := s.db.QueryContext(ctx, s.db.Rebind(`SELECT id, time_ms, subject, procedure, resource, result
		FROM loom.audit_events WHERE tenant = ? AND id < ? ORDER BY id DESC LIMIT ?`), tenant, before, pageSize+1)
	if err != nil {
		return nil, "", fmt.Errorf("list audit events: %w", err)
	}
	defer rows.Close()
	var out []audit.Event
	next, err := sqldb.ReadPage(rows, pageSize, "audit", func(rows *sql.Rows) (int64, error) {
		e := audit.Event{Tenant: tenant}
		var ms int64
		if err := rows.Scan(&e.Seq, &ms, &e.Subject, &e.Procedure, &e.Resource, &e.Result); err != nil {
			return 0, err
		}
		e.Time = time.UnixMilli(ms).UTC()
		out = append(out, e)
		return e.Seq, nil
	})
	if err != nil {
		return nil, "", fmt.Errorf("list audit events: %w", err)
	}
	return out, next, nil
}
