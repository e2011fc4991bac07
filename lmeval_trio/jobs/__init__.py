"""What a job is: its record, its statuses and their transitions, its progress (no I/O)."""
