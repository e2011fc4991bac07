"""Inference progress of an lm-eval run (0.4.10 through 0.4.13 log alike), parsed from its stderr.

lm-eval has no machine-readable progress: the only signal is tqdm bars mixed with
log lines. The log pump splits stderr on "\\r" and "\\n" and feeds every segment to
:class:`ProgressTracker`, which must survive anything (cut bars, log lines glued
behind a bar, ``n/a`` values, binary junk), because a parser error must never stall
the pump or fail a status request.

What counts as inference:

* ``INFO [evaluator:589] Running <reqtype> requests`` opens a phase named after the
  request type; bars after it belong to that phase. Bars before the first such line
  (datasets, ``Building contexts``) are data preparation and do not count.
* Bars that name themselves open a phase when no logged phase is open (INFO logging
  switched off): hf/vllm ``Running <reqtype> requests: ...`` (named after the type)
  and ``Requesting API`` (named after the description).
* Preparation bars inside a phase never count: ``Tokenizing inputs``, vllm's own
  ``Processed prompts``, cache checks, datasets bars.
* ``Building contexts for ...`` closes the current phase; what it counted is kept.

lm-eval's wording (the phrases above) lives in ``harness/log_wording.py``; tqdm's bar layout
is matched here.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from lmeval_trio.harness import log_wording as wording

# Bar = "desc: pct%|bar| n/total [elapsed<remaining, rate]". The head is looked for
# only near the start (a bar begins its segment; only ANSI codes or a short desc
# precede it) and the tail is matched at its end, so a huge line costs one C scan.
# Digit runs are bounded because int() refuses strings longer than 4300 digits.
_BAR_HEAD = re.compile(r"\d{1,3}%\|")
_BAR_TAIL = re.compile(
    r"[^|\r\n]{0,1000}\|\s{0,8}(?P<n>\d{1,15})/(?P<total>\d{1,15})\s{0,8}\["
    r"(?:(?P<elapsed>[\d:]{1,16}|\?)"
    r"(?:<(?P<remaining>[\d:]{1,16}|\?))?"
    r"(?:,\s{0,8}(?P<rate>\?|\d{1,15}(?:\.\d{1,15})?)(?P<unit>[^\s\],]{0,32}))?)?"
)
_CLOCK = re.compile(r"(?:(\d{1,6}):)?(\d{2}):(\d{2})")  # "mm:ss" or "h:mm:ss"
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
# Real runs have a handful of phases and 1-2 live bars each. The caps only bound
# time, memory and the stored snapshot when stderr is pathological: past them, new
# phases merge into the last one and the oldest live bar is folded into the sums.
_MAX_PHASES = 32
_MAX_LIVE_BARS = 8
_MAX_DESC = 200


@dataclass(frozen=True)
class PhaseProgress:
    """Progress of one request phase (summed over its sub-bars)."""

    name: str
    n: int
    total: int
    rate_per_s: float | None
    elapsed_s: float | None
    eta_s: float | None

    def to_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "n": self.n,
            "total": self.total,
            "rate_per_s": self.rate_per_s,
            "elapsed_s": self.elapsed_s,
            "eta_s": self.eta_s,
        }

    @classmethod
    def from_dict(cls, data: object, name_key: str = "name") -> PhaseProgress | None:
        """Rebuild from stored JSON; None when there is no usable phase name."""
        if not isinstance(data, Mapping) or not isinstance(data.get(name_key), str):
            return None
        return cls(
            name=data[name_key],
            n=_as_count(data.get("n")),
            total=_as_count(data.get("total")),
            rate_per_s=_as_float(data.get("rate_per_s")),
            elapsed_s=_as_float(data.get("elapsed_s")),
            eta_s=_as_float(data.get("eta_s")),
        )


@dataclass(frozen=True)
class ProgressSnapshot:
    """Overall inference progress: what the REST API reports.

    ``percent`` is ``floor(100 * sum(n) / sum(total))`` over the phases seen so far,
    capped at 99 until the job succeeds. Later phases are unknown until lm-eval
    starts them, so the percent can go DOWN when a new phase appears (e.g. 99 after
    loglikelihood, then 84 when generate_until starts).
    """

    percent: int = 0
    phase: PhaseProgress | None = None
    phases: tuple[PhaseProgress, ...] = ()

    def to_dict(self) -> dict[str, object]:
        """JSON-able; repeats the current phase's fields flat for simple clients."""
        cur = self.phase
        counted = cur is not None and (cur.total > 0 or cur.n > 0)  # no "0/0" before a bar
        return {
            "percent": self.percent,
            "phase": cur.name if cur else None,
            "n": cur.n if cur and counted else None,
            "total": cur.total if cur and cur.total > 0 else None,
            "rate_per_s": cur.rate_per_s if cur else None,
            "elapsed_s": cur.elapsed_s if cur else None,
            "eta_s": cur.eta_s if cur else None,
            "phases": [p.to_dict() for p in self.phases],
        }

    @classmethod
    def from_dict(cls, data: object) -> ProgressSnapshot:
        """Inverse of :meth:`to_dict`; tolerant because rows outlive code versions."""
        if not isinstance(data, Mapping):
            return cls()
        raw = data.get("phases")
        items = raw if isinstance(raw, list | tuple) else ()
        phases = tuple(p for p in map(PhaseProgress.from_dict, items) if p is not None)
        return cls(
            percent=min(100, _as_count(data.get("percent"))),
            phase=PhaseProgress.from_dict(data, name_key="phase"),
            phases=phases,
        )


