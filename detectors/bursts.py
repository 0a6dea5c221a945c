"""New-reporter bursts: many first-time reporters on many devices at one spot within a minute.

A signal for an operator, never a decision: it opens, blocks and weighs nothing. Accounts
that share devices are already one voice (detectors/independence.py); a flood of new accounts
on as many devices (or with no device id at all) is not, and only a human with the intake's
records can tell a real crowd from a bought one. A real incident brings first-time reporters
too (a gas leak in a street where nobody ever reported anything), so the burst is counted and
logged for someone to look at, and detection goes on exactly as without it.

What counts
-----------
When a report is processed (the detector's ordered event-time loop, before it joins an
incident or waits free) and its reporter is *new* (no history in the reputation tracker:
never seen, or forgotten after months of silence; detectors/reputation.py) and neither it nor
its device is blocked, it is held for `window_s`. A burst is declared when such a report
brings, within `radius_m` of it and inside the `window_s` ending at it, at least
`min_reporters` distinct new reporters on at least `min_devices` distinct devices, reports of
one category. A report without a device id counts as its reporter's own device, as in the
union-find. A reporter's history is recorded when their report joins an incident or leaves
its window free, so a reporter whose first report is still in its window is new again.

One burst counts once
---------------------
A declared burst stays *on* while new reporters keep coming: each new reporter's report within
2 x `radius_m` of where it was declared belongs to it, and moves its last active time on when
at least half the minimums (rounded up) are still met around that report. It ends
`cooldown_s` after its last active time; only then can a burst be declared there again. So a
flood that goes on for an hour is one burst, and a trickle of first-time reporters after it
does not keep it on for ever.

Deterministic
-------------
Event time only, in the detector's processing order: a replay gives the same bursts, whatever
the batch cuts. A late report (processed on arrival, behind the clock) counts against what is
held then, best effort like the rest of late processing.

State
-----
The first-time reports of the last `window_s` (swept every `window_s` of event time), the
bursts that are on, and the running count per category: all in the checkpoint, so a restart
in the middle of a burst neither counts it again nor forgets it. Where every reporter is new
(a national stream) that is a minute or two of the whole stream: over a million reports at
20,000/s. So the held reports are also kept per category in event-time order as they come
(the few processed late, behind the latest of their category, in a list apart), and a
snapshot copies those (one copy of references each) and lists its rows only when it is
encoded (`Rows`), instead of sorting them all at once (0.8 s there). The declared
bursts wait in `pending` (bounded) until the driver takes them for its log and metric.
"""

from __future__ import annotations

import bisect
from collections import deque
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from geoincident.detectors.bounds import bounded, check
from geoincident.detectors.report import Report
from geoincident.detectors.reputation import Reputation
from geoincident.detectors.timefmt import format_ms
from geoincident.geo.distance import haversine_m
from geoincident.geo.grid import BoxTable, DistanceGrid

if TYPE_CHECKING:
    from geoincident.detectors.dispatch import Dispatcher

# A first-time report held, as the checkpoint lists it:
# (category, event time, report id, lat, lon, reporter, device key)
Saved = tuple[str, int, str, float, float, str, str]
# declared bursts waiting for `take`: the driver takes them after every step (far fewer); a
# detector nobody takes from keeps the last this many
PENDING_CAP = 10_000


@dataclass(frozen=True, slots=True)
class BurstParams:
    """The `[detection.bursts]` section: defaults and range rules of its keys."""

    enabled: bool = True
    # the event time a burst's first reports fall within; the state holds first reports this long
    window_s: float = bounded(60.0, gt=0, le=3600)
    # one spot: within this distance of the report that completes the burst
    radius_m: float = bounded(250.0, gt=0, le=5000)
    min_reporters: int = bounded(10, ge=2)
    min_devices: int = bounded(10, ge=1)
    # a burst ends this long after new reporters stopped coming at half the minimums' pace
    cooldown_s: float = bounded(600.0, ge=0)

    def __post_init__(self) -> None:
        check(self, "detection.bursts")

    @property
    def window_ms(self) -> int:
        return int(self.window_s * 1000)

    @property
    def cooldown_ms(self) -> int:
        return int(self.cooldown_s * 1000)


