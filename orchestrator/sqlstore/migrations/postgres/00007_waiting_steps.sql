-- +goose Up
-- Only waiting approval steps (state 3, STEP_STATE_WAITING) are looked up by state (ListPendingApprovals, the
-- pending-approvals gauge): a partial index on them is not touched when a step starts or finishes, which takes
-- one or two index pages out of every step's commit. Queries name the state as a literal so the planner can
-- use it.
DROP INDEX run_steps_state;
CREATE INDEX run_steps_waiting ON run_steps (start_time) WHERE state = 3;

-- +goose Down
DROP INDEX run_steps_waiting;
CREATE INDEX run_steps_state ON run_steps (state, start_time);
