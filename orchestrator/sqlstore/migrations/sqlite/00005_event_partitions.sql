-- +goose Up
-- The time of each run event (Unix microseconds, never before its run's create_time), for retention, which on
-- SQLite deletes old events in batches (Postgres partitions the table by it instead). Events already stored take
-- their run's end time, or its creation time while it runs: never before the run's creation.
ALTER TABLE run_events ADD COLUMN event_time INTEGER NOT NULL DEFAULT 0;
UPDATE run_events SET event_time = COALESCE((SELECT CASE WHEN r.end_time > 0 THEN r.end_time ELSE r.create_time END
    FROM runs r WHERE r.id = run_events.run_id), 0);
CREATE INDEX run_events_time ON run_events (event_time);

-- +goose Down
DROP INDEX run_events_time;
ALTER TABLE run_events DROP COLUMN event_time;
