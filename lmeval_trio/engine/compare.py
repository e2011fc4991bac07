"""Significance-aware comparison of finished jobs: pure functions over their results and
sample outcomes (no I/O; engine/comparisons.py reads the files).

Per task/metric/filter, each job's value against the baseline's: the difference, a z test
on lm-eval's standard errors (``z = d / sqrt(se_a^2 + se_b^2)``, two-sided ``p``), and the
verdict at ``alpha``. Runs are comparable for a task only when the task version, task hash,
n-shot, ``limit``, chat template, fewshot-as-multiturn, system instruction and sample sets
agree; every difference is listed, and a row of a task with one is never called
significant. With both jobs' samples, a paired comparison per task: documents matched on
``doc_id`` with ``doc_hash`` agreeing, flips counted, and McNemar's exact test for 0/1
metrics.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from lmeval_trio.outputs.results import metrics_table
from lmeval_trio.outputs.sample_outcomes import Outcome, Outcomes

NO_STDERR = "no test: lm-eval reported no standard error for this metric (delta only)"
ZERO_STDERR = "no test: both standard errors are zero (delta only)"
NOT_NUMERIC = "no test: the value is not a number"
NOT_BINARY = "no exact test: not a 0/1 metric"
CORRECT_TO_WRONG = "correct_to_wrong"
WRONG_TO_CORRECT = "wrong_to_correct"


@dataclass(frozen=True)
class Run:
    """One finished job: its id and the results JSON lm-eval wrote."""

    job_id: int
    results: Mapping[str, Any]


def z_test(delta: float, se_a: float, se_b: float) -> tuple[float, float] | None:
    """``(z, two-sided p)`` for a difference of two independent estimates; None when both
    standard errors are zero (no spread to test against)."""
    spread = math.sqrt(se_a**2 + se_b**2)
    if spread == 0:
        return None
    z = delta / spread
    return z, math.erfc(abs(z) / math.sqrt(2))


def mcnemar_exact(correct_to_wrong: int, wrong_to_correct: int) -> float:
    """McNemar's exact two-sided p: the discordant pairs against Binomial(n, 1/2), summed
    exactly in integers (``math.comb``) so large counts lose no precision."""
    n = correct_to_wrong + wrong_to_correct
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(correct_to_wrong, wrong_to_correct) + 1))
    return float(min(Fraction(1), Fraction(2 * tail, 2**n)))


# -- comparability -------------------------------------------------------------------------


def _section(results: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    value = results.get(name)
    return value if isinstance(value, Mapping) else {}


def _chat_template(results: Mapping[str, Any]) -> str:
    """How prompts were templated: lm-eval writes ``chat_template`` None when no template
    was applied, and its sha when one was."""
    if results.get("chat_template") is None:
        return "not applied"
    return f"applied (sha {results.get('chat_template_sha') or 'none'})"


def run_facts(results: Mapping[str, Any]) -> dict[str, Any]:
    """The run-wide settings two runs must share to be compared on any task."""
    return {
        "limit": _section(results, "config").get("limit"),
        "chat_template": _chat_template(results),
        "fewshot_as_multiturn": bool(results.get("fewshot_as_multiturn")),
        "system_instruction": results.get("system_instruction_sha"),
    }


def task_facts(results: Mapping[str, Any], task: str) -> dict[str, Any]:
    """The per-task settings two runs must share (None: not recorded)."""
    n_samples = _section(results, "n-samples").get(task)
    return {
        "version": _section(results, "versions").get(task),
        "n_shot": _section(results, "n-shot").get(task),
        "task_hash": _section(results, "task_hashes").get(task),
        "n_samples": n_samples.get("effective") if isinstance(n_samples, Mapping) else None,
    }


def _subtasks(results: Mapping[str, Any], task: str) -> list[str]:
    """A group's tasks (its own name for a task), from ``group_subtasks``."""
    groups = _section(results, "group_subtasks")
    found = [task]
    for sub in groups.get(task) or []:
        if isinstance(sub, str) and sub != task:
            found.extend(_subtasks(results, sub))
    return found


def pair_mismatches(base: Run, other: Run, tasks: Sequence[str]) -> list[dict[str, Any]]:
    """Every setting in which ``other`` differs from ``base``: run-wide ones (``task``
    None) and per task; a task hash only where both runs logged samples."""
    found = []
    base_run, other_run = run_facts(base.results), run_facts(other.results)
    for kind, value in base_run.items():
        if other_run[kind] != value:
            found.append(_mismatch(other.job_id, None, kind, value, other_run[kind]))
    for task in tasks:
        base_task, other_task = task_facts(base.results, task), task_facts(other.results, task)
        for kind, value in base_task.items():
            theirs = other_task[kind]
            if kind == "task_hash" and (not value or not theirs):
                continue
            if theirs != value:
                found.append(_mismatch(other.job_id, task, kind, value, theirs))
    return found


def _mismatch(job_id: int, task: str | None, kind: str, base: Any, value: Any) -> dict[str, Any]:
    return {"job_id": job_id, "task": task, "kind": kind, "baseline": base, "value": value}


