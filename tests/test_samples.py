"""The samples explorer (GET /job/{id}/samples) against real lm-eval samples files: a job run
with log_samples through the stub endpoint, every page and filter checked against the
samples file read independently here; the index rebuilt when the file changes; one build
for concurrent first requests; symlinks planted by a job never followed."""

from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path
from typing import Any

import trio

from lmeval_trio.client import AsyncClient
from lmeval_trio.jobs.status import JobStatus
from tests.conftest import DUMMY_JOB, TASKS_DIR, Server, fake_job, job_files, supervisor_of
from tests.support.stub_openai import StubHandle
from tests.test_cli import cli

KNOWN = [json.loads(line) for line in (TASKS_DIR / "tiny_gen.jsonl").read_text().splitlines()]
# The stub answers the questions it knows (tiny_gen's) and "I don't know" to the rest: a
# fixed pattern of right and wrong samples.
ROWS = [{"question": r["question"], "answer": r["answer"]} for r in KNOWN] + [
    {"question": f"What is the secret number {n}?", "answer": str(n * 7)} for n in range(19)
]

TASK_YAML = """\
task: samples_gen
custom_dataset: !function samples_data.load
output_type: generate_until
test_split: test
doc_to_text: "Q: {{question}}\\nA:"
doc_to_target: "{{answer}}"
generation_kwargs:
  until: ["\\n"]
  max_gen_toks: 16
  do_sample: false
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
  - metric: bleu
    aggregation: bleu
    higher_is_better: true
filter_list:
  - name: strip
    filter:
      - function: remove_whitespace
      - function: take_first
  - name: lower
    filter:
      - function: remove_whitespace
      - function: lowercase
      - function: take_first
metadata:
  version: 1.0
"""

DATA_PY = """\
import importlib, json
from pathlib import Path

def load(**kwargs):
    rows = [json.loads(l) for l in (Path(__file__).parent / "rows.jsonl").read_text().splitlines()]
    datasets = importlib.import_module("datasets")
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)})
"""


