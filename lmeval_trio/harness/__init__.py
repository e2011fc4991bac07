"""Every touch of lm-eval's internals (see the table in the package docs once merged)."""
