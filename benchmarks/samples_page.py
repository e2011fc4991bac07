"""Benchmark 11: a page of samples from a 50,000-sample file. A real job (the dummy model on
the tests' tiny_gen, ``log_samples`` on) leaves its samples file; the file is then rewritten
in lm-eval's exact record layout with 50,000 samples (25,000 docs x 2 filters, GSM8K-like:
a few-shot prompt of ~1 KB, a generation, exact_match), about 100 MB, as lm-eval would have
written it. Then, over HTTP: the first request (which builds the index) timed alone, and
p50 of ``GET /job/{id}/samples`` for the first page, a deep cursor page (past 49,000
samples), a ``correct=false`` page and a ``q=`` search page (a different word each run, so
no search is answered from a previous one). Target: p50 <= 30 ms for each page.

    uv run python -m benchmarks.samples_page [--runs 30] [--warmup 3] [--samples 50000]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from benchmarks._report import Metric, Report, Target, run
from benchmarks._server import SUPPORT, ServerFactory, hypercorn_server, submit, wait_idle

_VOCABULARY = (
    "apple river stone number seven twelve house market train garden sum total each "
    "more less than after before price dollars hours minutes book paper cat dog bird "
    "field school teacher student lesson pencil window table chair water bread milk "
    "coffee morning evening week month year city road bridge tower boat ship island"
)
WORDS = _VOCABULARY.split()
FILTERS = ("strict-match", "flexible-extract")


def _text(rng: random.Random, words: int) -> str:
    return " ".join(rng.choices(WORDS, k=words))


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def sample_records(count: int, seed: int = 11) -> list[str]:
    """``count`` JSONL lines in lm-eval's samples layout (``save_results_samples``): each doc
    once per filter, in filter order, as lm-eval writes them."""
    rng = random.Random(seed)
    shots = "\n\n".join(
        f"Question: {_text(rng, 30)}?\nAnswer: {_text(rng, 25)} #### {n}" for n in range(3)
    )
    docs = count // len(FILTERS)
    lines = []
    for name in FILTERS:
        rng = random.Random(seed)  # the same docs and answers under each filter
        for doc_id in range(docs):
            question = f"{_text(rng, 24)} doc{doc_id}?"
            answer = str(rng.randrange(1000))
            said = answer if rng.random() < 0.6 else str(rng.randrange(1000))
            response = f" {_text(rng, 20)} #### {said}"
            prompt = f"{shots}\n\nQuestion: {question}\nAnswer:"
            doc = {"question": question, "answer": f"{_text(rng, 20)} #### {answer}"}
            until = {"until": ["Question:", "</s>", "<|im_end|>"], "do_sample": False}
            record: dict[str, Any] = {
                "doc_id": doc_id,
                "doc": doc,
                "target": answer,
                "arguments": {"gen_args_0": {"arg_0": prompt, "arg_1": until}},
                "resps": [[response]],
                "filtered_resps": [said if name == "strict-match" else said.strip()],
                "filter": name,
                "metrics": ["exact_match"],
                "doc_hash": _sha(json.dumps(doc, indent=2, ensure_ascii=False)),
                "prompt_hash": _sha(prompt),
                "target_hash": _sha(answer),
                "exact_match": 1.0 if said == answer else 0.0,
            }
            lines.append(json.dumps(record, ensure_ascii=False) + "\n")
    return lines


def write_samples(path: Path, count: int) -> int:
    """Rewrite the job's samples file with ``count`` samples; its size in bytes."""
    draft = path.with_name(path.name + ".draft")
    with draft.open("w", encoding="utf-8") as file:
        file.writelines(sample_records(count))
    draft.replace(path)
    return path.stat().st_size


async def _page(client: httpx.AsyncClient, job_id: int, **params: Any) -> dict[str, Any]:
    response = await client.get(f"/job/{job_id}/samples", params=params)
    if response.status_code != 200:
        raise RuntimeError(f"GET samples: {response.status_code} {response.text}")
    data: dict[str, Any] = response.json()
    return data


async def _timed(
    metric: Metric | None, client: httpx.AsyncClient, job_id: int, **params: Any
) -> dict[str, Any]:
    before = time.monotonic()
    page = await _page(client, job_id, **params)
    if metric is not None:
        metric.add((time.monotonic() - before) * 1000)
    if not page["samples"]:
        raise RuntimeError(f"an empty page for {params}")
    return page


async def measure(
    runs: int = 30,
    warmup: int = 3,
    samples: int = 50_000,
    server_factory: ServerFactory = hypercorn_server,
) -> Report:
    build = Metric("first request (builds the index) ms", "ms")
    first = Metric("first page ms", "ms")
    deep = Metric("deep cursor page ms", "ms")
    wrong = Metric("correct=false page ms", "ms")
    search = Metric("q= search page ms", "ms")
    with tempfile.TemporaryDirectory(prefix="lmeval-bench-") as tmp:
        data_dir = Path(tmp) / "data"
        async with (
            server_factory(data_dir) as server,
            httpx.AsyncClient(base_url=server.url, timeout=600) as client,
        ):
            job = {
                "model": "dummy",
                "tasks": "tiny_gen",
                "include_path": str(SUPPORT / "tasks"),
                "log_samples": True,
            }
            job_id = await submit(client, job)
            await wait_idle(client)
            (path,) = (data_dir / "jobs" / str(job_id)).rglob("samples_tiny_gen_*.jsonl")
            size = write_samples(path, samples)
            task = {"task": "tiny_gen", "limit": 20}
            await _timed(build, client, job_id, **task)
            deep_at = max(0, samples - 1000)
            cursor = (await _page(client, job_id, **task, offset=deep_at))["next_cursor"]
            for index in range(warmup + runs):
                keep = index >= warmup
                await _timed(first if keep else None, client, job_id, **task)
                await _timed(deep if keep else None, client, job_id, **task, cursor=cursor)
                await _timed(wrong if keep else None, client, job_id, **task, correct="false")
                word = f"doc{(index * 7919) % (samples // 2)}?"  # a new search each run
                await _timed(search if keep else None, client, job_id, **task, q=word)
    return Report(
        "samples_page",
        f"GET /job/{{id}}/samples on a {samples}-sample lm-eval samples file",
        [build, first, deep, wrong, search],
        [Target(m.name, "median", 30) for m in (first, deep, wrong, search)],
        {
            "runs": runs,
            "warmup_runs_excluded": warmup,
            "samples": samples,
            "file_mb": round(size / 1e6, 1),
            "page_limit": 20,
        },
    )


def main(argv: list[str] | None = None) -> Report:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--samples", type=int, default=50_000)
    args = parser.parse_args(argv)
    return run(measure, args.runs, args.warmup, args.samples)


if __name__ == "__main__":
    main()
