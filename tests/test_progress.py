"""Tests for lmeval_trio.jobs.progress against captured and modelled lm-eval stderr.

dummy_two_phases.txt is a real `lm_eval run --model dummy` capture (two tasks: one
multiple_choice, one generate_until). api_two_phases.txt and hf_two_phases.txt were
drawn with tqdm's own `format_meter`, following the logged runs in the offline notes.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pytest

from lmeval_trio.jobs.progress import PhaseProgress, ProgressSnapshot, ProgressTracker

DATA = Path(__file__).parent / "data" / "stderr"
_SPLIT = re.compile(r"[\r\n]")


def segments(name: str) -> list[str]:
    """Split like the log pump: on "\\r" and "\\n" only."""
    return _SPLIT.split((DATA / name).read_text(encoding="utf-8"))


def run(lines: list[str]) -> tuple[ProgressTracker, list[tuple[str, int]]]:
    """Feed every segment; also return (segment, percent) after each one."""
    tracker = ProgressTracker()
    history: list[tuple[str, int]] = []
    for seg in lines:
        tracker.feed(seg)
        history.append((seg, tracker.snapshot().percent))
    return tracker, history


def percent_after(history: list[tuple[str, int]], needle: str, after: str = "") -> int:
    """Percent right after the first segment containing needle (past `after`)."""
    start = next(i for i, (seg, _) in enumerate(history) if after in seg)
    return next(pct for seg, pct in history[start:] if needle in seg)


def phase_totals(snap: ProgressSnapshot) -> list[tuple[str, int, int]]:
    return [(p.name, p.n, p.total) for p in snap.phases]


def bar(desc: str, n: int, total: int, rest: str = "[00:01<00:02,  3.00it/s]") -> str:
    head = f"{desc}: " if desc else ""
    return f"{head}{100 * n // total:3d}%|#####     | {n}/{total} {rest}"


# --- captured / modelled runs ---------------------------------------------------


@pytest.mark.parametrize(
    "name", ["dummy_two_phases.txt", "api_two_phases.txt", "hf_two_phases.txt"]
)
def test_samples_end_with_two_full_phases(name: str) -> None:
    assert (DATA / name).stat().st_size < 50_000
    tracker, _ = run(segments(name))
    snap = tracker.snapshot()
    assert phase_totals(snap) == [("loglikelihood", 32, 32), ("generate_until", 6, 6)]
    assert snap.percent == 99
    assert snap.phase == snap.phases[-1]
    tracker.complete()
    assert tracker.snapshot().percent == 100
    assert tracker.snapshot().phases == snap.phases


def test_dummy_context_bars_do_not_count_and_percent_drops_on_new_phase() -> None:
    _, history = run(segments("dummy_two_phases.txt"))
    # "Building contexts" bars (0/8, 8/8, 0/6, 6/6) come before any Running line.
    assert percent_after(history, "Running loglikelihood requests") == 0
    assert percent_after(history, "| 32/32 [") == 99
    assert percent_after(history, "| 6/6 [") == 0  # tiny_gen's context bar comes first
    # generate_until's 0/6 bar appears: 32/38 done, so the percent goes down.
    assert percent_after(history, "| 0/6 [", after="Running generate_until") == 84
    assert percent_after(history, "| 6/6 [", after="Running generate_until") == 99


def test_dummy_snapshot_before_inference_is_empty() -> None:
    lines = segments("dummy_two_phases.txt")
    cut = next(i for i, seg in enumerate(lines) if "Running loglikelihood" in seg)
    tracker, _ = run(lines[:cut])
    assert tracker.snapshot() == ProgressSnapshot()


def test_api_tokenizing_bar_does_not_count() -> None:
    lines = segments("api_two_phases.txt")
    cut = next(i for i, seg in enumerate(lines) if seg.startswith("Requesting API"))
    tracker, _ = run(lines[:cut])
    snap = tracker.snapshot()
    assert phase_totals(snap) == [("loglikelihood", 0, 0)]
    assert snap.percent == 0


def test_api_mid_run_percent_rate_and_eta() -> None:
    lines = segments("api_two_phases.txt")
    cut = next(i for i, seg in enumerate(lines) if "| 16/32 [" in seg)
    tracker, history = run(lines[: cut + 1])
    snap = tracker.snapshot()
    assert snap.percent == 50
    assert snap.phase == PhaseProgress("loglikelihood", 16, 32, 3.23, 4.0, 4.0)
    assert percent_after(history, "| 1/32 [") == 3


def test_api_log_line_glued_behind_bar() -> None:
    lines = segments("api_two_phases.txt")
    glued = next(i for i, seg in enumerate(lines) if "WARNING" in seg)
    assert lines[glued].startswith("Requesting API:   0%")
    tracker, _ = run(lines[: glued + 1])
    snap = tracker.snapshot()
    assert phase_totals(snap) == [("loglikelihood", 32, 32), ("generate_until", 0, 6)]
    assert snap.percent == 84


def test_hf_bars_rate_inversion_and_eta() -> None:
    lines = segments("hf_two_phases.txt")
    cut = next(i for i, seg in enumerate(lines) if "| 1/6 [" in seg)
    tracker, history = run(lines[: cut + 1])
    phase = tracker.snapshot().phase
    assert phase is not None
    assert (phase.name, phase.n, phase.total) == ("generate_until", 1, 6)
    assert phase.rate_per_s == 0.667  # "1.50s/it"
    assert (phase.elapsed_s, phase.eta_s) == (1.0, 7.0)
    assert percent_after(history, "| 17/32 [") == 53
    assert percent_after(history, "Generating test split: 8 examples") == 0


# --- semantics on small inline inputs -----------------------------------------


def feed_all(lines: list[str], tracker: ProgressTracker | None = None) -> ProgressTracker:
    tracker = tracker or ProgressTracker()
    for line in lines:
        tracker.feed(line)
    return tracker


LOG = "2026-11-27:18:51:22 INFO     [evaluator:589] Running {} requests"


@pytest.mark.parametrize(
    ("rest", "rate", "elapsed", "eta"),
    [
        ("[00:00<00:00, 459649.75it/s]", 459649.75, 0.0, 0.0),
        ("[00:00<?, ?it/s]", None, 0.0, None),
        ("[1:02:03<9:59:49, 1241.00s/it]", 0.000806, 3723.0, 35989.0),
        ("[00:04<00:43,  1.50s/it]", 0.667, 4.0, 43.0),
        ("[00:04<00:43,  0.00s/it]", None, 4.0, 43.0),
        ("[00:01, 3.00it/s]", 3.0, 1.0, None),
        ("[00:01<00:02, 2.50examples/s, loss=0.3]", 2.5, 1.0, 2.0),
        ("[00:01<00:0", None, 1.0, None),
        ("[", None, None, None),
        ("[?<?, ?it/s]", None, None, None),
        ("[1:2:3:4<0:00, 1.0it/s]", 1.0, None, None),
        ("[00:05<00:0", None, 5.0, None),
    ],
)
def test_timing_fields(
    rest: str, rate: float | None, elapsed: float | None, eta: float | None
) -> None:
    tracker = feed_all([LOG.format("loglikelihood"), bar("", 3, 32, rest)])
    phase = tracker.snapshot().phase
    assert phase is not None
    assert (phase.n, phase.total) == (3, 32)
    assert phase.rate_per_s == (pytest.approx(rate) if rate is not None else None)
    assert (phase.elapsed_s, phase.eta_s) == (elapsed, eta)


def test_redraw_of_same_state_reports_no_change() -> None:
    tracker = feed_all([LOG.format("generate_until")])
    assert tracker.feed(bar("Requesting API", 2, 6)) is True
    assert tracker.feed(bar("Requesting API", 2, 6)) is False
    assert tracker.feed("") is False
    assert tracker.feed(bar("Requesting API", 3, 6)) is True


def test_sub_bars_of_one_phase_are_summed() -> None:
    # A labeled bar that starts over (hf re-batching): each sub-bar adds to the phase.
    tracker = feed_all(
        [LOG.format("loglikelihood")]
        + [bar("Running loglikelihood requests", n, 8) for n in (0, 4, 8, 8)]
        + [bar("Running loglikelihood requests", 0, 4), bar("Running loglikelihood requests", 2, 4)]
    )
    snap = tracker.snapshot()
    assert phase_totals(snap) == [("loglikelihood", 10, 12)]
    assert snap.percent == 83


def test_hf_rolling_windows_are_not_inference_and_batches_do_not_jump_to_99() -> None:
    """hf loglikelihood_rolling: an unlabeled bar windows every document in a blink, then
    one ``Running loglikelihood requests 1/1`` bar per batch of windows (lm-eval 0.4.13,
    HFLM.loglikelihood_rolling). Neither says how much is left: the percent must not
    claim 99 after the first batch."""
    model = "2026-11-27:18:51:20 INFO     [evaluator:239] Initializing hf model, with arguments: {}"
    windowing = [bar("", 0, 50), bar("", 50, 50), bar("", 50, 50)]
    tracker = feed_all([model, LOG.format("loglikelihood_rolling"), *windowing])
    assert tracker.snapshot().percent == 0  # windowing only: nothing evaluated yet
    for _ in range(3):
        feed_all([bar("Running loglikelihood requests", n, 1) for n in (0, 1, 1)], tracker)
    snap = tracker.snapshot()
    assert phase_totals(snap) == [("loglikelihood_rolling", 3, 0)]  # 3 windows scored
    assert snap.percent == 0
    assert snap.to_dict()["n"] == 3 and snap.to_dict()["total"] is None
    tracker.complete()
    assert tracker.snapshot().percent == 100


def test_rolling_batches_of_an_unknown_model_drop_the_windowing_bar() -> None:
    tracker = feed_all([LOG.format("loglikelihood_rolling"), bar("", 0, 5), bar("", 5, 5)])
    feed_all([bar("Running loglikelihood requests", n, 1) for n in (0, 1)], tracker)
    assert phase_totals(tracker.snapshot()) == [("loglikelihood_rolling", 1, 0)]
    assert tracker.snapshot().percent == 0


def test_api_rolling_requests_bar_is_inference() -> None:
    # API models score each document inside the unlabeled loop: that bar is the progress.
    tracker = feed_all([LOG.format("loglikelihood_rolling"), bar("", 0, 10), bar("", 4, 10)])
    assert phase_totals(tracker.snapshot()) == [("loglikelihood_rolling", 4, 10)]
    assert tracker.snapshot().percent == 40


def test_percent_is_what_tqdm_displays() -> None:
    from tqdm import tqdm  # type: ignore[import-untyped]

    for n, total in [(84, 228), (1, 3), (2, 3), (1, 8), (5, 8), (199, 1000), (7, 9)]:
        shown = tqdm.format_meter(n, total, 1.0)
        tracker = feed_all([LOG.format("loglikelihood"), shown])
        assert f"{tracker.snapshot().percent:3d}%|" in shown, shown
    assert feed_all([LOG.format("x"), tqdm.format_meter(227, 228, 1.0)]).snapshot().percent == 99


def test_cached_requests_count_as_done() -> None:
    """A resumed or requeued job answers part of a phase from its response cache; the
    model's bar then covers only the remainder."""
    tracker = feed_all(
        [
            LOG.format("loglikelihood"),
            "2026-11-27:18:51:21 INFO     [api.model:329] Cached requests: 24, "
            "Requests remaining: 8",
            bar("Requesting API", 0, 8),
        ]
    )
    assert phase_totals(tracker.snapshot()) == [("loglikelihood", 24, 32)]
    assert tracker.snapshot().percent == 75
    tracker.feed(bar("Requesting API", 4, 8))
    assert tracker.snapshot().percent == 88


