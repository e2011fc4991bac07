"""What a job leaves behind: its logs, results and artifacts."""
