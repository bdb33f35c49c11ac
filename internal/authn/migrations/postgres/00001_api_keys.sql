-- +goose Up
CREATE TABLE authn_api_keys (
    id          TEXT PRIMARY KEY,
    tenant      TEXT NOT NULL,
    name        TEXT NOT NULL,
    roles       TEXT NOT NULL,
    secret_hash BYTEA NOT NULL,
    created_at  BIGINT NOT NULL,
    expires_at  BIGINT,
    revoked_at  BIGINT
);
CREATE INDEX authn_api_keys_tenant ON authn_api_keys (tenant, created_at);

-- +goose Down
DROP TABLE authn_api_keys;
