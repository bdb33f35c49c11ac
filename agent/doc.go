// Package agent is the domain of Loom's agent service: versioned agents, and runs of them. A run is a loop of
// memory retrieval, model calls and tool calls, bounded by budgets, persisted with its steps and token usage.
//
// The package holds the [Store] interface its backend implements (agent/sqlstore, SQLite or Postgres), the
// sentinel errors stores and the handler return, the usage sums stores aggregate ([UsageSum], [OwnUsage]) and the
// rules that are not the contract's: update masks ([ApplyMask]), the JSON Schema of tool parameters
// ([ValidateArgs], [CheckParameters]), the save-time rules of an agent and its tools ([CheckAgent], [CheckVoice],
// [CheckWebhook], [CheckMCP], [CheckClientTool], [ToolName]) and the signature of webhook calls ([SignWebhook],
// [VerifyWebhook]). The generated types (loom.agent.v1) are its model. It imports no
// transport: the Connect handler is agent/agentrpc, which reads the caller's tenant, runs the agents and maps
// errors to connect codes.
package agent
