-- +goose Up
-- A step's usage and cost: the orchestratorv1.Usage of the agent runs of all its attempts, protobuf binary; NULL
-- for steps that ran no agent. A run's usage is the sum of its steps'.
ALTER TABLE run_steps ADD COLUMN usage BLOB;
-- The anomaly flag of a finished run (orchestratorv1.Anomaly, protobuf binary); NULL when it is not anomalous.
ALTER TABLE runs ADD COLUMN anomaly BLOB;

-- +goose Down
ALTER TABLE runs DROP COLUMN anomaly;
ALTER TABLE run_steps DROP COLUMN usage;
