-- +goose Up
-- A RUNNING run is leased by the process executing it (owner), which renews lease_until (unix nanoseconds) while
-- it runs. A RUNNING run whose lease has expired was cut off by a crash and is marked FAILED by any replica.
ALTER TABLE runs ADD COLUMN owner TEXT NOT NULL DEFAULT '';
ALTER TABLE runs ADD COLUMN lease_until BIGINT NOT NULL DEFAULT 0;
CREATE INDEX runs_running ON runs (lease_until) WHERE state = 1;

-- +goose Down
DROP INDEX runs_running;
ALTER TABLE runs DROP COLUMN lease_until;
ALTER TABLE runs DROP COLUMN owner;
