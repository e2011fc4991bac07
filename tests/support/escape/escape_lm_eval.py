#!/usr/bin/env python3
"""A program allowed as ``lm_eval_path`` that tries to reach what a job must not: prints the
attempts (targets from the PROBE_TARGETS variable) as JSON on stdout, exits 0."""

import importlib
import json
import os

# This script's folder is first on sys.path.
attempts = importlib.import_module("escape_probe").attempts

print(json.dumps(attempts(json.loads(os.environ["PROBE_TARGETS"]))), flush=True)
