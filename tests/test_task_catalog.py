"""The task catalog (GET /tasks, GET /tasks/{name}) against the real lm-eval task index.

The built-in catalog is built by lm-eval's own index through the shared fast-start cache
(tests' CACHE_DIR), so only the first test on a machine pays for the 14,000 YAML files.
Attacks: include_path traversal, the data dir, symlinks out of a task folder, odd unicode,
huge queries and names, non-ASCII digits in paging."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from lmeval_trio.config import SHIPPED_EXAMPLE_TASKS
from tests.conftest import TASKS_DIR, Server, job_files, supervisor_of


async def _tasks(server: Server, **params: Any) -> dict[str, Any]:
    response = await server.client.get("/tasks", params=params)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def _refused(server: Server, path: str, params: Any, status: int = 422) -> Any:
    response = await server.client.get(path, params=params)
    assert response.status_code == status, response.text
    return response.json()


async def test_builtin_task_entry_is_lm_evals_own(server: Server) -> None:
    body = await _tasks(server, q="arc_easy", kind="task")
    (entry,) = [e for e in body["tasks"] if e["name"] == "arc_easy"]
    assert entry["output_type"] == "multiple_choice"
    assert entry["dataset"] == {"path": "allenai/ai2_arc", "name": "ARC-Easy"}
    assert entry["metrics"] == ["acc", "acc_norm"]
    assert entry["tags"] == ["ai2_arc"]
    assert entry["yaml_path"] == "arc/arc_easy.yaml"
    assert entry["source"] == "lm_eval"
    assert entry["description"]  # arc/README.md's first line
    detail = (await server.client.get("/tasks/arc_easy")).json()
    assert detail["config"]["dataset_path"] == "allenai/ai2_arc"
    assert detail["config"]["doc_to_text"] == "Question: {{question}}\nAnswer:"


async def test_group_and_tag_entries(server: Server) -> None:
    mmlu = (await server.client.get("/tasks/mmlu")).json()
    assert mmlu["kind"] == "group"
    assert set(mmlu["subtasks"]) == {
        "mmlu_stem",
        "mmlu_other",
        "mmlu_social_sciences",
        "mmlu_humanities",
    }
    assert mmlu["config"]["group"] == "mmlu"
    assert mmlu["yaml_path"] == "mmlu/default/_mmlu.yaml"
    tag = (await server.client.get("/tasks/ai2_arc")).json()
    assert tag["kind"] == "tag"
    assert tag["subtasks"] == ["arc_challenge", "arc_easy"]
    assert tag["config"] is None and tag["yaml_path"] is None
    # the included YAML's fields are resolved: mmlu tasks include _default_template_yaml
    algebra = (await server.client.get("/tasks/mmlu_abstract_algebra")).json()
    assert algebra["config"]["dataset_path"] == "cais/mmlu"
    assert algebra["output_type"] == "multiple_choice"


async def test_filters_and_paging(server: Server) -> None:
    groups = await _tasks(server, kind="group", limit=1000)
    assert groups["total"] > 500 and all(e["kind"] == "group" for e in groups["tasks"])
    names = [e["name"] for e in groups["tasks"]]
    assert names == sorted(names)
    page = await _tasks(server, kind="group", limit=5, offset=5)
    assert [e["name"] for e in page["tasks"]] == names[5:10]
    assert (page["total"], page["limit"], page["offset"]) == (groups["total"], 5, 5)
    everything = await _tasks(server)
    assert everything["total"] > 14_000 and everything["limit"] == 100
    generative = await _tasks(server, output_type="generate_until", q="GSM8K")
    assert generative["total"] >= 1
    assert all(e["output_type"] == "generate_until" for e in generative["tasks"])
    for entry in generative["tasks"]:
        assert "gsm8k" in (entry["name"] + (entry["description"] or "")).lower()
    beyond = await _tasks(server, kind="tag", offset=10**6)
    assert beyond["tasks"] == [] and beyond["total"] > 0


async def test_unknown_name_suggests_close_ones(server: Server) -> None:
    body = await _refused(server, "/tasks/arc_easz", {}, 404)
    assert "arc_easz" in body["detail"] and "arc_easy" in body["suggestions"]
    assert len(body["suggestions"]) <= 5
    odd = await _refused(server, "/tasks/%E2%80%AEarc%00", {}, 404)
    assert odd["detail"].startswith("no task, group or tag named")
    await _refused(server, "/tasks/" + "a" * 600, {}, 422)


async def test_include_path_folder_lists_its_own_tasks(server: Server) -> None:
    assert (await _tasks(server, include_path=""))["total"] > 14_000  # empty: absent
    body = await _tasks(server, include_path=str(TASKS_DIR))
    assert [e["name"] for e in body["tasks"]] == ["tiny_gen", "tiny_mc"]
    mc = body["tasks"][1]
    assert mc["output_type"] == "multiple_choice" and mc["yaml_path"] == "tiny_mc.yaml"
    assert mc["source"] == str(TASKS_DIR)
    detail = (
        await server.client.get("/tasks/tiny_gen", params={"include_path": str(TASKS_DIR)})
    ).json()
    assert detail["config"]["generation_kwargs"]["max_gen_toks"] == 16
    shipped = await _tasks(server, include_path=str(SHIPPED_EXAMPLE_TASKS))
    assert [e["name"] for e in shipped["tasks"]] == ["example_arith"]


@pytest.mark.parametrize(
    ("params", "status", "field"),
    [
        ({"q": "x" * 201}, 422, "q"),
        ({"q": "arc\x00"}, 422, "q"),
        ({"kind": "everything"}, 422, "kind"),
        ({"limit": "0"}, 422, "limit"),
        ({"limit": "1001"}, 422, "limit"),
        ({"limit": "\u0661\u0660"}, 422, "limit"),  # Arabic-Indic "10"
        ({"offset": "-1"}, 422, "offset"),
        ({"include_path": ["/tmp"] * 17}, 422, "include_path"),
        ({"include_path": "x" * 5000}, 422, "include_path"),
    ],
)
async def test_bad_queries_name_the_parameter(
    server: Server, params: dict[str, Any], status: int, field: str
) -> None:
    body = await _refused(server, "/tasks", params, status)
    assert body["detail"][0]["loc"] == ["query", field]


async def test_include_path_obeys_the_job_path_policy(server: Server, tmp_path: Path) -> None:
    data_dir = server.app.extensions["lmeval_trio.settings"].data_dir
    for outside in ("/etc", str(data_dir), f"{TASKS_DIR}/../../../../../../etc"):
        body = await _refused(server, "/tasks", {"include_path": outside}, 403)
        assert body["field"] == "include_path"
    for missing in ("does-not-exist", str(tmp_path / "nope"), "relative/../x"):
        body = await _refused(server, "/tasks", {"include_path": missing}, 422)
        assert body["detail"][0]["loc"] == ["body", "include_path"]
    not_folder = await _refused(server, "/tasks", {"include_path": str(TASKS_DIR / "tiny_mc.yaml")})
    assert "not a folder" in not_folder["detail"][0]["msg"]
    sneaky = tmp_path / "sneaky"
    sneaky.mkdir()
    (sneaky / "out.yaml").symlink_to("/etc/passwd")
    body = await _refused(server, "/tasks", {"include_path": str(sneaky)}, 403)
    assert body["field"] == "include_path"


async def test_odd_unicode_queries_are_answered(server: Server) -> None:
    """A query is a literal substring: no glob, no width or bidi folding, no crash."""
    for q in ("\u202earc", "\uff41\uff52\uff43", "\u00e9" * 200, "%", "*", "arc_*", "\ud7ff"):
        body = await _tasks(server, q=q)
        assert (body["total"], body["tasks"]) == (0, [])
    assert (await _tasks(server, q="ARC_EASY"))["total"] >= 1  # any case


async def test_a_task_folder_is_read_behind_the_jobs_walls(server: Server, tmp_path: Path) -> None:
    """A YAML ``include:`` may name any file; the catalog's child reads a user's folder with
    the walls every job has, so a file no job may read never reaches the catalog."""
    supervisor = supervisor_of(server)
    if not supervisor.walls.confined:
        pytest.skip("jobs run unconfined here (no Landlock): nothing to prove")
    secret = tmp_path / "secret" / "s.yaml"  # in the data dir's root: no job may read it
    secret.parent.mkdir()
    secret.write_text("dataset_path: TOP-SECRET\n")
    folder = job_files(tmp_path) / "leaky"
    folder.mkdir()
    (folder / "leaky.yaml").write_text(f"include: {secret}\ntask: leaky\noutput_type: x\n")
    (folder / "fine.yaml").write_text("task: fine\noutput_type: generate_until\n")
    listing = await server.client.get("/tasks", params={"include_path": str(folder)})
    assert listing.status_code == 200, listing.text
    assert [e["name"] for e in listing.json()["tasks"]] == ["fine"]  # leaky: unreadable include
    detail = await server.client.get("/tasks/leaky", params={"include_path": str(folder)})
    assert detail.status_code == 404 and "TOP-SECRET" not in detail.text + listing.text
