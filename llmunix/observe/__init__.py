"""Observability: the event log, the audit trail, structured logging and secrets redaction."""
