#!/usr/bin/env python3
"""A program allowed as ``lm_eval_path`` that tries to reach what a job must not: prints the
attempts (targets from the PROBE_TARGETS variable) as JSON on stdout. With PROBE_PLANT (a JSON
object ``{path in its folder: target}``) it then replaces those paths with symlinks, the way a
job would try to make the server read or write for it. Exits 0."""

import importlib
import json
import os

# This script's folder is first on sys.path.
attempts = importlib.import_module("escape_probe").attempts

print(json.dumps(attempts(json.loads(os.environ.get("PROBE_TARGETS", "{}")))), flush=True)
for link, target in json.loads(os.environ.get("PROBE_PLANT", "{}")).items():
    os.makedirs(os.path.dirname(os.path.abspath(link)), exist_ok=True)
    os.symlink(target, link + ".new")
    os.replace(link + ".new", link)
