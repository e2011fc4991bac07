"""lmeval-trio: lm-evaluation-harness jobs served over HTTP on Trio."""
