package sqldb

// Rows is what [ReadPage] reads: *sql.Rows, or pgx's rows behind a driver-neutral interface.
type Rows interface {
	Next() bool
	Err() error
}

// ReadPage reads one page of a keyset-paginated listing from rows, the result of a query for at most pageSize+1
// rows in key order (LIMIT pageSize+1). It calls read on each of the first pageSize rows; read scans the row,
// keeps what it holds, and returns the row's key. A row read cannot decode is the caller's to skip (and log)
// while still returning its key: pages are cut on the rows read, decodable or not, so a skipped row never ends
// a listing early. When a row follows the page, more is true and last is the key of the page's last row (the
// next page starts after it); otherwise last is K's zero value. An error from read or from rows ends the page.
// ReadPage does not close rows.
func ReadPage[R Rows, K any](rows R, pageSize int, read func(rows R) (key K, err error)) (last K, more bool, err error) {
	var zero K
	n := 0
	for rows.Next() {
		if n == pageSize {
			more = true
			break
		}
		key, err := read(rows)
		if err != nil {
			return zero, false, err
		}
		last, n = key, n+1
	}
	if err := rows.Err(); err != nil {
		return zero, false, err
	}
	if !more {
		last = zero
	}
	return last, more, nil
}
