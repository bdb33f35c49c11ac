-- +goose Up
CREATE TABLE authn_api_keys (
    id          TEXT PRIMARY KEY,
    tenant      TEXT NOT NULL,
    name        TEXT NOT NULL,
    roles       TEXT NOT NULL,
    secret_hash BLOB NOT NULL,
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER,
    revoked_at  INTEGER
);
CREATE INDEX authn_api_keys_tenant ON authn_api_keys (tenant, created_at);

-- +goose Down
DROP TABLE authn_api_keys;
