"""Reporter reputation: a weight multiplier in [floor, 1] learned from a reporter's history.

Pure, deterministic and in event time, like the rest of the detector core: no clock, no I/O.

What counts
-----------
- corroborated: a report of theirs became a member of a validated incident (it joined an open
  incident, or was among the reports an incident opened with);
- uncorroborated: a report of theirs left its window as a free report, never in an incident;
- flagged: a dispatcher flagged one of their reports as false. A flag is its own piece of
  evidence, weighing `flag_cost` uncorroborated reports; it is added to whatever the report's
  fate recorded (a flagged free report counts 1 + flag_cost).

The formula
-----------
A Beta-style estimate of how often the reporter's reports corroborate, starting from `n0` =
`prior_reports` pseudo-reports at the rate `prior`, with counts C (corroborated),
U (uncorroborated) and F (flagged), each decayed to `now`::

    multiplier = (prior * n0 + C) / (n0 + C + U + flag_cost * F),  clamped to [floor, 1]

Every count decays by 2 ** (-age / half_life) in event time, the pseudo-reports do not: with no
new events the counts fade to nothing and the multiplier returns to the prior, so old history
fades and a reformed reporter recovers. With prior 1 a reporter whose reports all corroborate
stays at exactly 1 ((n0 + C) / (n0 + C)).

Worked example, defaults (prior 1.0, n0 4, flag_cost 3, floor 0.2, half-life 30 days):

- a new reporter: 4 / 4 = 1.0;
- one free report: 4 / 5 = 0.8; two: 4 / 6 = 0.667; four: 4 / 8 = 0.5;
- one flag: 4 / (4 + 3) = 0.571, below one free report (0.8) and two (0.667);
- 6 corroborated and 4 free: (4 + 6) / (4 + 6 + 4) = 0.714;
- 20 free reports in a day: 4 / 24 = 0.167, clamped to the floor 0.2;
- then 60 days (two half-lives) silent: U = 20 / 4 = 5, 4 / 9 = 0.444; after 150 days
  (5 half-lives) U = 0.625, 4 / 4.625 = 0.865; after 300 days U = 0.0195, 4 / 4.0195 = 0.995.

n0 = 4 makes a few events move the weight gradually (one free report costs 20 %, since a
genuine sole witness is also free) while 20 free reports still reach the floor (any n0 up to
8.5 takes them to 0.3 or below). Note that the multiplier estimates the corroboration rate: a
reporter with half of their reports corroborated tends to 0.5 over many reports.

The weight
----------
`weight(reporter, source_weight, now_ms)` is `min(source_weight, source_weight * multiplier)`:
the multiplier is at most 1, so reputation can only lower a source's weight, never raise it,
and never below floor * source_weight. Disabled (`enabled = False`), it is the source weight
and nothing is recorded.

Time and order
--------------
State per reporter is (C, U, F, at_ms): the counts decayed to `at_ms`, the newest event time
recorded for them. Decay is lazy: a read decays the counts to `now_ms` without storing them; an
event at ts >= at_ms decays the counts to ts and moves at_ms there; an event older than at_ms is
added with its own decay, 2 ** (-(at_ms - ts) / half_life), and at_ms stays. Nothing ever decays
backwards: a read at now_ms < at_ms takes the counts as of at_ms. So the state is the sum over
events of 2 ** (-(at_ms - ts) / half_life), whatever order equal or older timestamps came in,
up to float rounding in the last bits. The caller (the detector, from its ordered event-time
loop) records and reads in event-time order, with event times only (never the wall clock), so
a replay of the same input gives the same weights bit for bit.

Memory
------
`forget(now_ms)` drops the reporters whose decayed counts (C + U + flag_cost * F) weigh less
than FORGET_MASS * n0 (1 % of the prior's pseudo-reports) and whose multiplier is within
FORGET_TOLERANCE (0.01) of the prior: forgetting one changes its multiplier by at most that,
and a forgotten reporter starts again at the prior. (The first condition implies the second:
|multiplier - prior| < mass / n0.) With the defaults a reporter with one flag is forgotten
after 6.2 half-lives (187 days) without events; one with 20 free reports after 9 (269 days);
a reporter whose reports all corroborated stays at 1.0 throughout but is kept until their
counts have faded too, as they still offset future free reports. Run it every few minutes of
event time.

A sweep looks only at the reporters that may have faded by then, not at all of them (a pass
over a million reporters took 50 ms, and a national stream made 144 of them a day). Each
reporter is filed under the sweep period of the earliest time their counts could fall below
the mass (their counts as filed, decayed: later events only add to them, so they fade no
sooner), a minute early for float rounding. A sweep takes the reporters filed up to its time,
drops those the rule above drops (the same test as a pass over all would make, so the same
reporters go) and files the rest again under their new time. Memory: one list slot a reporter.

A bound: at most `max_reporters` are held (0: no bound). Fading alone does not bound memory
where most reporters are new (a national stream brings a new reporter with almost every
report, and one free report takes 4.6 half-lives, 139 days, to fade), so when a new reporter
takes the count past the bound, the reporter whose history would fade soonest is forgotten
early: one filed under the earliest period (the latest filed there first: they fade within
the same 10 minutes) whose counts do fade in it; one filed there whose later events put
their fading later is filed again under their own period instead. So the reporters with the
least evidence go first (one free report before twenty, or a flag), and a forgotten reporter
starts again at the prior, as after fading. It happens in the detector's event-time order, so a
replay forgets the same reporters. `evicted` counts them (this process).

`summary()` figures (below half, at the floor, the mean) are as of the last sweep; they are
computed by the first `summary()` after it, one pass over the reporters, so a replay that
reads none pays nothing for them.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from heapq import heappop, heappush
from math import exp2, isfinite, log2
from typing import Any

from geoincident.detectors.bounds import bounded, check

DAY_MS = 86_400_000
# `forget` drops a reporter whose decayed counts weigh less than this many of the prior's
# pseudo-reports and whose multiplier is this close to the prior.
FORGET_MASS = 0.01
FORGET_TOLERANCE = 0.01
# A reporter is filed under periods of this length (ms of event time) of when they may fade,
# and filed this much early, for float rounding.
FILE_PERIOD_MS = 600_000
FILE_EARLY_MS = 60_000


class Standing:
    """A reporter's counts, decayed to `at_ms`: corroborated `c`, uncorroborated `u`, flagged
    `f`. Never changed once made (an event replaces it), so a copy of the dict that holds them
    is a snapshot. A native class of the compiled core: the three counts and the time are
    machine numbers inside the object, some 100 bytes less a reporter than a tuple of four
    Python numbers. The checkpoint stores it as the 4-tuple `plain()`."""

    __slots__ = ("c", "u", "f", "at_ms")

    def __init__(self, c: float, u: float, f: float, at_ms: int) -> None:
        self.c = c
        self.u = u
        self.f = f
        self.at_ms = at_ms

    def plain(self) -> tuple[float, float, float, int]:
        return (self.c, self.u, self.f, self.at_ms)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Standing):
            return NotImplemented
        return self.plain() == other.plain()

    def __repr__(self) -> str:
        return f"Standing{self.plain()!r}"


class Rows:
    """The reporters held and their Standings, as two lists taken together: a snapshot (a
    Standing is never changed) at 16 bytes a reporter, where a copy of the dict costs some 50,
    and the checkpoint takes one every few seconds. Read like the dict it was taken from:
    `len`, iteration over the reporters, `items()`."""

    __slots__ = ("reporters", "standings")

    def __init__(self, reporters: list[str], standings: list[Standing]) -> None:
        self.reporters = reporters
        self.standings = standings

    def __len__(self) -> int:
        return len(self.reporters)

    def __iter__(self) -> Iterator[str]:
        return iter(self.reporters)

    def items(self) -> Iterator[tuple[str, Standing]]:
        return zip(self.reporters, self.standings, strict=True)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Rows):
            return NotImplemented
        return dict(self.items()) == dict(other.items())


@dataclass(frozen=True, slots=True)
class ReputationParams:
    """The `[reputation]` section of the configuration: defaults and range rules of its keys."""

    enabled: bool = True
    # the multiplier of a reporter with no history
    prior: float = bounded(1.0, ge=0.2, le=1.0)
    # n0: how many reports' worth of evidence the prior is
    prior_reports: float = bounded(4.0, gt=0)
    half_life_days: float = bounded(30.0, gt=0)
    floor: float = bounded(0.2, gt=0, le=1.0)
    # one flagged report counts as this many uncorroborated ones
    flag_cost: float = bounded(3.0, ge=1)
    # reporters held at most (0: no bound); past it, those whose history fades soonest go
    max_reporters: int = bounded(1_000_000, ge=0)

    def __post_init__(self) -> None:
        check(self, "reputation")
        if self.prior < self.floor:
            raise ValueError(
                f"reputation.prior must be at least reputation.floor ({self.floor:g}), "
                f"not {self.prior!r}: a new reporter would start below the floor"
            )

    @property
    def half_life_ms(self) -> float:
        return self.half_life_days * DAY_MS


class Reputation:
    """Per reporter decayed counts of corroborated, uncorroborated and flagged reports; the
    multiplier and weight they give. See the module docstring for the formula and the order
    of calls the caller guarantees."""

    __slots__ = (
        "params",
        "_enabled",
        "_prior",
        "_prior_mass",
        "_n0",
        "_floor",
        "_flag_cost",
        "_per_ms",
        "_state",
        "_summary",
        "_as_of_ms",
        "_due",
        "_periods",
        "_filed_to",
        "_fade_log2",
        "_cap",
        "evicted",
    )

    def __init__(self, params: ReputationParams | None = None) -> None:
        self.params = params = params or ReputationParams()
        self._enabled = params.enabled
        self._prior = float(params.prior)
        self._n0 = float(params.prior_reports)
        self._prior_mass = self._prior * self._n0
        self._floor = float(params.floor)
        self._flag_cost = float(params.flag_cost)
        self._per_ms = 1.0 / params.half_life_ms  # decay: exp2(-age_ms * _per_ms)
        self._state: dict[str, Standing] = {}
        self._summary: dict[str, Any] | None = self._figures(None, 0, 0, 0.0)
        self._as_of_ms: int | None = None  # the last sweep (figures computed when read)
        # period number -> reporters that may fade by its end; every period below _filed_to
        # has been swept (see the module docstring)
        self._due: dict[int, list[str]] = {}
        self._periods: list[int] = []  # a heap of the keys of _due
        self._filed_to = 0
        # hl * log2(mass / faded) is when a mass fades below FORGET_MASS * n0
        self._fade_log2 = log2(FORGET_MASS * self._n0)
        self._cap = params.max_reporters
        self.evicted = 0  # reporters forgotten early to stay within max_reporters

    # -- recording ----------------------------------------------------------------------------

    def corroborated(self, reporter: str, ts_ms: int) -> None:
        """A report of `reporter` (event time `ts_ms`) became a member of a validated incident."""
        self._add(reporter, ts_ms, 1.0, 0.0, 0.0)

    def uncorroborated(self, reporter: str, ts_ms: int) -> None:
        """A report of `reporter` left its window free, never part of an incident."""
        self._add(reporter, ts_ms, 0.0, 1.0, 0.0)

    def flagged(self, reporter: str, ts_ms: int) -> None:
        """A dispatcher flagged a report of `reporter` as false (`flag_report`)."""
        self._add(reporter, ts_ms, 0.0, 0.0, 1.0)

    def _add(self, reporter: str, ts_ms: int, dc: float, du: float, df: float) -> None:
        if not self._enabled:
            return
        state = self._state
        entry = state.get(reporter)
        if entry is None:
            state[reporter] = Standing(dc, du, df, ts_ms)
            self._file(reporter, dc + du + self._flag_cost * df, ts_ms)
            if self._cap and len(state) > self._cap:
                self._evict()
            return
        c, u, f, at_ms = entry.c, entry.u, entry.f, entry.at_ms
        if ts_ms > at_ms:  # decay what is held to ts, then add
            d = exp2((at_ms - ts_ms) * self._per_ms)
            state[reporter] = Standing(c * d + dc, u * d + du, f * d + df, ts_ms)
        elif ts_ms == at_ms:
            state[reporter] = Standing(c + dc, u + du, f + df, at_ms)
        else:  # older than what is held: added with its own decay, never decaying backwards
            d = exp2((ts_ms - at_ms) * self._per_ms)
            state[reporter] = Standing(c + dc * d, u + du * d, f + df * d, at_ms)

    # -- reading ------------------------------------------------------------------------------

    def known(self, reporter: str) -> bool:
        """Whether the reporter has a history here (recorded, not yet forgotten)."""
        return reporter in self._state

    def multiplier(self, reporter: str, now_ms: int) -> float:
        """The reporter's multiplier at event time `now_ms`, in [floor, 1]; 1 when disabled."""
        if not self._enabled:
            return 1.0
        entry = self._state.get(reporter)
        if entry is None:
            return self._prior
        return self._multiplier(entry, now_ms)

    def weight(self, reporter: str, source_weight: float, now_ms: int) -> float:
        """`min(source_weight, source_weight * multiplier)`: reputation only ever lowers a
        report's source weight, to no less than floor * source_weight. The hot path (per
        report): a dict lookup, at most one exp2 and a few float operations."""
        if not self._enabled:
            return source_weight
        entry = self._state.get(reporter)
        m = self._prior if entry is None else self._multiplier(entry, now_ms)
        w = source_weight * m
        return w if w < source_weight else source_weight

    def _multiplier(self, entry: Standing, now_ms: int) -> float:
        c, at_ms = entry.c, entry.at_ms
        penalty = entry.u + self._flag_cost * entry.f
        if now_ms > at_ms:
            d = exp2((at_ms - now_ms) * self._per_ms)
            c *= d
            penalty *= d
        m = (self._prior_mass + c) / (self._n0 + c + penalty)
        if m > 1.0:
            return 1.0
        return m if m > self._floor else self._floor

    # -- memory and metrics -------------------------------------------------------------------

    @property
    def state_reporters(self) -> int:
        """Reporters held."""
        return len(self._state)

    def _file(self, reporter: str, mass: float, at_ms: int) -> None:
        """File `reporter` under the period of the earliest time a mass `mass` at `at_ms`
        could have faded (a minute early), and never under one already swept."""
        period = self._period(mass, at_ms)
        due = self._due.get(period)
        if due is None:
            self._due[period] = [reporter]
            heappush(self._periods, period)
        else:
            due.append(reporter)

    def _period(self, mass: float, at_ms: int) -> int:
        """The period (not one already swept) of the earliest time a mass `mass` at `at_ms`
        could have faded, a minute early."""
        if mass > 0.0:
            fades_ms = at_ms + (log2(mass) - self._fade_log2) / self._per_ms - FILE_EARLY_MS
        else:
            fades_ms = float(at_ms)
        return max(int(fades_ms // FILE_PERIOD_MS), self._filed_to)

    def _evict(self) -> None:
        """Forget reporters, those whose history fades soonest first, until at most
        `max_reporters` are held (see the module docstring)."""
        state, due, periods = self._state, self._due, self._periods
        while len(state) > self._cap and periods:
            period = periods[0]
            filed = due[period]
            reporter = filed.pop()
            if not filed:
                del due[period]
                heappop(periods)
            entry = state.get(reporter)
            if entry is None:  # dropped already
                continue
            mass = entry.c + entry.u + self._flag_cost * entry.f
            if self._period(mass, entry.at_ms) > period:  # later events: it fades later
                self._file(reporter, mass, entry.at_ms)
                continue
            del state[reporter]
            self.evicted += 1

    def forget(self, now_ms: int) -> int:
        """Drop the reporters whose history has faded (see the module docstring); return how
        many. Looks at the reporters filed as possibly faded by `now_ms` only."""
        state = self._state
        per_ms, flag_cost, n0 = self._per_ms, self._flag_cost, self._n0
        prior, prior_mass, floor = self._prior, self._prior_mass, self._floor
        faded = FORGET_MASS * n0
        dropped: list[str] = []
        kept: list[tuple[str, float, int]] = []
        last = now_ms // FILE_PERIOD_MS
        due, periods = self._due, self._periods
        while periods and periods[0] <= last:
            for reporter in due.pop(heappop(periods)):
                entry = state.get(reporter)
                if entry is None:  # dropped already (a restore files everyone once)
                    continue
                c, at_ms = entry.c, entry.at_ms
                penalty = entry.u + flag_cost * entry.f
                if now_ms > at_ms:
                    d = exp2((at_ms - now_ms) * per_ms)
                    c *= d
                    penalty *= d
                m = (prior_mass + c) / (n0 + c + penalty)
                if m > 1.0:
                    m = 1.0
                elif m < floor:
                    m = floor
                if c + penalty < faded and abs(m - prior) <= FORGET_TOLERANCE:
                    dropped.append(reporter)
                else:
                    kept.append((reporter, entry.c + entry.u + flag_cost * entry.f, at_ms))
        if last + 1 > self._filed_to:
            self._filed_to = last + 1
        for reporter, mass, at_ms in kept:  # not faded yet: filed again, after this sweep
            self._file(reporter, mass, at_ms)
        if len(dropped) * 4 > len(state):  # a dict never shrinks on `del`: build a new one
            gone = set(dropped)
            self._state = {r: e for r, e in state.items() if r not in gone}
        else:
            for reporter in dropped:
                del state[reporter]
        self._as_of_ms = now_ms
        self._summary = None
        return len(dropped)

    def summary(self) -> dict[str, Any]:
        """Figures for metrics, as of the last `forget` sweep (`as_of_ms`; None before one):
        reporters held, how many below 0.5 and at the floor, their mean multiplier (the prior
        when none); and `evicted`, the reporters this process forgot early
        (max_reporters). The first call after a sweep computes them (one pass over the reporters,
        their counts decayed to the sweep's time); reporters recorded since the sweep are in
        `reporters` only until the next."""
        if self._summary is None:
            self._summary = self._sweep_figures()
        return {**self._summary, "reporters": len(self._state), "evicted": self.evicted}

    def _sweep_figures(self) -> dict[str, Any]:
        as_of_ms = self._as_of_ms
        below_half = at_floor = 0
        total = 0.0
        floor = self._floor
        for entry in self._state.values():
            m = self._multiplier(entry, as_of_ms) if as_of_ms is not None else self._prior
            total += m
            if m < 0.5:
                below_half += 1
            if m <= floor:
                at_floor += 1
        return self._figures(as_of_ms, below_half, at_floor, total)

    def _figures(
        self, as_of_ms: int | None, below_half: int, at_floor: int, total: float
    ) -> dict[str, Any]:
        held = len(self._state)
        return {
            "as_of_ms": as_of_ms,
            "reporters": held,
            "below_half": below_half,
            "at_floor": at_floor,
            "mean_multiplier": total / held if held else self._prior,
        }

    # -- checkpoints --------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Standing]:
        """reporter -> Standing (corroborated, uncorroborated, flagged, at_ms: the counts
        decayed to at_ms; `plain()` is the 4-tuple, and the checkpoint codec writes that). A copy
        of the dict: Standings are never changed, so later events do not reach it. Kept as is
        while disabled, so turning reputation off and on again loses no history."""
        return dict(self._state)

    def rows(self) -> Rows:
        """The same as `snapshot()`, lighter: what the checkpoint takes (see `Rows`)."""
        state = self._state
        return Rows(list(state), list(state.values()))

    def restore(self, snapshot: Mapping[str, Any] | Rows) -> None:
        """Start from a snapshot (Standings, 4-tuples, or the lists a msgpack decode gives
        back)."""
        state: dict[str, Standing] = {}
        for reporter, saved in snapshot.items():
            if isinstance(saved, Standing):
                saved = saved.plain()
            if len(saved) != 4:
                raise ValueError(f"reputation snapshot of {reporter!r}: {saved!r} is not 4 items")
            c, u, f, at_ms = saved
            counts = (float(c), float(u), float(f))
            if not all(isfinite(x) and x >= 0.0 for x in counts):
                raise ValueError(f"reputation snapshot of {reporter!r}: bad counts {saved!r}")
            state[reporter] = Standing(counts[0], counts[1], counts[2], int(at_ms))
        self._state = state
        self._due = {}
        self._periods = []
        self._summary = None
        flag_cost = self._flag_cost
        for reporter, entry in state.items():
            self._file(reporter, entry.c + entry.u + flag_cost * entry.f, entry.at_ms)
        if self._cap and len(state) > self._cap:  # a lower bound than the one it was saved with
            self._evict()
