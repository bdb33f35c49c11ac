-- +goose Up
CREATE TABLE agent_versions (
    tenant      TEXT    NOT NULL,
    name        TEXT    NOT NULL,
    version     INTEGER NOT NULL,
    etag        TEXT    NOT NULL,
    spec        BLOB    NOT NULL, -- agentv1.Agent, protobuf binary, output-only fields cleared
    create_time INTEGER NOT NULL, -- unix nanoseconds: when version 1 was created
    update_time INTEGER NOT NULL, -- unix nanoseconds: when this version was created
    PRIMARY KEY (tenant, name, version)
);

CREATE TABLE runs (
    id              TEXT    NOT NULL PRIMARY KEY,
    tenant          TEXT    NOT NULL,
    agent           TEXT    NOT NULL,
    agent_version   INTEGER NOT NULL,
    state           INTEGER NOT NULL,
    input           TEXT    NOT NULL,
    output          TEXT    NOT NULL DEFAULT '',
    provider        INTEGER NOT NULL DEFAULT 0,
    model           TEXT    NOT NULL DEFAULT '',
    input_tokens    INTEGER NOT NULL DEFAULT 0,
    output_tokens   INTEGER NOT NULL DEFAULT 0,
    error           TEXT    NOT NULL DEFAULT '',
    idempotency_key TEXT,             -- NULL when the run had none
    detail          BLOB,             -- agentv1.Run holding only steps and warnings, protobuf binary
    create_time     INTEGER NOT NULL,
    end_time        INTEGER NOT NULL DEFAULT 0
);
CREATE UNIQUE INDEX runs_idempotency ON runs (tenant, idempotency_key);
CREATE INDEX runs_list ON runs (tenant, create_time DESC, id DESC);
CREATE INDEX runs_agent_list ON runs (tenant, agent, create_time DESC, id DESC);

-- +goose Down
DROP TABLE runs;
DROP TABLE agent_versions;
