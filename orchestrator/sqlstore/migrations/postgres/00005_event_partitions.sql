-- +goose Up
-- Run events partitioned by time: run_events becomes a table partitioned by range of event_time (Unix
-- microseconds, the event's time, never before its run's create_time), one partition per UTC day
-- (run_events_YYYYMMDD), created ahead by the engine (orchestrator/engine: MaintainEvents). Retention drops
-- whole partitions.
--
-- The events already stored are not copied: the table that holds them becomes the partition run_events_upgraded,
-- covering every time up to the end of the UTC day of this migration, with event_time set to the time of the
-- migration (a constant default: no rewrite; attaching it reads the table once and builds its index). Every
-- stored event is older than that, and not older than its run's creation, as event_time promises.
--
-- The primary key includes event_time, as a partitioned table's must; (run_id, sequence) stays unique because
-- the engine allocates sequences from runs.last_sequence in the transaction that inserts them. The foreign key to
-- runs is dropped: DeleteRun deletes a run's events itself, and a key would make dropping a partition lock runs.
ALTER TABLE run_events RENAME TO run_events_upgraded;
ALTER TABLE run_events_upgraded DROP CONSTRAINT IF EXISTS run_events_run_id_fkey;
ALTER TABLE run_events_upgraded DROP CONSTRAINT IF EXISTS run_events_pkey;

-- +goose StatementBegin
DO $$
DECLARE
    now_us   BIGINT := (extract(epoch FROM clock_timestamp()) * 1000000)::BIGINT;
    day_us   BIGINT := 86400000000;
    upper_us BIGINT := (now_us / day_us + 1) * day_us;
BEGIN
    EXECUTE format('ALTER TABLE run_events_upgraded ADD COLUMN event_time BIGINT NOT NULL DEFAULT %s', now_us);
    -- Writers of the release before this one insert without event_time: the parent's default routes them.
    CREATE TABLE run_events (
        run_id     TEXT   NOT NULL,
        sequence   BIGINT NOT NULL,
        event      BYTEA  NOT NULL, -- loom.orchestrator.v1.WatchRunResponse, binary
        event_time BIGINT NOT NULL DEFAULT (extract(epoch FROM clock_timestamp()) * 1000000)::BIGINT,
        PRIMARY KEY (run_id, sequence, event_time)
    ) PARTITION BY RANGE (event_time);
    EXECUTE format('ALTER TABLE run_events ATTACH PARTITION run_events_upgraded FOR VALUES FROM (MINVALUE) TO (%s)', upper_us);
END
$$;
-- +goose StatementEnd

-- +goose Down
CREATE TABLE run_events_unpartitioned (
    run_id   TEXT   NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    sequence BIGINT NOT NULL,
    event    BYTEA  NOT NULL,
    PRIMARY KEY (run_id, sequence)
);
INSERT INTO run_events_unpartitioned (run_id, sequence, event)
    SELECT e.run_id, e.sequence, e.event FROM run_events e WHERE EXISTS (SELECT 1 FROM runs r WHERE r.id = e.run_id);
DROP TABLE run_events;
ALTER TABLE run_events_unpartitioned RENAME TO run_events;
ALTER TABLE run_events RENAME CONSTRAINT run_events_unpartitioned_pkey TO run_events_pkey;
ALTER TABLE run_events RENAME CONSTRAINT run_events_unpartitioned_run_id_fkey TO run_events_run_id_fkey;
