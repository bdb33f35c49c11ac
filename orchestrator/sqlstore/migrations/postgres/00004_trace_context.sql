-- +goose Up
-- The trace context of the StartRun call that created the run: its W3C headers (traceparent, tracestate,
-- baggage) as a JSON object, '' when the call was not traced. The owner of the run, whichever replica it is,
-- traces its steps as spans of that trace.
ALTER TABLE runs ADD COLUMN trace_context TEXT NOT NULL DEFAULT '';

-- +goose Down
ALTER TABLE runs DROP COLUMN trace_context;
