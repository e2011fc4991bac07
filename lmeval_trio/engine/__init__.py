"""The engine: the supervisor and the parts it delegates to, and the read model of its jobs."""
