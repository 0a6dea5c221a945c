"""Score a detector's incidents against the simulator's truth.

Only ``opened`` events are scored: ``kind == "local"`` against the local families, ``kind ==
"surge"`` against the surge truths. An opened local incident is attributed to at most one truth
(same category, within ``max_distance_m`` of the truth's footprint, time spans overlapping with
``slack``); when several qualify, the one sharing most report ids wins, then the nearest, so a
merged close pair counts for one truth and misses the other.

Busy cities add two views. Chance incidents are the false incidents (opened local incidents that
match no planted truth and lie in no planted surge), also per simulated day. An outbreak truth
expects one surge: every opened surge of its category over its regions counts, and so do its
local clumps, with how many of them name one of those surges in ``surge_id``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import h3
import msgspec
import orjson

from .common import haversine_m, parse_ts_ms, percentile, read_jsonl
from .simulate import EXPECT_BY_FAMILY, FAMILIES, OUTBREAK_FAMILY, SURGE_FAMILIES, TruthItem

MAX_DISTANCE_M = 400.0
TIME_SLACK_S = 300.0
# A surge detector may need a few minutes of elevated rate before it fires.
SURGE_TIME_SLACK_S = 900.0


@dataclass(frozen=True, slots=True)
class OpenedIncident:
    incident_id: str
    kind: str
    category: str
    lat: float
    lon: float
    first_ms: int
    validated_ms: int
    last_ms: int
    emitted_ms: int
    report_ids: frozenset[str]
    region: str | None
    # A surge's regions over all its events: ``surge.region``, ``surge.regions`` and ``cells``
    # (a surge may grow over several regions); empty for a local incident.
    regions: frozenset[str] = frozenset()
    # Surges this local incident was linked to by any of its events (the link may come after
    # it opened, once the surge is detected).
    surge_ids: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class OutbreakScore:
    truth_id: str
    category: str
    regions: tuple[str, ...]
    surge_ids: tuple[str, ...]  # opened surges of its category over its regions, in its time
    local: int  # opened local incidents of its category in its disk during it
    local_linked: int  # of those, the ones whose surge_id names one of its surges

    @property
    def surges(self) -> int:
        return len(self.surge_ids)


@dataclass(frozen=True, slots=True)
class FamilyScore:
    family: str
    expect: str
    planted: int
    detected: int  # truths with at least one matching opened incident
    incidents: int  # opened incidents attributed to this family
    splits: int
    delay_p50_s: float | None

    @property
    def rate(self) -> float | None:
        return self.detected / self.planted if self.planted else None


@dataclass(frozen=True, slots=True)
class Evaluation:
    recall: float
    precision: float
    incident_truths: int
    detected: int
    opened_local: int
    matched_local: int
    decoy_hits: int
    splits: int
    false_incidents: int
    surge_local: int
    surge_truths: int
    surge_detected: int
    false_surges: int
    delay_first_report_p50_s: float | None
    delay_first_report_p95_s: float | None
    delay_emit_p50_s: float | None
    delay_emit_p95_s: float | None
    families: tuple[FamilyScore, ...]
    missed_truths: tuple[str, ...] = ()
    decoy_truths_hit: tuple[str, ...] = ()
    false_incident_ids: tuple[str, ...] = ()
    split_truths: tuple[str, ...] = ()
    # Raw per-truth delays (s), for pooling several runs; not part of the JSON output.
    delays_first_report_s: tuple[float, ...] = field(default=(), repr=False)
    delays_emit_s: tuple[float, ...] = field(default=(), repr=False)
    # Simulated hours, from the truth file; None for truth files that do not say.
    duration_h: float | None = None
    outbreaks: tuple[OutbreakScore, ...] = ()

    @property
    def chance_incidents(self) -> int:
        """Opened by background alone: the false incidents, under the name busy cities use."""
        return self.false_incidents

    @property
    def chance_per_day(self) -> float | None:
        if not self.duration_h:
            return None
        return round(self.false_incidents * 24 / self.duration_h, 3)

    # Over all outbreak truths; None without one (0 would read as "missed").
    @property
    def outbreak_surges(self) -> int | None:
        return sum(o.surges for o in self.outbreaks) if self.outbreaks else None

    @property
    def outbreak_local(self) -> int | None:
        return sum(o.local for o in self.outbreaks) if self.outbreaks else None

    @property
    def outbreak_local_linked(self) -> int | None:
        return sum(o.local_linked for o in self.outbreaks) if self.outbreaks else None

    def to_json(self) -> dict:
        return {
            "recall": self.recall,
            "precision": self.precision,
            "incident_truths": self.incident_truths,
            "detected": self.detected,
            "opened_local": self.opened_local,
            "matched_local": self.matched_local,
            "decoy_hits": self.decoy_hits,
            "splits": self.splits,
            "false_incidents": self.false_incidents,
            "chance_incidents": self.chance_incidents,
            "chance_per_day": self.chance_per_day,
            "duration_h": self.duration_h,
            "surge_local": self.surge_local,
            "surge": {
                "truths": self.surge_truths,
                "detected": self.surge_detected,
                "false": self.false_surges,
            },
            "delay_first_report_s": {
                "p50": self.delay_first_report_p50_s,
                "p95": self.delay_first_report_p95_s,
            },
            "delay_emit_s": {"p50": self.delay_emit_p50_s, "p95": self.delay_emit_p95_s},
            "families": {
                f.family: {
                    "expect": f.expect,
                    "planted": f.planted,
                    "detected": f.detected,
                    "rate": f.rate,
                    "incidents": f.incidents,
                    "splits": f.splits,
                    "delay_p50_s": f.delay_p50_s,
                }
                for f in self.families
            },
            "missed_truths": list(self.missed_truths),
            "decoy_truths_hit": list(self.decoy_truths_hit),
            "split_truths": list(self.split_truths),
            "false_incident_ids": list(self.false_incident_ids),
            "outbreak_surges": self.outbreak_surges,
            "outbreak_local": self.outbreak_local,
            "outbreak_local_linked": self.outbreak_local_linked,
            "outbreaks": [
                {
                    "truth_id": o.truth_id,
                    "category": o.category,
                    "regions": list(o.regions),
                    "surges": o.surges,
                    "surge_ids": list(o.surge_ids),
                    "local": o.local,
                    "local_linked": o.local_linked,
                }
                for o in self.outbreaks
            ],
        }


# ---------------------------------------------------------------- loading


@dataclass(frozen=True, slots=True)
class TruthRun:
    items: list[TruthItem]
    duration_h: float | None  # None for truth files that do not say


def load_truth_run(path: Path) -> TruthRun:
    doc = orjson.loads(path.read_bytes())
    items = doc.get("items") if isinstance(doc, dict) else None
    if not isinstance(items, list):
        raise ValueError(f"{path}: not a truth file (no 'items' list)")
    try:
        truths = [msgspec.convert(item, TruthItem) for item in items]
    except msgspec.ValidationError as exc:
        raise ValueError(f"{path}: bad truth item ({exc})") from exc
    return TruthRun(truths, truth_duration_h(doc))


def load_truth(path: Path) -> list[TruthItem]:
    return load_truth_run(path).items


def truth_duration_h(doc: dict) -> float | None:
    """Simulated hours: ``hours``, else ``end - start``; None when the file has neither."""
    hours = doc.get("hours")
    if isinstance(hours, int | float) and not isinstance(hours, bool) and hours > 0:
        return float(hours)
    try:
        span_ms = parse_ts_ms(doc["end"]) - parse_ts_ms(doc["start"])
    except (KeyError, TypeError, ValueError):
        return None
    return span_ms / 3_600_000 if span_ms > 0 else None


def parse_opened(events: Iterable[dict]) -> list[OpenedIncident]:
    """Opened events, once per incident id (an at-least-once topic may repeat them), with the
    surge ids any event of the incident linked it to."""
    opened: dict[str, OpenedIncident] = {}
    surge_links: dict[str, set[str]] = {}
    surge_regions: dict[str, set[str]] = {}
    for event in events:
        incident_id = str(event.get("incident_id"))
        surge_id = event.get("surge_id")
        if isinstance(surge_id, str) and surge_id:
            surge_links.setdefault(incident_id, set()).add(surge_id)
        if event.get("kind") == "surge":
            surge_regions.setdefault(incident_id, set()).update(_surge_regions(event))
        if event.get("event") != "opened":
            continue
        if incident_id in opened:
            continue
        try:
            validated_ms = parse_ts_ms(event["validated_at"])
            first_ms = parse_ts_ms(event.get("first_report_at", validated_ms))
            last_ms = parse_ts_ms(event.get("last_report_at", validated_ms))
            emitted_ms = parse_ts_ms(event.get("emitted_at", validated_ms))
            surge = event.get("surge")
            opened[incident_id] = OpenedIncident(
                incident_id=incident_id,
                kind=str(event.get("kind", "local")),
                category=str(event["category"]),
                lat=float(event["lat"]),
                lon=float(event["lon"]),
                first_ms=min(first_ms, validated_ms),
                validated_ms=validated_ms,
                last_ms=max(last_ms, validated_ms),
                emitted_ms=emitted_ms,
                report_ids=frozenset(event.get("report_ids") or ()),
                region=surge.get("region") if isinstance(surge, dict) else None,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"incident {incident_id}: unusable opened event ({exc!r})") from exc
    return [
        replace(
            incident,
            regions=frozenset(surge_regions.get(incident_id, ())),
            surge_ids=frozenset(surge_links.get(incident_id, ())),
        )
        for incident_id, incident in opened.items()
    ]


def _surge_regions(event: dict) -> set[str]:
    named: list = []
    surge = event.get("surge")
    if isinstance(surge, dict):
        named.append(surge.get("region"))
        if isinstance(surge.get("regions"), list):
            named += surge["regions"]
    if isinstance(event.get("cells"), list):
        named += event["cells"]
    return {cell for cell in named if isinstance(cell, str) and cell}


# ---------------------------------------------------------------- matching


def _overlaps(incident: OpenedIncident, truth: TruthItem, slack_ms: int) -> bool:
    return (
        incident.first_ms <= truth.end_ms + slack_ms
        and incident.last_ms >= truth.start_ms - slack_ms
    )


def truth_regions(truth: TruthItem) -> tuple[str, ...]:
    """A surge truth names one region; an outbreak the comma-separated cells it reached."""
    return tuple(filter(None, truth.region.split(","))) if truth.region else ()


def _in_disk(incident: OpenedIncident, truth: TruthItem) -> bool:
    return haversine_m(incident.lat, incident.lon, truth.lat, truth.lon) <= truth.radius_m


def _touches(incident: OpenedIncident, regions: Sequence[str]) -> bool:
    """The incident's position, or one of its (surge) regions, falls in one of ``regions``."""
    resolution = h3.get_resolution(regions[0])
    wanted = set(regions)
    if h3.latlng_to_cell(incident.lat, incident.lon, resolution) in wanted:
        return True
    for cell in incident.regions:
        if cell in wanted:
            return True
        if not h3.is_valid_cell(cell):
            continue
        cell_resolution = h3.get_resolution(cell)
        if cell_resolution > resolution:
            if h3.cell_to_parent(cell, resolution) in wanted:
                return True
        elif any(h3.cell_to_parent(region, cell_resolution) == cell for region in regions):
            return True
    return False


