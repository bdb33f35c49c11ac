-- +goose Up
-- The run lease: one replica owns an unfinished run at a time and executes it in memory (orchestrator/engine).
-- owner is the replica id ('' when nobody owns it), lease_until when its lease lapses unless heartbeated, and
-- due_time when an unowned run next needs an owner (0: now); request_hash identifies the StartRun request of an
-- idempotency key.
ALTER TABLE runs ADD COLUMN owner TEXT NOT NULL DEFAULT '';
ALTER TABLE runs ADD COLUMN lease_until BIGINT NOT NULL DEFAULT 0;
ALTER TABLE runs ADD COLUMN due_time BIGINT NOT NULL DEFAULT 0;
ALTER TABLE runs ADD COLUMN request_hash TEXT NOT NULL DEFAULT '';
-- Claims look for unfinished runs whose lease has lapsed: owned runs are outside the range scanned.
CREATE INDEX runs_claim ON runs (lease_until, due_time) WHERE end_time = 0;
CREATE INDEX runs_owner ON runs (owner) WHERE end_time = 0;

-- +goose Down
DROP INDEX runs_owner;
DROP INDEX runs_claim;
ALTER TABLE runs DROP COLUMN request_hash;
ALTER TABLE runs DROP COLUMN due_time;
ALTER TABLE runs DROP COLUMN lease_until;
ALTER TABLE runs DROP COLUMN owner;