@dataclass(frozen=True)
class _Bar:
    """One parsed tqdm line."""

    desc: str
    n: int
    total: int
    rate_per_s: float | None
    elapsed_s: float | None
    eta_s: float | None

    @property
    def done(self) -> bool:
        return self.n >= self.total


@dataclass
class _Phase:
    """A request phase: live bars by description, plus finished sub-bars folded in."""

    name: str
    from_log: bool
    active: dict[str, _Bar] = field(default_factory=dict)
    folded_n: int = 0
    folded_total: int = 0
    latest: _Bar | None = None
    any_done: bool = False
    batched: bool = False  # hf *_rolling: per-batch window bars; the request count is unknown
    cached: PhaseProgress | None = None  # only the current phase ever changes

    def add_cached(self, count: int) -> None:
        """Requests answered from the response cache are done before the model's bar."""
        self.folded_n += count
        self.folded_total += count
        self.cached = None

    def progress(self) -> PhaseProgress:
        if self.cached is None:
            self.cached = self._compute()
        return self.cached

    def _compute(self) -> PhaseProgress:
        bars = self.active.values()
        last = self.latest
        n = self.folded_n + sum(min(b.n, b.total) for b in bars)
        return PhaseProgress(
            name=self.name,
            n=n,
            # Batched windows: how many there will be is known only at the end, so the
            # total stays unknown (0) rather than a sum that is always one batch ahead.
            total=0 if self.batched else self.folded_total + sum(b.total for b in bars),
            rate_per_s=last.rate_per_s if last else None,
            elapsed_s=last.elapsed_s if last else None,
            eta_s=last.eta_s if last else None,
        )

    def update(self, bar: _Bar) -> bool:
        """Apply a redraw, or start a sub-bar; True if anything changed.

        A line continues the previous bar with the same description when the total
        is equal and n did not go back (tqdm redraws; the final 100% line comes
        twice). Otherwise it is a new sub-bar (hf re-batching, rolling windows) and
        is summed. An unlabeled bar starting after a bar of this phase finished is
        post-processing, not inference (bootstrap stderr draws one with no log
        line before it), and is ignored.
        """
        if self.name.endswith("_rolling") and (bar.desc or self.batched):
            if not bar.desc:
                return False  # hf windows the next requests: preparation
            self._start_batches()
        prev = self.active.get(bar.desc)
        if prev is not None and prev.total == bar.total and bar.n >= prev.n:
            if prev == bar:
                return False
        elif not bar.desc and self.any_done:
            return False
        elif prev is not None:
            self._fold(bar.desc)
        elif len(self.active) >= _MAX_LIVE_BARS:
            self._fold(next(iter(self.active)))
        self.active[bar.desc] = bar
        self.latest = bar
        self.cached = None
        self.any_done = self.any_done or bar.done
        return True

    def _start_batches(self) -> None:
        """hf's loglikelihood_rolling: the unlabeled bar before was only windowing the
        requests (instant); the model runs in per-batch ``Running loglikelihood requests``
        bars, so only those count, and the phase's total is unknown."""
        if not self.batched:
            self.batched = True
            self.active.pop("", None)
            self.folded_n = self.folded_total = 0
            self.any_done = False

    def _fold(self, desc: str) -> None:
        old = self.active.pop(desc)
        self.folded_n += min(old.n, old.total)
        self.folded_total += old.total


