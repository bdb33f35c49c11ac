package sqldb

import "github.com/loom-dev/loom/internal/pagetoken"

// Rows is what [ReadPage] reads: *sql.Rows, or pgx's rows behind a driver-neutral interface.
type Rows interface {
	Next() bool
	Err() error
}

// ReadPage reads one page of a keyset-paginated listing from rows, the result of a query for at most pageSize+1
// rows in key order (LIMIT pageSize+1). It calls read on each of the first pageSize rows; read scans the row,
// keeps what it holds, and returns the row's key. A row read cannot decode is the caller's to skip (and log)
// while still returning its key: pages are cut on the rows read, decodable or not, so a skipped row never ends
// a listing early. When a row follows the page, next is the token of the next page, pagetoken.Encode(kind, the
// page's last key), which starts after it; otherwise next is "". An error from read or from rows ends the page.
// ReadPage does not close rows.
func ReadPage[R Rows, K any](rows R, pageSize int, kind string, read func(rows R) (key K, err error)) (next string, err error) {
	var last K
	n := 0
	for rows.Next() {
		if n == pageSize {
			return pagetoken.Encode(kind, last), rows.Err()
		}
		key, err := read(rows)
		if err != nil {
			return "", err
		}
		last, n = key, n+1
	}
	return "", rows.Err()
}
