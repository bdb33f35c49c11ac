-- +goose Up
-- The catalog of namespaces. Each row owns a records table memory_records_<id>, created and dropped with it.
-- IF NOT EXISTS: databases made before schemas existed had this table (and a hand-rolled migration table,
-- memory_schema_migrations) in public; sqldb.Migrate moves them here first.
CREATE TABLE IF NOT EXISTS memory_namespaces (
    id                bigserial PRIMARY KEY,
    tenant            text        NOT NULL,
    name              text        NOT NULL,
    dimension         int         NOT NULL CHECK (dimension BETWEEN 1 AND 4096),
    metric            int         NOT NULL,
    embedder_provider text        NOT NULL DEFAULT '',
    embedder_model    text        NOT NULL DEFAULT '',
    index_kind        int         NOT NULL,
    m                 int         NOT NULL DEFAULT 0,
    ef_construction   int         NOT NULL DEFAULT 0,
    ef_search         int         NOT NULL DEFAULT 0,
    description       text        NOT NULL DEFAULT '',
    create_time       timestamptz NOT NULL,
    UNIQUE (tenant, name)
);
DROP TABLE IF EXISTS memory_schema_migrations;

-- +goose Down
DROP TABLE memory_namespaces;