class ProgressTracker:
    """Turns stderr segments of one lm-eval run into :class:`ProgressSnapshot`s."""

    def __init__(self) -> None:
        self._phases: list[_Phase] = []
        self._current: _Phase | None = None
        self._complete = False
        self._windowing = False  # the model windows rolling requests first (see above)
        self._snapshot = ProgressSnapshot()

    def feed(self, segment: str) -> bool:
        """Consume one segment (no "\\r"/"\\n"); True if the snapshot changed.

        Never raises: the regexes are built not to, and the catch-all is a last
        line of defence, since a parser bug must not kill the log pump.
        """
        try:
            if not self._consume(segment):
                return False
            return self._refresh()
        except Exception:
            return False

    def snapshot(self) -> ProgressSnapshot:
        return self._snapshot

    def complete(self) -> None:
        """The job succeeded: report 100 whatever the bars said."""
        self._complete = True
        self._refresh()

    def _consume(self, segment: str) -> bool:
        parsed = _parse_bar(segment)
        if parsed is None:
            return self._on_log(segment)
        bar, rest = parsed
        changed = self._on_bar(bar)
        # A log line can be glued behind a bar fragment; it is applied after the bar.
        return self._on_log(rest) or changed

    def _on_log(self, text: str) -> bool:
        if wording.RUNNING_HINT in text and (
            m := wording.RUNNING_LOG.search(text.rstrip()[-wording.RUNNING_TAIL :])
        ):
            self._start_phase(m.group(1), from_log=True)
            return True
        if wording.MODEL_HINT in text and (m := wording.MODEL_LOG.search(text)):
            self._windowing = m.group(1) in wording.WINDOWING_MODELS
            return False
        cur = self._current
        if (
            cur is not None
            and wording.CACHED_HINT in text
            and (m := wording.CACHED_LOG.search(text))
        ):
            cur.add_cached(int(m.group(1)))
            return True
        if self._current is not None and wording.BUILDING_LOG in text:
            self._current = None
            return True
        return False

    def _on_bar(self, bar: _Bar) -> bool:
        counts, name = _classify(bar.desc)
        if not counts:
            return False
        phase = self._phase_for(name)
        return phase is not None and phase.update(bar)

    def _phase_for(self, name: str | None) -> _Phase | None:
        """The phase a bar belongs to; a self-naming bar may open one."""
        cur = self._current
        if name is None or (cur is not None and (cur.from_log or cur.name == name)):
            return cur
        return self._start_phase(name, from_log=False)

    def _start_phase(self, name: str, *, from_log: bool) -> _Phase:
        if len(self._phases) >= _MAX_PHASES:
            self._current = self._phases[-1]
            return self._current
        phase = _Phase(name=name, from_log=from_log)
        if self._windowing and name.endswith("_rolling"):
            phase.batched = True
        self._phases.append(phase)
        self._current = phase
        return phase

    def _refresh(self) -> bool:
        phases = tuple(p.progress() for p in self._phases)
        current = self._current
        snap = ProgressSnapshot(
            percent=_percent(phases, self._complete),
            phase=current.progress() if current is not None else None,
            phases=phases,
        )
        changed = snap != self._snapshot
        self._snapshot = snap
        return changed


@functools.lru_cache(maxsize=256)
def _classify(desc: str) -> tuple[bool, str | None]:
    """(counts as inference, phase name the bar gives itself); cached: descs repeat."""
    if wording.DESC_NOT_INFERENCE.search(desc):
        return False, None
    if m := wording.DESC_REQTYPE.search(desc):
        return True, m.group(1)
    return True, (wording.SELF_NAMED_PHASE if wording.DESC_SELF_NAMED.search(desc) else None)


def _percent(phases: tuple[PhaseProgress, ...], complete: bool) -> int:
    """tqdm's own figure (``f"{100 * n / total:3.0f}%"``: rounded, so 84/228 shows 37%),
    over the phases whose totals are known; never 100 before the job succeeded."""
    if complete:
        return 100
    counted = [p for p in phases if p.total > 0]
    total = sum(p.total for p in counted)
    if total <= 0:
        return 0
    return min(99, int(f"{100 * sum(min(p.n, p.total) for p in counted) / total:.0f}"))


def _parse_bar(segment: str) -> tuple[_Bar, str] | None:
    """The first well-formed bar in the segment and the text after it, if any."""
    if "%|" not in segment:
        return None
    for head in _BAR_HEAD.finditer(segment, 0, _MAX_DESC + 5):
        m = _BAR_TAIL.match(segment, head.end())
        if m is None:
            continue
        total = int(m["total"])
        if total <= 0:
            continue
        desc = _ANSI.sub("", segment[: head.start()]).strip().removesuffix(":").strip()
        bar = _Bar(
            desc=desc,
            n=int(m["n"]),
            total=total,
            rate_per_s=_rate(m["rate"], m["unit"]),
            elapsed_s=_seconds(m["elapsed"]),
            eta_s=_seconds(m["remaining"]),
        )
        return bar, segment[m.end() :]
    return None


def _seconds(text: str | None) -> float | None:
    """tqdm clock ("00:09", "1:02:03") to seconds; None for "?" or junk."""
    m = _CLOCK.fullmatch(text) if text else None
    if m is None:
        return None
    hours, minutes, seconds = m.groups()
    return float(int(hours or 0) * 3600 + int(minutes) * 60 + int(seconds))


def _rate(value: str | None, unit: str | None) -> float | None:
    """Items per second; tqdm flips to "s/it" below 1 it/s, so invert that form.

    The inverse keeps 3 significant digits: tqdm printed only 2 decimals.
    """
    if value is None or value == "?" or not unit:
        return None
    number = float(value)
    if unit.startswith("s/"):
        return float(f"{1 / number:.3g}") if number > 0 else None
    return number if unit.endswith("/s") and math.isfinite(number) else None


def _as_count(value: object) -> int:
    number = _as_float(value)
    return max(0, int(number)) if number is not None else 0


def _as_float(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:  # an int too large for a float
        return None
    return number if math.isfinite(number) else None