def test_a_phase_without_a_bar_shows_no_counts() -> None:
    snap = feed_all([LOG.format("generate_until")]).snapshot()
    data = snap.to_dict()
    assert data["phase"] == "generate_until" and data["n"] is None and data["total"] is None


def test_unlabeled_bar_after_finished_phase_is_ignored() -> None:
    # Bootstrapped stderr draws an unlabeled 0/100 bar after inference, with no log line.
    tracker = feed_all([LOG.format("generate_until"), bar("", 0, 6), bar("", 6, 6)])
    before = tracker.snapshot()
    assert tracker.feed(bar("", 0, 100, "[00:00<?, ?it/s]")) is False
    assert tracker.feed(bar("", 40, 100)) is False
    assert tracker.snapshot() == before


def test_building_contexts_between_phases_keeps_counted_progress() -> None:
    tracker = feed_all([LOG.format("loglikelihood"), bar("", 0, 10), bar("", 5, 10)])
    feed_all(
        [
            "2026-11-27:18:51:21 INFO     [api.task:312] Building contexts for x on rank 0...",
            bar("", 0, 50),
            bar("", 50, 50),
        ],
        tracker,
    )
    snap = tracker.snapshot()
    assert phase_totals(snap) == [("loglikelihood", 5, 10)]
    assert snap.phase is None
    assert snap.percent == 50
    feed_all([LOG.format("generate_until"), bar("", 0, 10)], tracker)
    assert tracker.snapshot().percent == 25