def sample_set_mismatch(
    job_id: int, task: str, base: Outcomes, other: Outcomes
) -> dict[str, Any] | None:
    """A mismatch when the two runs scored different documents (other doc ids, or the same
    ids with other contents), judged on the first filter both logged."""
    shared = [name for name in base if name in other]
    if not shared:
        return None
    a, b = base[shared[0]], other[shared[0]]
    changed = sum(1 for doc_id in a.keys() & b.keys() if a[doc_id].doc_hash != b[doc_id].doc_hash)
    only = len(a.keys() ^ b.keys())
    if not changed and not only:
        return None
    detail = f"{only} doc ids in one run only, {changed} shared ids with other contents"
    return _mismatch(job_id, task, "sample_set", f"{len(a)} docs", f"{len(b)} docs; {detail}")


# -- the comparison ------------------------------------------------------------------------


def compare(
    runs: Sequence[Run],
    baseline: int,
    alpha: float,
    samples: Mapping[tuple[int, str], Outcomes | None] | None = None,
) -> dict[str, Any]:
    """Rows, mismatches and paired comparisons of ``runs`` against ``baseline`` (one of
    them). ``samples`` maps (job id, task) to that job's outcomes, where it logged them."""
    base = next(run for run in runs if run.job_id == baseline)
    others = [run for run in runs if run.job_id != baseline]
    tables = {run.job_id: _rows_by_key(run) for run in runs}
    keys = [k for k in tables[baseline] if any(k in tables[o.job_id] for o in others)]
    tasks = sorted({key[0] for key in keys})
    mismatches: list[dict[str, Any]] = []
    paired: list[dict[str, Any]] = []
    blocked: dict[int, dict[str, list[str]]] = {}
    for other in others:
        found, blocked[other.job_id], pairs = _against(base, other, tasks, samples or {}, alpha)
        mismatches += found
        paired += pairs
    return {
        "jobs": [run.job_id for run in runs],
        "baseline": baseline,
        "alpha": alpha,
        "rows": [_row(key, runs, tables, baseline, alpha, blocked) for key in keys],
        "mismatches": mismatches,
        "pairs": [_pair_summary(o.job_id, baseline, mismatches) for o in others],
        "paired": paired,
    }


def _against(
    base: Run,
    other: Run,
    tasks: Sequence[str],
    samples: Mapping[tuple[int, str], Outcomes | None],
    alpha: float,
) -> tuple[list[dict[str, Any]], dict[str, list[str]], list[dict[str, Any]]]:
    """One job against the baseline: its mismatches (sample sets too, where both logged
    samples), the mismatch kinds blocking each task, and its paired comparisons."""
    found = pair_mismatches(base, other, tasks)
    logged = {}
    for task in tasks:
        a, b = samples.get((base.job_id, task)), samples.get((other.job_id, task))
        if a is not None and b is not None:
            logged[task] = (a, b)
            extra = sample_set_mismatch(other.job_id, task, a, b)
            found += [extra] if extra else []
    blocked = _blocked_tasks(base, found, tasks)
    paired = [
        entry
        for task, (a, b) in logged.items()
        for entry in paired_task(other.job_id, task, a, b, alpha, blocked.get(task, []))
    ]
    return found, blocked, paired


def _rows_by_key(run: Run) -> dict[tuple[str, str, str], dict[str, Any]]:
    return {(m["task"], m["metric"], m["filter"]): m for m in metrics_table(dict(run.results))}


def _blocked_tasks(
    base: Run, found: list[dict[str, Any]], tasks: Sequence[str]
) -> dict[str, list[str]]:
    """task -> the mismatch kinds that make it incomparable (run-wide ones block all; a
    group is blocked by any of its tasks)."""
    run_wide = [m["kind"] for m in found if m["task"] is None]
    blocked: dict[str, list[str]] = {}
    for task in tasks:
        members = set(_subtasks(base.results, task))
        kinds = run_wide + [m["kind"] for m in found if m["task"] in members]
        if kinds:
            blocked[task] = sorted(set(kinds))
    return blocked


def _pair_summary(job_id: int, baseline: int, mismatches: list[dict[str, Any]]) -> dict[str, Any]:
    own = [m for m in mismatches if m["job_id"] == job_id]
    return {
        "job_id": job_id,
        "baseline": baseline,
        "comparable": not own,
        "mismatch_kinds": sorted({m["kind"] for m in own}),
    }


def _row(
    key: tuple[str, str, str],
    runs: Sequence[Run],
    tables: Mapping[int, Mapping[tuple[str, str, str], dict[str, Any]]],
    baseline: int,
    alpha: float,
    blocked: Mapping[int, Mapping[str, list[str]]],
) -> dict[str, Any]:
    base = tables[baseline][key]
    cells = []
    for run in runs:
        metric = tables[run.job_id].get(key)
        if run.job_id == baseline:
            cells.append(_cell(run.job_id, metric))
            continue
        kinds = blocked[run.job_id].get(key[0], [])
        cells.append(_compared(run.job_id, metric, base, alpha, kinds))
    task, metric_name, filter_name = key
    return {
        "task": task,
        "metric": metric_name,
        "filter": filter_name,
        "is_group": bool(base.get("is_group")),
        "jobs": cells,
    }


