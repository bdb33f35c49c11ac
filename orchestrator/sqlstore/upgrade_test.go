package sqlstore

import (
	"context"
	"io/fs"
	"strings"
	"testing"
	"testing/fstest"
	"time"

	"github.com/loom-dev/loom/internal/sqldb"
	"github.com/loom-dev/loom/internal/sqldb/sqldbtest"
)

// migrationsBefore returns the migrations of both dialects older than version (a five-digit prefix).
func migrationsBefore(t *testing.T, version string) fs.FS {
	t.Helper()
	out := fstest.MapFS{}
	err := fs.WalkDir(migrations, "migrations", func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || d.Name() >= version {
			return err
		}
		b, err := fs.ReadFile(migrations, path)
		out[strings.TrimPrefix(path, "migrations/")] = &fstest.MapFile{Data: b}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// TestUpgradeToPartitionedEvents lays out a database as the release before event partitions did (migrations up
// to 00004), with a finished and an unfinished run and their events, then migrates it: every event is still
// there, in sequence, with an event time not before its run's creation (on Postgres in the partition
// run_events_upgraded), and (Postgres) a writer that does not know event_time still inserts.
func TestUpgradeToPartitionedEvents(t *testing.T) {
	t.Parallel()
	sqldbtest.EachDialect(t, func(t *testing.T, d sqldb.Dialect) {
		t.Parallel()
		ctx := context.Background()
		root := sqldbtest.Open(t, d)
		db := root.Component(sqldb.OrchestratorComponent)
		if err := db.Migrate(ctx, "orchestrator", migrationsBefore(t, "00005")); err != nil {
			t.Fatal(err)
		}
		created := time.Now().Add(-48 * time.Hour).UnixMicro()
		for _, r := range []struct {
			id    string
			ended int64
		}{{"run_done", created + 1000}, {"run_open", 0}} {
			if _, err := db.ExecContext(ctx, db.Rebind(`INSERT INTO loom.runs (id, tenant, blueprint, blueprint_version, definition,
				state, input, output, create_time, end_time, last_sequence) VALUES (?, 't', 'bp', 1, ?, 1, ?, ?, ?, ?, 3)`),
				r.id, []byte{}, []byte{}, []byte{}, created, r.ended); err != nil {
				t.Fatal(err)
			}
			for seq := 1; seq <= 3; seq++ {
				if _, err := db.ExecContext(ctx, db.Rebind(`INSERT INTO loom.run_events (run_id, sequence, event) VALUES (?, ?, ?)`),
					r.id, seq, []byte{byte(seq)}); err != nil {
					t.Fatal(err)
				}
			}
		}

		if _, err := New(ctx, root); err != nil {
			t.Fatal(err)
		}
		rows, err := db.QueryContext(ctx, db.Rebind(`SELECT e.run_id, e.sequence, e.event, e.event_time >= r.create_time
			FROM loom.run_events e JOIN loom.runs r ON r.id = e.run_id ORDER BY e.run_id, e.sequence`))
		if err != nil {
			t.Fatal(err)
		}
		defer rows.Close()
		var got []string
		for rows.Next() {
			var (
				id    string
				seq   int64
				event []byte
				after bool
			)
			if err := rows.Scan(&id, &seq, &event, &after); err != nil {
				t.Fatal(err)
			}
			if !after || len(event) != 1 || int64(event[0]) != seq {
				t.Errorf("event %s/%d after the upgrade: event %x, event_time not before the run: %v", id, seq, event, after)
			}
			got = append(got, id+"/"+string(rune('0'+seq)))
		}
		if err := rows.Err(); err != nil {
			t.Fatal(err)
		}
		if want := "run_done/1 run_done/2 run_done/3 run_open/1 run_open/2 run_open/3"; strings.Join(got, " ") != want {
			t.Errorf("events after the upgrade = %v, want %s", got, want)
		}
		if d != sqldb.Postgres {
			return
		}
		// A replica of the previous release, still running during a rolling upgrade, inserts without event_time
		// (SQLite has no such replica: it serves one process).
		if _, err := db.ExecContext(ctx, db.Rebind(`INSERT INTO loom.run_events (run_id, sequence, event) VALUES (?, 4, ?)`),
			"run_open", []byte{4}); err != nil {
			t.Errorf("insert without event_time after the upgrade: %v", err)
		}
		var partition string
		if err := db.Pool.QueryRow(ctx, db.Rebind(`SELECT DISTINCT tableoid::regclass::text FROM loom.run_events`)).Scan(&partition); err != nil {
			t.Fatal(err)
		}
		if partition != "run_events_upgraded" && !strings.HasSuffix(partition, ".run_events_upgraded") {
			t.Errorf("stored events are in %s, want run_events_upgraded", partition)
		}
	})
}