def _in_region(incident: OpenedIncident, truth: TruthItem) -> bool:
    regions = truth_regions(truth)
    if not regions:
        return _in_disk(incident, truth)
    if truth.family == OUTBREAK_FAMILY and incident.kind != "surge":
        # Its regions reach well past its disk: a local clump belongs to it only inside it.
        return _in_disk(incident, truth)
    return _touches(incident, regions)


def match_local(
    incident: OpenedIncident,
    truths: Sequence[TruthItem],
    *,
    max_distance_m: float = MAX_DISTANCE_M,
    slack_s: float = TIME_SLACK_S,
) -> TruthItem | None:
    slack_ms = round(slack_s * 1000)
    best: tuple[int, float, str] | None = None
    best_truth = None
    for truth in truths:
        if truth.family in SURGE_FAMILIES or truth.category != incident.category:
            continue
        distance_m = haversine_m(incident.lat, incident.lon, truth.lat, truth.lon)
        # The truth's own radius counts: a scatter decoy's members sit 1.3 km from its centre.
        if distance_m > max_distance_m + truth.radius_m or not _overlaps(incident, truth, slack_ms):
            continue
        shared = len(incident.report_ids.intersection(truth.report_ids))
        key = (-shared, distance_m, truth.id)
        if best is None or key < best:
            best, best_truth = key, truth
    return best_truth


