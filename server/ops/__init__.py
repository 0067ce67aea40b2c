"""Operating the server: settings, Prometheus metrics, the audit log, the event-loop lag monitor."""
