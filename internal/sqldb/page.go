package sqldb

import "database/sql"

// ReadPage reads one page of a keyset-paginated listing from rows, the result of a query for at most pageSize+1
// rows in key order (LIMIT pageSize+1). It calls read on each of the first pageSize rows; read scans the row,
// keeps what it holds, and returns the row's key. A row read cannot decode is the caller's to skip (and log)
// while still returning its key: pages are cut on the rows read, decodable or not, so a skipped row never ends
// a listing early. When a row follows the page, more is true and last is the key of the page's last row (the
// next page starts after it); otherwise last is "". An error from read or from rows ends the page. ReadPage
// does not close rows.
func ReadPage(rows *sql.Rows, pageSize int, read func(rows *sql.Rows) (key string, err error)) (last string, more bool, err error) {
	n := 0
	for rows.Next() {
		if n == pageSize {
			more = true
			break
		}
		key, err := read(rows)
		if err != nil {
			return "", false, err
		}
		last, n = key, n+1
	}
	if err := rows.Err(); err != nil {
		return "", false, err
	}
	if !more {
		last = ""
	}
	return last, more, nil
}
