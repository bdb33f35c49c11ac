// Package memory is the domain of Loom's memory service: semantic memory for agents. Namespaces hold records
// (text, a vector, typed metadata, an optional expiry) searched by vector similarity, optionally filtered by
// metadata and fused with full-text ranking (hybrid search).
//
// The package holds the types, the Store interface its backends implement (memory/localstore, the embedded
// default, and memory/pgstore, PostgreSQL + pgvector), the sentinel errors, the filter semantics and the rules
// the contract (proto/loom/memory/v1/memory.proto, enforced by protovalidate) cannot express. It imports no
// transport and no generated code: the Connect handler is memory/memoryrpc, which converts between the
// contract's messages and these types. Every Store call is scoped to a tenant the caller passes explicitly.
package memory