def match_surge(
    incident: OpenedIncident, truths: Sequence[TruthItem], *, slack_s: float = SURGE_TIME_SLACK_S
) -> TruthItem | None:
    slack_ms = round(slack_s * 1000)
    for truth in truths:
        if (
            truth.family in SURGE_FAMILIES
            and truth.category == incident.category
            and _overlaps(incident, truth, slack_ms)
            and _in_region(incident, truth)
        ):
            return truth
    return None


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def score_outbreak(
    truth: TruthItem,
    opened: Sequence[OpenedIncident],
    *,
    slack_s: float = TIME_SLACK_S,
    surge_slack_s: float = SURGE_TIME_SLACK_S,
) -> OutbreakScore:
    """Its surges (the goal is one), its local clumps and how many of those name a surge."""
    regions = truth_regions(truth)
    surge_slack_ms = round(surge_slack_s * 1000)
    slack_ms = round(slack_s * 1000)
    surge_ids = tuple(
        i.incident_id
        for i in opened
        if i.kind == "surge"
        and i.category == truth.category
        and _overlaps(i, truth, surge_slack_ms)
        and (_touches(i, regions) if regions else _in_disk(i, truth))
    )
    local = [
        i
        for i in opened
        if i.kind != "surge"
        and i.category == truth.category
        and _overlaps(i, truth, slack_ms)
        and _in_disk(i, truth)
    ]
    return OutbreakScore(
        truth_id=truth.id,
        category=truth.category,
        regions=regions,
        surge_ids=surge_ids,
        local=len(local),
        local_linked=sum(1 for i in local if i.surge_ids.intersection(surge_ids)),
    )


