// Package dberr classifies database errors without importing a driver, so that every service maps a database
// that cannot be reached to Unavailable (which clients retry) rather than Internal.
package dberr

import (
	"database/sql/driver"
	"errors"
	"io"
	"net"
	"strings"
	"syscall"
)

// Unavailable reports whether err says the database could not be reached, refused the connection, or dropped
// it (a restart, a failover, too many connections): a fault worth retrying, not a bug. It recognises
// PostgreSQL's SQLSTATE classes through the SQLState method pgx's errors have, pgx's SafeToRetry, and network
// errors.
func Unavailable(err error) bool {
	if err == nil {
		return false
	}
	var pg interface{ SQLState() string }
	if errors.As(err, &pg) {
		code := pg.SQLState()
		// 08: connection exception; 57P01-57P03: admin shutdown, crash shutdown, cannot connect now;
		// 53300: too many connections.
		return strings.HasPrefix(code, "08") || code == "57P01" || code == "57P02" || code == "57P03" || code == "53300"
	}
	var retry interface{ SafeToRetry() bool }
	if errors.As(err, &retry) && retry.SafeToRetry() {
		return true
	}
	var ne net.Error
	return errors.As(err, &ne) || errors.Is(err, driver.ErrBadConn) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
}
