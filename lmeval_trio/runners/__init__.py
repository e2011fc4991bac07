"""Runners: where a job's command runs (a local process group, a Ray cluster, a scripted fake)."""
