-- +goose Up
-- MCP servers registered by a tenant's admins: agentv1.McpServer, protobuf binary, header values included (they
-- are never returned by the service), and when it was last put (unix nanoseconds).
CREATE TABLE mcp_servers (
    tenant      TEXT   NOT NULL,
    name        TEXT   NOT NULL,
    spec        BYTEA  NOT NULL,
    update_time BIGINT NOT NULL,
    PRIMARY KEY (tenant, name)
);

-- +goose Down
DROP TABLE mcp_servers;