def test_preparation_bars_inside_a_phase_do_not_count() -> None:
    tracker = feed_all(
        [
            LOG.format("generate_until"),
            bar("Tokenizing inputs", 6, 6),
            bar("Checking cached requests", 6, 6),
            bar("Processed prompts", 3, 6),
            bar("Map", 10, 10),
            bar("Running generate_until requests", 2, 6),
        ]
    )
    assert phase_totals(tracker.snapshot()) == [("generate_until", 2, 6)]


def test_self_naming_bars_open_phases_without_info_logs() -> None:
    tracker = feed_all(
        [
            bar("", 8, 8),
            bar("Tokenizing inputs", 4, 4),
            bar("Running loglikelihood requests", 32, 32),
            bar("Running generate_until requests", 1, 6),
            bar("Requesting API", 1, 4),
        ]
    )
    assert phase_totals(tracker.snapshot()) == [
        ("loglikelihood", 32, 32),
        ("generate_until", 1, 6),
        ("Requesting API", 1, 4),
    ]


def test_running_log_line_opens_phase_even_without_bars() -> None:
    tracker = ProgressTracker()
    assert tracker.feed(LOG.format("loglikelihood_rolling")) is True
    snap = tracker.snapshot()
    assert snap.phase == PhaseProgress("loglikelihood_rolling", 0, 0, None, None, None)
    assert snap.percent == 0


