"""The engine: the supervisor and the parts it delegates to (admission, dispatch, execution,
recovery, retention), each one concern of a job's life, and the read model of its jobs."""