def evaluate(
    events: Iterable[dict],
    truths: Sequence[TruthItem],
    *,
    max_distance_m: float = MAX_DISTANCE_M,
    slack_s: float = TIME_SLACK_S,
    duration_h: float | None = None,
) -> Evaluation:
    """``duration_h`` (the simulated hours) scales chance incidents to a day when given."""
    opened = parse_opened(events)
    matches: dict[str, list[OpenedIncident]] = {t.id: [] for t in truths}
    surge_local: list[OpenedIncident] = []
    false_local: list[OpenedIncident] = []
    false_surges: list[OpenedIncident] = []
    opened_local = 0
    for incident in sorted(opened, key=lambda i: (i.validated_ms, i.incident_id)):
        if incident.kind == "surge":
            truth = match_surge(incident, truths)
            if truth is None:
                false_surges.append(incident)
            else:
                matches[truth.id].append(incident)
            continue
        opened_local += 1
        truth = match_local(incident, truths, max_distance_m=max_distance_m, slack_s=slack_s)
        if truth is not None:
            matches[truth.id].append(incident)
        elif match_surge(incident, truths, slack_s=slack_s) is not None:
            # A surge's reports clumping by chance: scored with the surge, not as a false alarm.
            surge_local.append(incident)
        else:
            false_local.append(incident)

    incident_truths = [t for t in truths if t.expect == "incident"]
    decoy_truths = [t for t in truths if t.expect == "none"]
    surge_truths = [t for t in truths if t.expect == "surge"]
    detected = [t for t in incident_truths if matches[t.id]]
    matched_local = sum(len(matches[t.id]) for t in incident_truths)
    decoy_hits = sum(len(matches[t.id]) for t in decoy_truths)
    split_truths = [t for t in incident_truths if len(matches[t.id]) > 1]
    splits = sum(len(matches[t.id]) - 1 for t in split_truths)

    first_delays_s: list[float] = []
    emit_delays_s: list[float] = []
    for truth in detected:
        first = min(matches[truth.id], key=lambda i: i.validated_ms)
        first_delays_s.append((first.validated_ms - truth.start_ms) / 1000)
        emit_delays_s.append((first.emitted_ms - first.validated_ms) / 1000)

    families = []
    for family in (*FAMILIES, OUTBREAK_FAMILY):
        members = [t for t in truths if t.family == family]
        if not members:
            continue
        hit = [t for t in members if matches[t.id]]
        delays = [(min(i.validated_ms for i in matches[t.id]) - t.start_ms) / 1000 for t in hit]
        families.append(
            FamilyScore(
                family=family,
                expect=EXPECT_BY_FAMILY.get(family, members[0].expect),
                planted=len(members),
                detected=len(hit),
                incidents=sum(len(matches[t.id]) for t in members),
                splits=sum(max(0, len(matches[t.id]) - 1) for t in members),
                delay_p50_s=_round(percentile(delays, 50)),
            )
        )

    scored_local = opened_local - len(surge_local)
    return Evaluation(
        recall=len(detected) / len(incident_truths) if incident_truths else 1.0,
        # No incident opened means no false alarm: precision 1.0 (recall says the rest).
        precision=matched_local / scored_local if scored_local else 1.0,
        incident_truths=len(incident_truths),
        detected=len(detected),
        opened_local=opened_local,
        matched_local=matched_local,
        decoy_hits=decoy_hits,
        splits=splits,
        false_incidents=len(false_local),
        surge_local=len(surge_local),
        surge_truths=len(surge_truths),
        surge_detected=sum(1 for t in surge_truths if matches[t.id]),
        false_surges=len(false_surges),
        delay_first_report_p50_s=_round(percentile(first_delays_s, 50)),
        delay_first_report_p95_s=_round(percentile(first_delays_s, 95)),
        delay_emit_p50_s=_round(percentile(emit_delays_s, 50)),
        delay_emit_p95_s=_round(percentile(emit_delays_s, 95)),
        families=tuple(families),
        missed_truths=tuple(t.id for t in incident_truths if not matches[t.id]),
        decoy_truths_hit=tuple(t.id for t in decoy_truths if matches[t.id]),
        false_incident_ids=tuple(i.incident_id for i in false_local),
        split_truths=tuple(t.id for t in split_truths),
        delays_first_report_s=tuple(first_delays_s),
        delays_emit_s=tuple(emit_delays_s),
        duration_h=duration_h,
        outbreaks=tuple(
            score_outbreak(t, opened, slack_s=slack_s)
            for t in truths
            if t.family == OUTBREAK_FAMILY
        ),
    )


