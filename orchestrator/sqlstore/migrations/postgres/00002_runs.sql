-- +goose Up
-- Durable runs. Written by orchestrator/engine inside the transactions that also insert River jobs.
CREATE TABLE runs (
    id                TEXT    PRIMARY KEY,
    tenant            TEXT    NOT NULL,
    blueprint         TEXT    NOT NULL,
    blueprint_version BIGINT NOT NULL,
    definition        BYTEA    NOT NULL, -- the pinned loom.orchestrator.v1.Blueprint, binary
    state             BIGINT NOT NULL, -- loom.orchestrator.v1.RunState
    input             BYTEA    NOT NULL, -- google.protobuf.Struct, binary
    output            BYTEA    NOT NULL, -- google.protobuf.Value, binary; empty until succeeded
    error             TEXT    NOT NULL DEFAULT '',
    idempotency_key   TEXT    NOT NULL DEFAULT '',
    create_time       BIGINT NOT NULL, -- Unix microseconds
    end_time          BIGINT NOT NULL DEFAULT 0,
    last_sequence     BIGINT NOT NULL DEFAULT 0
);
CREATE UNIQUE INDEX runs_idempotency ON runs (tenant, idempotency_key) WHERE idempotency_key <> '';
CREATE INDEX runs_tenant_time ON runs (tenant, create_time DESC, id DESC);

CREATE TABLE run_steps (
    run_id     TEXT    NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    step_id    TEXT    NOT NULL,
    position   BIGINT NOT NULL, -- index in the blueprint
    state      BIGINT NOT NULL, -- loom.orchestrator.v1.StepState
    attempts   BIGINT NOT NULL DEFAULT 0,
    failures   BIGINT NOT NULL DEFAULT 0, -- recorded failed attempts; part of agent idempotency keys
    output     BYTEA    NOT NULL, -- google.protobuf.Value, binary; empty until finished
    error      TEXT    NOT NULL DEFAULT '',
    start_time BIGINT NOT NULL DEFAULT 0,
    end_time   BIGINT NOT NULL DEFAULT 0,
    deadline   BIGINT NOT NULL DEFAULT 0, -- approvals: when the wait expires
    job_id     BIGINT NOT NULL DEFAULT 0, -- latest River job of the step
    PRIMARY KEY (run_id, step_id)
);
CREATE INDEX run_steps_state ON run_steps (state, start_time);

-- Append-only; sequence is gap-free per run (allocated from runs.last_sequence in the same transaction).
CREATE TABLE run_events (
    run_id   TEXT    NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    sequence BIGINT NOT NULL,
    event    BYTEA    NOT NULL, -- loom.orchestrator.v1.WatchRunResponse, binary
    PRIMARY KEY (run_id, sequence)
);

-- +goose Down
DROP TABLE run_events;
DROP TABLE run_steps;
DROP TABLE runs;
