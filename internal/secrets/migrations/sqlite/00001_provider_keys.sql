-- +goose Up
CREATE TABLE secrets_provider_keys (
    tenant     TEXT NOT NULL,
    provider   TEXT NOT NULL,
    sealed     BLOB NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (tenant, provider)
);

-- +goose Down
DROP TABLE secrets_provider_keys;
