-- +goose Up
CREATE TABLE audit_events (
    tenant     TEXT NOT NULL,
    seq        BIGINT NOT NULL,
    time_ms    BIGINT NOT NULL,
    subject    TEXT NOT NULL,
    procedure  TEXT NOT NULL,
    resource   TEXT NOT NULL,
    result     TEXT NOT NULL,
    PRIMARY KEY (tenant, seq)
);

-- +goose Down
DROP TABLE audit_events;
