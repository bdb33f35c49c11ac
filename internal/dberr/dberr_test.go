package dberr_test

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/loom-dev/loom/internal/dberr"
)

func TestUnavailable(t *testing.T) {
	t.Parallel()
	// A real connection failure from pgx: nothing listens on port 1.
	_, connErr := pgx.Connect(context.Background(), "postgres://u:p@127.0.0.1:1/db?connect_timeout=1")
	tests := []struct {
		name string
		err  error
		want bool
	}{
		{name: "nil", err: nil},
		{name: "connection refused", err: connErr, want: true},
		{name: "admin shutdown", err: fmt.Errorf("get: %w", &pgconn.PgError{Code: "57P01"}), want: true},
		{name: "connection exception", err: &pgconn.PgError{Code: "08006"}, want: true},
		{name: "too many connections", err: &pgconn.PgError{Code: "53300"}, want: true},
		{name: "unique violation", err: &pgconn.PgError{Code: "23505"}},
		{name: "syntax error", err: &pgconn.PgError{Code: "42601"}},
		{name: "no rows", err: pgx.ErrNoRows},
		{name: "plain", err: errors.New("boom")},
	}
	for _, tt := range tests {
		if got := dberr.Unavailable(tt.err); got != tt.want {
			t.Errorf("%s: Unavailable(%v) = %v, want %v", tt.name, tt.err, got, tt.want)
		}
	}
}
