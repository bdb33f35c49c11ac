-- +goose Up
-- The run's own usage (its model calls, not the runs it delegated to) for GetUsage and tenant budgets, next to
-- input_tokens and output_tokens: cached input tokens, cost in nano-units of the price table's currency, whether
-- some usage could not be priced, the price table version, and the blueprint of the workflow that started it.
-- usage is the rolled-up agentv1.Usage (delegated runs included) shown by GetRun and ListRuns, protobuf binary.
ALTER TABLE runs ADD COLUMN cached_tokens INTEGER NOT NULL DEFAULT 0;
ALTER TABLE runs ADD COLUMN cost_nanos INTEGER NOT NULL DEFAULT 0;
ALTER TABLE runs ADD COLUMN cost_unknown INTEGER NOT NULL DEFAULT 0;
ALTER TABLE runs ADD COLUMN price_version TEXT NOT NULL DEFAULT '';
ALTER TABLE runs ADD COLUMN blueprint TEXT NOT NULL DEFAULT '';
ALTER TABLE runs ADD COLUMN usage BLOB;

-- A tenant's budget (agentv1.TenantBudget, protobuf binary), set by its admins.
CREATE TABLE tenant_budgets (
    tenant      TEXT   NOT NULL PRIMARY KEY,
    budget      BLOB     NOT NULL,
    update_time INTEGER NOT NULL
);

-- +goose Down
DROP TABLE tenant_budgets;
ALTER TABLE runs DROP COLUMN usage;
ALTER TABLE runs DROP COLUMN blueprint;
ALTER TABLE runs DROP COLUMN price_version;
ALTER TABLE runs DROP COLUMN cost_unknown;
ALTER TABLE runs DROP COLUMN cost_nanos;
ALTER TABLE runs DROP COLUMN cached_tokens;
