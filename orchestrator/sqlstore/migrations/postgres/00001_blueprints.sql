-- +goose Up
CREATE TABLE blueprints (
    tenant         TEXT   NOT NULL,
    name           TEXT   NOT NULL,
    latest_version BIGINT NOT NULL,
    PRIMARY KEY (tenant, name)
);

CREATE TABLE blueprint_versions (
    tenant      TEXT   NOT NULL,
    name        TEXT   NOT NULL,
    version     BIGINT NOT NULL,
    definition  BYTEA  NOT NULL, -- loom.orchestrator.v1.Blueprint, binary, without version and create_time
    create_time BIGINT NOT NULL, -- Unix microseconds
    PRIMARY KEY (tenant, name, version),
    FOREIGN KEY (tenant, name) REFERENCES blueprints (tenant, name) ON DELETE CASCADE
);

-- +goose Down
DROP TABLE blueprint_versions;
DROP TABLE blueprints;