def _cell(job_id: int, metric: Mapping[str, Any] | None) -> dict[str, Any]:
    return {
        "job_id": job_id,
        "value": None if metric is None else metric["value"],
        "stderr": None if metric is None else metric["stderr"],
        "delta": None,
        "z": None,
        "p_value": None,
        "significant": False,
        "test": None,
        "note": None if metric is not None else "this job has no such metric",
        "mismatches": [],
    }


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _compared(
    job_id: int,
    metric: Mapping[str, Any] | None,
    base: Mapping[str, Any],
    alpha: float,
    kinds: list[str],
) -> dict[str, Any]:
    """One job's cell of a row: delta vs the baseline, the z test where possible, and why
    there is no verdict otherwise."""
    cell = _cell(job_id, metric)
    cell["mismatches"] = kinds
    if metric is None:
        return cell
    value, base_value = _number(metric["value"]), _number(base["value"])
    if value is None or base_value is None:
        cell["note"] = NOT_NUMERIC
        return cell
    cell["delta"] = value - base_value
    se_a, se_b = _number(base["stderr"]), _number(metric["stderr"])
    if se_a is None or se_b is None:
        cell["note"] = NO_STDERR
        return cell
    tested = z_test(cell["delta"], se_a, se_b)
    if tested is None:
        cell["note"] = ZERO_STDERR
        return cell
    cell["z"], cell["p_value"] = tested
    cell["test"] = "z"
    cell["significant"] = tested[1] < alpha and not kinds
    if kinds:
        cell["note"] = "not comparable (" + ", ".join(kinds) + "): never called significant"
    return cell


# -- paired, from samples ------------------------------------------------------------------


def _binary(values: list[float]) -> bool:
    return bool(values) and all(v in (0.0, 1.0) for v in values)


def matched(a: Mapping[int, Outcome], b: Mapping[int, Outcome]) -> list[int]:
    """Doc ids both runs scored with the same document (``doc_hash`` agreeing), in order."""
    return sorted(d for d in a.keys() & b.keys() if a[d].doc_hash == b[d].doc_hash)


def flips(base: Outcomes, other: Outcomes, filter_name: str, metric: str) -> list[dict[str, Any]]:
    """The matched documents whose 0/1 ``metric`` differs, by doc id, with the direction
    (from the baseline to the other run)."""
    a, b = base.get(filter_name, {}), other.get(filter_name, {})
    found = []
    for doc_id in matched(a, b):
        before, after = a[doc_id].metrics.get(metric), b[doc_id].metrics.get(metric)
        if before is None or after is None or before == after:
            continue
        direction = CORRECT_TO_WRONG if before > after else WRONG_TO_CORRECT
        found.append({"doc_id": doc_id, "direction": direction})
    return found


def paired_task(
    job_id: int, task: str, base: Outcomes, other: Outcomes, alpha: float, kinds: list[str]
) -> list[dict[str, Any]]:
    """Per filter and metric of the task: the matched count, flips and McNemar's p."""
    found = []
    for filter_name in [f for f in base if f in other]:
        a, b = base[filter_name], other[filter_name]
        docs = matched(a, b)
        names = sorted(
            {m for d in docs for m in a[d].metrics} & {m for d in docs for m in b[d].metrics}
        )
        for metric in names:
            pairs = [(a[d].metrics.get(metric), b[d].metrics.get(metric)) for d in docs]
            both = [(x, y) for x, y in pairs if x is not None and y is not None]
            entry: dict[str, Any] = {
                "job_id": job_id,
                "task": task,
                "filter": filter_name,
                "metric": metric,
                "matched": len(both),
                "mismatches": kinds,
            }
            if not _binary([v for pair in both for v in pair]):
                entry.update(p_value=None, significant=False, test=None, note=NOT_BINARY)
                found.append(entry)
                continue
            entry.update(_counts(both, alpha, kinds))
            found.append(entry)
    return found


def _counts(both: list[tuple[float, float]], alpha: float, kinds: list[str]) -> dict[str, Any]:
    down = sum(1 for x, y in both if x > y)
    up = sum(1 for x, y in both if x < y)
    p = mcnemar_exact(down, up)
    note = None
    if kinds:
        note = "not comparable (" + ", ".join(kinds) + "): never called significant"
    return {
        "both_correct": sum(1 for x, y in both if x == y == 1.0),
        "both_wrong": sum(1 for x, y in both if x == y == 0.0),
        CORRECT_TO_WRONG: down,
        WRONG_TO_CORRECT: up,
        "p_value": p,
        "significant": p < alpha and not kinds,
        "test": "mcnemar_exact",
        "note": note,
    }