@dataclass(frozen=True, slots=True)
class Burst:
    """One declared burst, as logged: where and when it was declared, and how many new
    reporters and devices were around it then."""

    seq: int  # its number among the bursts since the stream began (1, 2, ...)
    category: str
    ts_ms: int
    lat: float
    lon: float
    reporters: int
    devices: int

    def log_fields(self) -> dict[str, Any]:
        """The fields of its log line: `event=new_reporter_burst category=... lat=... ...`."""
        return {
            "category": self.category,
            "lat": round(self.lat, 6),
            "lon": round(self.lon, 6),
            "at": format_ms(self.ts_ms),
            "reporters": self.reporters,
            "devices": self.devices,
        }


class _On:
    """A burst that is on: where it was declared and when it was last active."""

    __slots__ = ("lat", "lon", "declared_ms", "last_ms")

    def __init__(self, lat: float, lon: float, declared_ms: int, last_ms: int) -> None:
        self.lat = lat
        self.lon = lon
        self.declared_ms = declared_ms
        self.last_ms = last_ms


class NewReporterBursts:
    """`observe(report)` from the detector's loop; `take()` the bursts declared since."""

    def __init__(self, params: BurstParams, reputation: Reputation, dispatcher: Dispatcher) -> None:
        self.params = params
        # "new" is "no history in the reputation tracker": without one, nobody is known
        self.on = params.enabled and reputation.params.enabled
        self._reputation = reputation
        self._dispatcher = dispatcher
        self._window_ms = params.window_ms
        self._cooldown_ms = params.cooldown_ms
        self._radius_m = params.radius_m
        self._half = ((params.min_reporters + 1) // 2, (params.min_devices + 1) // 2)
        # a burst needs at least this many first reports held around it
        self._fewest = max(params.min_reporters, params.min_devices)
        self._grid = DistanceGrid(params.radius_m)
        self._reach = DistanceGrid(2 * params.radius_m)
        # category -> box -> first-time reports: the report itself where it is alone in its box
        # (most boxes), a list in (event time, id) order where two or more are
        self._recent: dict[str, BoxTable] = {}
        # category -> the same reports, for snapshots: in event-time order as they came, and
        # apart the late ones (processed behind the latest of their category), in order too
        self._order: dict[str, deque[Report]] = {}
        self._late: dict[str, list[Report]] = {}
        # category -> box (of `_reach`) -> bursts on
        self._bursts: dict[str, dict[int, list[_On]]] = {}
        self._sweep_ms = 0
        # bursts declared per category since the stream began (checkpointed)
        self.counts: dict[str, int] = {}
        self.total = 0
        self.pending: deque[Burst] = deque(maxlen=PENDING_CAP)

    # -- the detector's loop ------------------------------------------------------------------

    def observe(self, report: Report) -> None:
        """A report being processed, before grouping records anything of it."""
        reporter = report.reporter
        if self._reputation.known(reporter):
            return
        dispatcher = self._dispatcher
        if (dispatcher.blocked_reporters or dispatcher.blocked_devices) and self._blocked(report):
            return
        ts_ms = report.ts_ms
        if ts_ms >= self._sweep_ms:
            self._sweep(ts_ms)
        category, lat, lon = report.category, report.lat, report.lon
        boxes = self._recent.get(category)
        if boxes is None:
            boxes = self._recent[category] = BoxTable()
        self._remember(category, report)
        _hold(boxes, self._grid.box(lat, lon), report)
        around = self._grid.gather_table(boxes, lat, lon)
        going = self._going_on(category, lat, lon, ts_ms) if category in self._bursts else None
        if going is None and len(around) < self._fewest:
            return  # too few first reports around to make a burst: the usual case, made cheap
        start_ms = ts_ms - self._window_ms
        if going is not None:
            if ts_ms > going.last_ms and self._reaches(
                around, lat, lon, start_ms, ts_ms, self._half
            ):
                going.last_ms = ts_ms
            return
        params = self.params
        needed = (params.min_reporters, params.min_devices)
        if not self._reaches(around, lat, lon, start_ms, ts_ms, needed):
            return
        reporters, devices = self._tally(around, lat, lon, start_ms, ts_ms)
        self._declare(Burst(0, category, ts_ms, lat, lon, reporters, devices))

    def take(self) -> list[Burst]:
        """The bursts declared since the last call, in order (for the log and the metric)."""
        taken = list(self.pending)
        self.pending.clear()
        return taken

    def _blocked(self, report: Report) -> bool:
        dispatcher = self._dispatcher
        if report.reporter in dispatcher.blocked_reporters:
            return True
        return report.device is not None and report.device in dispatcher.blocked_devices

    def _within(
        self, around: list[Report], lat: float, lon: float, start_ms: int, end_ms: int
    ) -> Iterator[tuple[str, str]]:
        """(reporter, device key) of the held reports within the radius and in (start, end]."""
        radius_m = self._radius_m
        for held in around:
            if start_ms < held.ts_ms <= end_ms and (
                haversine_m(lat, lon, held.lat, held.lon) <= radius_m
            ):
                yield held.reporter, device_key(held)

    def _reaches(
        self,
        around: list[Report],
        lat: float,
        lon: float,
        start_ms: int,
        end_ms: int,
        needed: tuple[int, int],
    ) -> bool:
        """Whether as many distinct reporters and devices are there (stops once they are)."""
        reporters: set[str] = set()
        devices: set[str] = set()
        for reporter, device in self._within(around, lat, lon, start_ms, end_ms):
            reporters.add(reporter)
            devices.add(device)
            if len(reporters) >= needed[0] and len(devices) >= needed[1]:
                return True
        return False

    def _tally(
        self, around: list[Report], lat: float, lon: float, start_ms: int, end_ms: int
    ) -> tuple[int, int]:
        """How many distinct (reporters, devices) are there."""
        found = list(self._within(around, lat, lon, start_ms, end_ms))
        return len({r for r, _ in found}), len({d for _, d in found})

    def _going_on(self, category: str, lat: float, lon: float, ts_ms: int) -> _On | None:
        """A burst of the category still on at ts_ms within 2 x radius of the point (the one
        declared first, when two are)."""
        boxes = self._bursts.get(category)
        if not boxes:
            return None
        reach_m = 2 * self._radius_m
        cooldown_ms = self._cooldown_ms
        found = None
        for burst in self._reach.gather(boxes, lat, lon):
            if ts_ms <= burst.last_ms + cooldown_ms and (
                haversine_m(lat, lon, burst.lat, burst.lon) <= reach_m
            ):
                if found is None or (burst.declared_ms, burst.lat, burst.lon) < (
                    found.declared_ms,
                    found.lat,
                    found.lon,
                ):
                    found = burst
        return found

    def _declare(self, burst: Burst) -> None:
        self.total += 1
        self.counts[burst.category] = self.counts.get(burst.category, 0) + 1
        self._file(burst.category, _On(burst.lat, burst.lon, burst.ts_ms, burst.ts_ms))
        self.pending.append(
            Burst(
                self.total,
                burst.category,
                burst.ts_ms,
                burst.lat,
                burst.lon,
                burst.reporters,
                burst.devices,
            )
        )

    def _file(self, category: str, burst: _On) -> None:
        boxes = self._bursts.get(category)
        if boxes is None:
            boxes = self._bursts[category] = {}
        boxes.setdefault(self._reach.box(burst.lat, burst.lon), []).append(burst)

    def _sweep(self, now_ms: int) -> None:
        """Forget first reports that left the window and bursts that ended (neither can count
        for a report at now_ms or later); next sweep a window later. Decisions never depend on
        when this runs."""
        oldest_ms = now_ms - self._window_ms
        for boxes in self._recent.values():
            for box, held in boxes.items():
                if type(held) is not list:
                    if held.ts_ms <= oldest_ms:
                        boxes.pop(box)
                elif held[-1].ts_ms <= oldest_ms:
                    boxes.pop(box)
                elif held[0].ts_ms <= oldest_ms:
                    del held[: bisect.bisect_right(held, oldest_ms, key=_ts)]
                    if len(held) == 1:
                        boxes.set(box, held[0])
        for order in self._order.values():  # the same reports as the boxes keep
            while order and order[0].ts_ms <= oldest_ms:
                order.popleft()
        for category, late in self._late.items():
            self._late[category] = [held for held in late if held.ts_ms > oldest_ms]
        cooldown_ms = self._cooldown_ms
        for bursts in self._bursts.values():
            for box in list(bursts):
                on = [b for b in bursts[box] if b.last_ms + cooldown_ms >= now_ms]
                if on:
                    bursts[box] = on
                else:
                    del bursts[box]
        for category in [c for c, boxes in self._recent.items() if not len(boxes)]:
            del self._recent[category]
        for table in (self._bursts, self._order, self._late):
            for category in [c for c, held in table.items() if not held]:
                del table[category]
        self._sweep_ms = (now_ms // self._window_ms + 1) * self._window_ms

    # -- checkpoints --------------------------------------------------------------------------

    @property
    def state_reports(self) -> int:
        """First-time reports held."""
        return sum(len(order) for order in self._order.values()) + sum(
            len(late) for late in self._late.values()
        )

    def _remember(self, category: str, report: Report) -> None:
        order = self._order.get(category)
        if order is None:
            self._order[category] = deque((report,))
        elif order[-1].ts_ms <= report.ts_ms:
            order.append(report)
        else:  # kept apart, so that the sweep takes the oldest from the front
            self._late.setdefault(category, []).append(report)

    def snapshot(self) -> dict[str, Any]:
        """Plain data (the same state gives the same bytes): `recent` lists the held reports
        by category, those in event-time order first, then the late ones."""
        order, late = self._order, self._late
        recent = Rows(
            [
                (category, [*order.get(category, ()), *late.get(category, ())])
                for category in sorted(order.keys() | late.keys())
            ]
        )
        bursts = sorted(
            (category, b.lat, b.lon, b.declared_ms, b.last_ms)
            for category, boxes in self._bursts.items()
            for on in boxes.values()
            for b in on
        )
        return {
            "counts": dict(sorted(self.counts.items())),
            "recent": recent,
            "on": bursts,
            "sweep_ms": self._sweep_ms,
        }

    def restore(self, snapshot: Mapping[str, Any]) -> None:
        """Start from a snapshot (tuples, or the lists a msgpack decode gives back)."""
        self.counts = {str(c): int(n) for c, n in snapshot["counts"].items()}
        self.total = sum(self.counts.values())
        self._recent = {}
        self._order = {}
        self._late = {}
        for category, ts_ms, report_id, lat, lon, reporter, device in snapshot["recent"]:
            boxes = self._recent.get(category)
            if boxes is None:
                boxes = self._recent[category] = BoxTable()
            # what the bursts read of a report: its time, place, reporter and device
            first = Report(
                id=report_id,
                ts_ms=int(ts_ms),
                lat=float(lat),
                lon=float(lon),
                reporter=reporter,
                category=category,
                device=device[2:] if device.startswith("d:") else None,
            )
            _hold(boxes, self._grid.box(lat, lon), first)
            self._remember(category, first)
        self._bursts = {}
        for category, lat, lon, declared_ms, last_ms in snapshot["on"]:
            self._file(category, _On(float(lat), float(lon), int(declared_ms), int(last_ms)))
        self._sweep_ms = int(snapshot["sweep_ms"])


def _hold(boxes: BoxTable, box: int, report: Report) -> None:
    """A first-time report into its box, in (event time, id) order (a late one included)."""
    held = boxes.get(box)
    if held is None:
        boxes.set(box, report)
    elif type(held) is list:
        if not report < held[-1]:
            held.append(report)
        else:  # a late report
            bisect.insort(held, report)
    else:
        boxes.set(box, [held, report] if held < report else [report, held])


class Rows:
    """The rows of a snapshot's held reports, (category, event time, id, lat, lon, reporter,
    device key): lists copied when the snapshot was taken, listed when read (the checkpoint
    encoder reads them a slice at a time)."""

    __slots__ = ("parts", "count")

    def __init__(self, parts: list[tuple[str, list[Report]]]) -> None:
        self.parts = parts
        self.count = sum(len(held) for _, held in parts)

    def __len__(self) -> int:
        return self.count

    def __iter__(self) -> Iterator[Saved]:
        for category, held in self.parts:
            for r in held:
                yield (category, r.ts_ms, r.id, r.lat, r.lon, r.reporter, device_key(r))

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Rows):
            return list(self) == list(other)
        if isinstance(other, list):
            return [list(row) for row in self] == [list(row) for row in other]
        return NotImplemented

    def __repr__(self) -> str:
        return f"Rows({list(self)!r})"


def _ts(report: Report) -> int:
    return report.ts_ms


def device_key(report: Report) -> str:
    """The device a report counts for: its device id, or its reporter's own when it has none
    (kept apart: a reporter named like some device is not that device)."""
    device = report.device
    return "d:" + device if device else "r:" + report.reporter
