"""smxcore: the trusted process that owns the realtime database, the history log, the audit log
and the RBAC policy, and serves the gRPC API (docs/CORE.md)."""