def test_log_line_glued_after_bar_switches_phase_after_the_bar() -> None:
    tracker = feed_all([LOG.format("loglikelihood")])
    tracker.feed(bar("Requesting API", 4, 4) + LOG.format("generate_until"))
    assert phase_totals(tracker.snapshot()) == [("loglikelihood", 4, 4), ("generate_until", 0, 0)]


def test_complete_is_100_and_sticks() -> None:
    tracker = ProgressTracker()
    tracker.complete()
    assert tracker.snapshot().percent == 100
    feed_all([LOG.format("loglikelihood"), bar("", 1, 10)], tracker)
    assert tracker.snapshot().percent == 100


def test_n_above_total_is_clamped() -> None:
    tracker = feed_all(
        [LOG.format("loglikelihood"), "150%|##########| 15/10 [00:01<00:00, 1.0it/s]"]
    )
    snap = tracker.snapshot()
    assert phase_totals(snap) == [("loglikelihood", 10, 10)]
    assert snap.percent == 99


# --- robustness ----------------------------------------------------------------

NASTY = [
    "",
    "%|",
    "100%|",
    "Requesting API: n/a",
    "Requesting API:  37%|███▋      | n/a [00:39<01:05,  2.21it/s]",
    "Requesting API:  37%|███▋      | 84/n/a [00:39<01:05,  2.21it/s]",
    "Requesting API:  37%|███▋      | 84/? [00:39<01:05,  2.21it/s]",
    "Requesting API:  37%|███▋      | 84/228",
    "Requesting API:  37%|███▋      | 84/22",
    "  0%|          | 0/0 [00:00<?, ?it/s]",
    "100%|█| " + "9" * 5000 + "/1 [00:00<00:00, 1it/s]",
    "100%|█| 1/" + "9" * 5000 + " [00:00<00:00, 1it/s]",
    "50%|█| 1/2 [00:00<00:00, " + "9" * 400 + "." + "9" * 400 + "it/s]",
    "50%|█| 1/2 [" + "9" * 5000 + ":00<00:00, 1it/s]",
    "\x00\x1b[A\ufffd\ud800Requesting API: 5%|\udcff| 1/20 [00:00<00:01, 9.9it/s]",
    "Running  requests",
    "Running " + "x" * 10_000 + " requests",
    "%|" * 10_000,
    "9%|" * 5_000 + "| 1/2 [",
    "█▌▏" * 1000,
    "Building contexts for ",
]


def test_nasty_segments_never_raise() -> None:
    tracker = feed_all([LOG.format("loglikelihood")])
    for seg in NASTY:
        assert isinstance(tracker.feed(seg), bool)
        check_invariants(tracker.snapshot())


