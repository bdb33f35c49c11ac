// Package orchestrator is the domain of Loom's orchestrator service: it stores versioned workflow blueprints,
// validates them, lays them out as canvases for visual editors and runs them durably.
//
// The package holds the [Store] interface its backend implements (orchestrator/sqlstore, SQLite or Postgres),
// the [Runs] interface of the run engine (orchestrator/engine), and the sentinel errors both return. The
// generated types (loom.orchestrator.v1) are its model. Blueprints are parsed and validated by [blueprint] and
// laid out by [canvas]. It imports no transport: the Connect handler is orchestrator/orchestratorrpc, which
// reads the caller's tenant, calls these interfaces and maps their errors to connect codes.
//
// [blueprint]: github.com/loom-dev/loom/orchestrator/blueprint
// [canvas]: github.com/loom-dev/loom/orchestrator/canvas
package orchestrator