def evaluate_files(incidents_path: Path, truth_path: Path) -> Evaluation:
    run = load_truth_run(truth_path)
    return evaluate(read_jsonl(incidents_path), run.items, duration_h=run.duration_h)


# ---------------------------------------------------------------- presentation


def _fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def render(evaluation: Evaluation) -> list:
    """Rich renderables: the headline numbers and the per-family table."""
    from rich.table import Table

    summary = Table(title="geoincident evaluation", show_header=False)
    summary.add_column("metric")
    summary.add_column("value", justify="right")
    rows = [
        ("recall", f"{evaluation.recall:.3f} ({evaluation.detected}/{evaluation.incident_truths})"),
        (
            "precision",
            f"{evaluation.precision:.3f} ({evaluation.matched_local}/"
            f"{evaluation.opened_local - evaluation.surge_local})",
        ),
        ("opened local incidents", str(evaluation.opened_local)),
        ("decoy hits", str(evaluation.decoy_hits)),
        ("splits", str(evaluation.splits)),
        ("chance incidents (false, from background)", str(evaluation.chance_incidents)),
        (
            "chance incidents per simulated day",
            "-"
            if evaluation.chance_per_day is None
            else f"{evaluation.chance_per_day:.1f} (over {evaluation.duration_h:g} h)",
        ),
        ("local incidents inside a surge", str(evaluation.surge_local)),
        ("surges detected", f"{evaluation.surge_detected}/{evaluation.surge_truths}"),
        ("false surges", str(evaluation.false_surges)),
    ]
    if evaluation.outbreaks:
        rows += [
            (
                "surges on the outbreak (goal: 1 each)",
                f"{evaluation.outbreak_surges} ({len(evaluation.outbreaks)} outbreak(s))",
            ),
            (
                "outbreak local incidents linked to its surge",
                f"{evaluation.outbreak_local_linked}/{evaluation.outbreak_local}",
            ),
        ]
    rows += [
        (
            "delay from first report p50 / p95 (s)",
            f"{_fmt(evaluation.delay_first_report_p50_s)} / "
            f"{_fmt(evaluation.delay_first_report_p95_s)}",
        ),
        (
            "delay from threshold report p50 / p95 (s)",
            f"{_fmt(evaluation.delay_emit_p50_s, 3)} / {_fmt(evaluation.delay_emit_p95_s, 3)}",
        ),
    ]
    for name, value in rows:
        summary.add_row(name, value)

    per_family = Table(title="per family")
    for column in ("family", "expect", "planted", "detected", "rate", "splits", "delay p50 (s)"):
        per_family.add_column(column, justify="left" if column in ("family", "expect") else "right")
    for score in evaluation.families:
        per_family.add_row(
            score.family,
            score.expect,
            str(score.planted),
            str(score.detected),
            _fmt(score.rate, 2),
            str(score.splits),
            _fmt(score.delay_p50_s),
        )
    return [summary, per_family]