def test_only_well_formed_counts_are_taken_from_nasty_segments() -> None:
    counted: list[tuple[int, int, float | None, float | None]] = []
    for seg in NASTY:
        (phase,) = feed_all([LOG.format("loglikelihood"), seg]).snapshot().phases
        if phase.total:
            counted.append((phase.n, phase.total, phase.rate_per_s, phase.elapsed_s))
    # An unparsable rate or clock is dropped; the counts around it are still sound.
    # A bar head far from the segment start (after 5000 "9%|") is not looked for.
    assert counted == [(1, 2, None, 0.0), (1, 2, None, None), (1, 20, 9.9, 0.0)]


def test_truncated_bar_never_yields_a_wrong_total() -> None:
    line = "Requesting API:  37%|███▋      | 84/228 [00:39<01:05,  2.21it/s]"
    for cut in range(len(line) + 1):
        tracker = feed_all([LOG.format("loglikelihood"), line[:cut]])
        phase = tracker.snapshot().phase
        assert phase is not None
        assert (phase.n, phase.total) in ((0, 0), (84, 228))


def check_invariants(snap: ProgressSnapshot) -> None:
    assert 0 <= snap.percent <= 99
    for phase in snap.phases:
        assert 0 <= phase.n <= phase.total
    data = snap.to_dict()
    assert ProgressSnapshot.from_dict(json.loads(json.dumps(data, allow_nan=False))) == snap


def fuzz_segment(rng: random.Random, templates: list[str]) -> str:
    """Random junk, or a real line with random cuts, splices and insertions."""
    alphabet = "0123456789%|/[]<>:,?. itsAPIRung█▏\x1b\ufffd\t-"
    if rng.random() < 0.3:
        return "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 120)))
    chars = list(rng.choice(templates))
    for _ in range(rng.randint(0, 6)):
        pos = rng.randint(0, len(chars))
        action = rng.random()
        if action < 0.4:
            chars.insert(pos, rng.choice(alphabet))
        elif action < 0.8 and chars:
            del chars[min(pos, len(chars) - 1)]
        else:
            chars = chars[:pos]
    return "".join(chars)


def test_fuzz_never_raises_and_keeps_invariants() -> None:
    templates = [
        s for name in ("api_two_phases.txt", "hf_two_phases.txt") for s in segments(name) if s
    ]
    rng = random.Random(20261127)
    for _ in range(40):
        tracker = ProgressTracker()
        for _ in range(100):
            assert isinstance(tracker.feed(fuzz_segment(rng, templates)), bool)
        check_invariants(tracker.snapshot())


# --- serialisation ---------------------------------------------------------------


def test_to_dict_shape_and_round_trip() -> None:
    tracker, _ = run(segments("hf_two_phases.txt"))
    snap = tracker.snapshot()
    data = snap.to_dict()
    assert data["percent"] == 99
    assert data["phase"] == "generate_until"
    assert (data["n"], data["total"], data["rate_per_s"]) == (6, 6, 0.667)
    assert data["phases"] == [p.to_dict() for p in snap.phases]
    assert ProgressSnapshot.from_dict(json.loads(json.dumps(data))) == snap


def test_empty_snapshot_round_trip() -> None:
    data = ProgressSnapshot().to_dict()
    assert data == {
        "percent": 0,
        "phase": None,
        "n": None,
        "total": None,
        "rate_per_s": None,
        "elapsed_s": None,
        "eta_s": None,
        "phases": [],
    }
    assert ProgressSnapshot.from_dict(data) == ProgressSnapshot()


@pytest.mark.parametrize(
    "data",
    [
        None,
        [],
        "x",
        {},
        {"percent": "50", "phases": "nope"},
        {"percent": True, "phase": 3, "phases": [None, 1, {"name": 5}, {}]},
        {"percent": float("nan"), "phases": [{"name": "x", "n": 10**400, "total": -3}]},
        {"percent": 1e300, "phase": "p", "n": 1.5, "rate_per_s": "fast", "eta_s": float("inf")},
    ],
)
def test_from_dict_is_tolerant(data: object) -> None:
    snap = ProgressSnapshot.from_dict(data)
    assert 0 <= snap.percent <= 100
    json.dumps(snap.to_dict(), allow_nan=False)


def test_from_dict_keeps_what_is_valid() -> None:
    snap = ProgressSnapshot.from_dict(
        {
            "percent": 42,
            "phase": "p",
            "n": 1.0,
            "total": 2,
            "phases": [{"name": "p", "n": 1, "total": 2}],
        }
    )
    expected = PhaseProgress("p", 1, 2, None, None, None)
    assert snap == ProgressSnapshot(42, expected, (expected,))
