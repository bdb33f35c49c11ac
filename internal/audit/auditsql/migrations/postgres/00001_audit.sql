-- +goose Up
CREATE TABLE audit_events (
    id         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant     TEXT NOT NULL,
    time_ms    BIGINT NOT NULL,
    subject    TEXT NOT NULL,
    procedure  TEXT NOT NULL,
    resource   TEXT NOT NULL,
    result     TEXT NOT NULL
);
CREATE INDEX audit_events_tenant ON audit_events (tenant, id);

-- +goose Down
DROP TABLE audit_events;
