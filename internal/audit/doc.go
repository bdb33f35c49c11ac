// Package audit records the audit trail: one event per mutating RPC (who, tenant, procedure, resource, result,
// time), recorded by a server interceptor into an Appender (internal/audit/auditsql keeps them in the database)
// and read by admins through AdminService.ListAuditEvents.
//
// Events never carry request bodies, so no secret reaches the trail. This package holds no storage, so the RPC
// server that installs the interceptor does not depend on the SQL layer.
package audit