def write_task(folder: Path, rows: list[dict[str, str]] = ROWS) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "samples_gen.yaml").write_text(TASK_YAML)
    (folder / "samples_data.py").write_text(DATA_PY)
    (folder / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    for name in ("tiny_mc.yaml", "tiny_mc.jsonl", "tiny_data.py"):  # a second task
        (folder / name).write_bytes((TASKS_DIR / name).read_bytes())
    return folder


def samples_file(data_dir: Path, job_id: int, task: str) -> Path:
    found = sorted((data_dir / "jobs" / str(job_id)).rglob(f"samples_{task}_*.jsonl"))
    assert len(found) == 1, found
    return found[0]


def read_samples(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in strings(v)]
    return [str(value)]


async def get(server: Server, job_id: int, **params: Any) -> dict[str, Any]:
    response = await server.client.get(f"/job/{job_id}/samples", params=params)
    assert response.status_code == 200, response.text
    data: dict[str, Any] = response.json()
    return data


async def refused(server: Server, job_id: int, status: int, **params: Any) -> Any:
    response = await server.client.get(f"/job/{job_id}/samples", params=params)
    assert response.status_code == status, response.text
    return response.json()["detail"]


async def walk(server: Server, job_id: int, **params: Any) -> list[dict[str, Any]]:
    """Every sample the query matches, page by page along the cursors."""
    seen, cursor = [], None
    while True:
        page = await get(server, job_id, **params, **({"cursor": cursor} if cursor else {}))
        seen += page["samples"]
        cursor = page["next_cursor"]
        if cursor is None:
            assert len(seen) == page["total"]
            return seen


async def samples_job(
    server: Server,
    stub: StubHandle,
    tmp_path: Path,
    rows: list[dict[str, str]] = ROWS,
    **extra: Any,
) -> tuple[int, Path]:
    tasks = write_task(job_files(tmp_path) / "tasks", rows)
    job_id = await server.submit(
        {
            **extra,
            "model": "local-completions",
            "model_args": {
                "model": "stub-model",
                "base_url": stub.completions_url,
                "tokenizer_backend": "remote",
            },
            "tasks": "samples_gen,tiny_mc",
            "include_path": str(tasks),
            "log_samples": True,
        }
    )
    job = await server.wait_status(job_id, JobStatus.COMPLETED, JobStatus.FAILED)
    assert job["status"] == "Completed", job["reason"]
    return job_id, tmp_path / "data"


def key(sample: dict[str, Any]) -> tuple[int, str]:
    return sample["doc_id"], sample["filter"]


async def test_pages_and_filters_match_the_samples_file(
    server: Server, stub: StubHandle, tmp_path: Path
) -> None:
    job_id, data_dir = await samples_job(server, stub, tmp_path)
    records = read_samples(samples_file(data_dir, job_id, "samples_gen"))
    assert len(records) == 2 * len(ROWS)  # one per doc and filter
    by_key = {(r["doc_id"], r["filter"]): r for r in records}

    detail = await refused(server, job_id, 422)  # two tasks: which one?
    assert detail[0]["loc"] == ["query", "task"] and "samples_gen" in detail[0]["msg"]

    first = await get(server, job_id, task="samples_gen", limit=7)
    assert first["tasks"] == ["samples_gen", "tiny_mc"] and first["total"] == len(records)
    assert first["filters"] == ["strip", "lower"] and first["binary_metrics"] == ["exact_match"]
    assert set(first["metrics"]) == {"exact_match", "bleu"}

    every = await walk(server, job_id, task="samples_gen", limit=7)
    assert sorted(map(key, every)) == sorted(by_key)  # each doc and filter exactly once
    for sample in every:
        record = by_key[key(sample)]
        assert sample["prompt"] == record["arguments"] and sample["target"] == record["target"]
        assert sample["resps"] == record["resps"]
        assert sample["filtered_resps"] == record["filtered_resps"]
        assert sample["metrics"] == {m: record[m] for m in record["metrics"]}
        assert sample["doc"] == record["doc"] and sample["doc_hash"] == record["doc_hash"]
        assert sample["correct"] == {"exact_match": record["exact_match"] == 1}

    by_offset: list[dict[str, Any]] = []
    for offset in range(0, len(records), 9):
        by_offset += (await get(server, job_id, task="samples_gen", limit=9, offset=offset))[
            "samples"
        ]
    assert [key(s) for s in by_offset] == [key(s) for s in every]

    for correct in (True, False):
        for name in ("strip", "lower"):
            found = await walk(
                server, job_id, task="samples_gen", filter=name, correct=str(correct), limit=5
            )
            expected = {
                k for k, r in by_key.items() if k[1] == name and (r["exact_match"] == 1) == correct
            }
            assert {key(s) for s in found} == expected and expected
    wrong = await walk(server, job_id, task="samples_gen", correct="false", limit=50)
    assert len(wrong) == sum(r["exact_match"] == 0 for r in records)

    for text in ("SECRET number 1", "madrid", "know", "q: what is"):
        found = await walk(server, job_id, task="samples_gen", q=text, limit=6)
        expected = {
            k
            for k, r in by_key.items()
            if any(
                text.lower() in s.lower()
                for s in strings([r["arguments"], r["target"], r["resps"], r["filtered_resps"]])
            )
        }
        assert {key(s) for s in found} == expected and expected
    both = await walk(
        server, job_id, task="samples_gen", q="secret", correct="true", filter="strip"
    )
    assert both == []  # the stub does not know the secret numbers

    mc = read_samples(samples_file(data_dir, job_id, "tiny_mc"))
    right = await walk(server, job_id, task="tiny_mc", correct="true")
    assert {s["doc_id"] for s in right} == {r["doc_id"] for r in mc if r["acc"] == 1}


async def test_bad_queries_name_the_field(server: Server, stub: StubHandle, tmp_path: Path) -> None:
    job_id, _ = await samples_job(server, stub, tmp_path)
    cases: list[tuple[dict[str, Any], str, str]] = [
        ({"task": "nope"}, "task", "samples_gen"),
        ({"task": "samples_gen", "filter": "nope"}, "filter", "strip"),
        ({"task": "samples_gen", "metric": "nope"}, "metric", "exact_match"),
        ({"task": "samples_gen", "metric": "bleu", "correct": "true"}, "correct", "0/1"),
        ({"task": "samples_gen", "correct": "maybe"}, "correct", "true or false"),
        ({"task": "samples_gen", "cursor": "abc.1"}, "cursor", "first page"),
        ({"task": "samples_gen", "cursor": "x", "offset": "2"}, "cursor", "not both"),
        ({"task": "samples_gen", "limit": "0"}, "limit", "between"),
        ({"task": "samples_gen", "limit": "201"}, "limit", "between"),
        ({"task": "samples_gen", "q": "x" * 201}, "q", "longer"),
        ({"task": "samples_gen", "q": "a\0b"}, "q", "NUL"),
    ]
    for params, field, words in cases:
        detail = await refused(server, job_id, 422, **params)
        assert detail[0]["loc"] == ["query", field], (params, detail)
        assert words in detail[0]["msg"], (params, detail)
    assert await refused(server, 999, 404, task="samples_gen")


async def test_no_samples_running_job_and_planted_symlinks(
    server: Server, stub: StubHandle, tmp_path: Path
) -> None:
    plain = await server.submit(DUMMY_JOB)  # log_samples off
    await server.wait_status(plain, JobStatus.COMPLETED)
    assert "log_samples" in await refused(server, plain, 404)

    blocked = await server.submit(fake_job("block"))
    await server.wait_status(blocked, JobStatus.RUNNING)
    assert "when it ends" in await refused(server, blocked, 409)
    await server.client.post(f"/job/{blocked}/stop")

    job_id, data_dir = await samples_job(server, stub, tmp_path)
    real = samples_file(data_dir, job_id, "tiny_mc")
    outside = tmp_path / "outside.jsonl"
    outside.write_text(json.dumps({"doc_id": 0, "target": "LEAKED", "filter": "none"}) + "\n")
    planted = real.with_name("samples_evil_2999-01-01T00-00-00.jsonl")
    planted.symlink_to(outside)
    detail = await refused(server, job_id, 422, task="evil")
    assert "evil" in detail[0]["msg"]
    # The real file swapped for a symlink to the outside file: gone, never followed.
    real.unlink()
    real.symlink_to(outside)
    response = await server.client.get(f"/job/{job_id}/samples", params={"task": "tiny_mc"})
    assert response.status_code in (404, 422) and "LEAKED" not in response.text


async def test_index_built_once_and_rebuilt_when_the_file_changes(
    server: Server, stub: StubHandle, tmp_path: Path
) -> None:
    job_id, data_dir = await samples_job(server, stub, tmp_path)
    supervisor = supervisor_of(server)
    before = supervisor.samples.builds
    pages: list[dict[str, Any]] = []

    async def one() -> None:
        pages.append(await get(server, job_id, task="samples_gen", limit=3))

    async with trio.open_nursery() as nursery:  # concurrent first requests: one build
        for _ in range(5):
            nursery.start_soon(one)
    assert supervisor.samples.builds == before + 1 and len(pages) == 5
    await get(server, job_id, task="samples_gen", q="madrid")
    assert supervisor.samples.builds == before + 1
    old_cursor = pages[0]["next_cursor"]

    path = samples_file(data_dir, job_id, "samples_gen")
    records = read_samples(path)
    records[0]["target"] = "a brand new target"
    kept = records[:10]
    path.write_text("".join(json.dumps(r) + "\n" for r in kept))
    os.utime(path, ns=(1, 1))  # even an older mtime: the size and inode changed too
    page = await get(server, job_id, task="samples_gen", q="brand new")
    assert supervisor.samples.builds == before + 2
    assert [key(s) for s in page["samples"]] == [(kept[0]["doc_id"], kept[0]["filter"])]
    assert (await get(server, job_id, task="samples_gen"))["total"] == 10
    detail = await refused(server, job_id, 422, task="samples_gen", cursor=old_cursor)
    assert detail[0]["loc"] == ["query", "cursor"]
    folder = supervisor.settings.effective_cache_dir / "samples-index"
    prefix_of = {p.name.split("-", 1)[0] for p in folder.glob("*.idx")}
    assert len(list(folder.glob("*.idx"))) == len(prefix_of)  # old versions removed

    # A line still being written (no newline yet) is left out until it is complete.
    with path.open("a") as file:
        file.write(textwrap.dedent(json.dumps(records[10]))[:-5])
    assert (await get(server, job_id, task="samples_gen"))["total"] == 10


async def test_cli_and_client(server: Server, stub: StubHandle, tmp_path: Path) -> None:
    job_id, data_dir = await samples_job(server, stub, tmp_path)
    records = read_samples(samples_file(data_dir, job_id, "samples_gen"))
    wrong_secret = {
        (r["doc_id"], r["filter"])
        for r in records
        if r["exact_match"] == 0 and "secret" in r["arguments"]["gen_args_0"]["arg_0"].lower()
    }
    args = [str(job_id), "--task", "samples_gen", "--wrong", "--grep", "SECRET", "--limit", "300"]
    run = await cli(server.url, "--json", "samples", *args)
    assert run.code == 0, run.err
    answer = json.loads(run.out)
    assert answer["total"] == len(wrong_secret)
    assert {key(s) for s in answer["samples"]} == wrong_secret

    run = await cli(server.url, "samples", str(job_id), "--task", "samples_gen", "--limit", "3")
    assert run.code == 0, run.err
    assert run.out.startswith(f"3 of {len(records)} matching samples")
    first = records[0]
    assert f"doc {first['doc_id']} [{first['filter']}]" in run.out
    assert f"target:   {first['target']}" in run.out

    run = await cli(server.url, "samples", str(job_id))  # two tasks: the server's 422
    assert run.code == 4 and "samples_gen" in run.err

    async with AsyncClient(server.url) as client:
        page = await client.samples(job_id, "tiny_mc", limit=2)
        assert page.total == 8 and len(page.samples) == 2 and page.next_cursor
        every = [s async for s in client.all_samples(job_id, "samples_gen", correct=True)]
        assert {key(s.model_dump()) for s in every} == {
            (r["doc_id"], r["filter"]) for r in records if r["exact_match"] == 1
        }


def test_index_skips_bad_and_overlong_lines_and_an_unfinished_one(
    tmp_path: Path, monkeypatch: Any
) -> None:
    from lmeval_trio.outputs import samples_index

    monkeypatch.setattr(samples_index, "MAX_RECORD_BYTES", 4096)
    good = {"doc_id": 0, "filter": "none", "metrics": ["acc"], "acc": 1, "target": "T"}
    lines = [
        json.dumps(good),
        "not json",
        "[1, 2]",
        json.dumps({**good, "doc_id": 1, "target": "x" * 10_000}),  # overlong: skipped
        json.dumps({**good, "doc_id": 2, "acc": 0}),
    ]
    path = tmp_path / "samples_t_2026-01-01T00-00-00.jsonl"
    path.write_text("\n".join(lines) + "\n" + json.dumps({**good, "doc_id": 3})[:-3])
    fd = os.open(path, os.O_RDONLY)
    try:
        key = samples_index.FileKey.of(path, fd)
        index = samples_index.build_index(fd, key)
        assert list(index.doc_ids) == [0, 2] and index.skipped_lines == 3
        assert list(index.verdicts["acc"]) == [1, 0]
        records = samples_index.read_records(fd, index, [1])
        assert records[0]["doc_id"] == 2
        where = samples_index.index_path(tmp_path / "idx", key, ())
        samples_index.save_index(index, where)
        loaded = samples_index.load_index(where, key)
        assert loaded is not None and list(loaded.matching("t")) == [0, 1]
        where.write_bytes(where.read_bytes()[:-3])  # a damaged index is never used
        assert samples_index.load_index(where, key) is None
    finally:
        os.close(fd)


async def test_secrets_are_masked_and_not_searchable(
    server: Server, stub: StubHandle, tmp_path: Path
) -> None:
    secret = "zebra-credential-4242"
    rows = [*ROWS, {"question": f"Is {secret} the password?", "answer": secret}]
    job_id, data_dir = await samples_job(
        server, stub, tmp_path, rows, env_vars={"OPENAI_API_KEY": secret}
    )
    assert secret in samples_file(data_dir, job_id, "samples_gen").read_text()  # on disk
    response = await server.client.get(
        f"/job/{job_id}/samples", params={"task": "samples_gen", "limit": 200}
    )
    assert response.status_code == 200 and secret not in response.text
    assert "Is *** the password?" in response.text
    for probe in (secret, "zebra-cred", "credential-4242"):
        page = await get(server, job_id, task="samples_gen", q=probe)
        assert page["total"] == 0, probe  # a search is no oracle for the secret
