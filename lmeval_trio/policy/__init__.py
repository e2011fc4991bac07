"""What a job request may run, set, read and write, and what its secrets are."""
