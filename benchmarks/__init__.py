"""Hand-run benchmarks of lmeval-trio (see README "Benchmarks").

Run one with ``uv run python -m benchmarks.<name>`` (``dispatch``, ``handoff``, ``flood``,
``api``, ``startup``, ``lm_eval_start``) or all with ``python benchmarks/run_all.py``. Each
prints median and worst of repeated runs, the targets and whether they are met, then one
``JSON:`` line with the whole report. They measure the server as a real hypercorn subprocess
(the README's launch command), with the client in this process.
"""
