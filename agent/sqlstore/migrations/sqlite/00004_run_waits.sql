-- +goose Up
-- A run waiting for client tool results (runs.state 5, RUN_STATE_WAITING_FOR_TOOLS) holds no lease: its saved
-- state (the conversation so far and the results submitted, encoded by the agent service and opaque here) waits
-- in this table until the run resumes, ends, or its deadline (unix nanoseconds) passes. version counts the
-- changes of state, for compare-and-set.
CREATE TABLE run_waits (
    tenant   TEXT   NOT NULL,
    run_id   TEXT   NOT NULL,
    deadline INTEGER NOT NULL,
    version  INTEGER NOT NULL,
    state    BLOB  NOT NULL,
    PRIMARY KEY (tenant, run_id)
);
CREATE INDEX run_waits_deadline ON run_waits (deadline);

-- +goose Down
DROP TABLE run_waits;
