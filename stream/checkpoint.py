"""The worker's checkpoint on the wire: typed, versioned msgpack instead of pickle.

`WorkerCore.checkpoint()` returns a dict holding live objects (incidents, surges, union-finds).
`encode` turns it into bytes, `decode` turns bytes back into a dict of the same shape with
fresh live objects, ready for `WorkerCore.restore` (and through it `Detector.restore` and
`SurgeDetector.restore`), which need no change.

Layout of a blob:

    b"GICP"  format version (1 byte)  zlib(msgpack(Checkpoint))

Why not pickle: unpickling runs whatever code the bytes name, so anyone who can write the
changelog topic could run code in the worker, and a renamed class breaks every checkpoint.
Here the bytes are data only: msgspec decodes them into the Structs below (unknown fields
refused, every type checked) and this module alone builds the live objects from them.
Anything else (a pickle, noise, a truncated or corrupt blob, another format version, a field
of the wrong type) raises `CheckpointError` with a message saying what is wrong.

Two versions, two meanings:

- FORMAT_VERSION (here) is the layout of the bytes, i.e. the Structs of this module. Bump it
  whenever a Struct changes (a field added, removed, renamed or retyped). A build reads only
  its own version: after a bump, a restart refuses the old checkpoint loudly ("format version
  1 is not supported (this build reads 2)") instead of misreading it; the operator then
  replays from the input (or deletes the changelog record) knowingly. The exception is a
  field added with a default that means "nothing yet" (`DetectorState.bursts`): older
  checkpoints decode with it, and an older build still refuses the newer ones (unknown field).
- `checkpoint["version"]` (stream/runtime.py CHECKPOINT_VERSION) is what the state means; it
  is carried through untouched and checked by `WorkerCore.restore`.

Encoding in steps: two parts of the state grow with the stream, the reputation (every
reporter seen, for weeks) and the new-reporter bursts' held first reports (a minute or two of
the stream where every reporter is new); at 20,000 new reporters a second, checkpoints grew
to 10-20 MB within half a minute, and encoding them whole stopped the worker's event loop for
about a second. `Encoding` captures everything when it is made, encodes all but those two
parts at once, and those (copies the live state no longer touches) a slice per `step()`, so
the worker can interleave the steps with processing and compress the body in a thread (zlib
lets go of the interpreter). The bytes are the same as encoding the
whole state in one call (a test compares them).

`encode` refuses a dict with a key this schema does not know, and an Incident or _Surge with
a slot it does not mirror: new state must get a place here (and a version bump), never be
dropped silently.
"""

from __future__ import annotations

import hashlib
import os
import struct
import zlib
from collections.abc import Callable, Iterator
from itertools import islice

import msgspec
from msgspec.structs import replace

from geoincident.detectors.independence import Independence
from geoincident.detectors.lifecycle import INCIDENT_ATTRIBUTES, Incident, MemberRecord
from geoincident.detectors.reputation import Standing
from geoincident.detectors.surge import _Surge
from geoincident.geo.distance import WeightedCentroid

MAGIC = b"GICP"
FORMAT_VERSION = 1
_HEADER = MAGIC + bytes([FORMAT_VERSION])
# zlib level 1, as before: a checkpoint is written about once a second, speed beats ratio.
_ZLIB_LEVEL = 1
# A blob may come from anyone who can write the changelog: bound what it may inflate to.
MAX_DECODED_BYTES = 1 << 30

Key = tuple[int, str, str]  # a surge key: (H3 region as an integer, category, lang)


class CheckpointError(ValueError):
    """Bytes that are not a checkpoint this build can read (or a dict it cannot write)."""


# --------------------------------------------------------------------------- the schema


# gc=False: these Structs hold plain data and never a cycle; left untracked, the collector
# does not walk the hundreds of thousands of them a large checkpoint makes.
class _Base(msgspec.Struct, frozen=True, forbid_unknown_fields=True, gc=False):
    pass


class Centroid(_Base, array_like=True):
    """geo.distance.WeightedCentroid: the running sum of unit vectors."""

    x: float
    y: float
    z: float
    weight: float


class IndependenceState(_Base):
    """detectors.independence.Independence: the union-find, in insertion order."""

    parent: dict[str, str]
    weight: dict[str, float]
    score: float
    groups: int


class Member(_Base, array_like=True):
    """lifecycle.MemberRecord; up to 200 per incident, so stored as a bare array."""

    report_id: str
    reporter: str
    device: str | None
    weight: float


class HistoryEntry(_Base, omit_defaults=True):
    """One dispatcher action in an incident's history (`Action.to_dict()`: empty values
    left out)."""

    action: str
    incident_id: str | None = None
    by: str | None = None
    at: str | None = None
    note: str | None = None
    to: str | None = None
    report_id: str | None = None
    reporter: str | None = None
    device: str | None = None


class IncidentState(_Base):
    """lifecycle.Incident, every slot."""

    incident_id: str
    category: str
    kind: str
    threshold: float
    resolution: int
    status: str
    version: int
    first_ts_ms: int
    validated_ts_ms: int
    last_ts_ms: int
    centroid: Centroid
    cells: list[str]  # a set in the Incident; sorted here so equal states give equal bytes
    points: list[tuple[float, float, int, str | None]]  # (lat, lon, ts_ms, source) per listed id
    report_count: int
    report_ids: list[str]
    report_ids_truncated: bool
    sources: dict[str, int]
    independence: IndependenceState
    members: list[Member]  # the dict's values in order; its keys are their report ids
    members_complete: bool
    jurisdiction: str | None
    last_emit_ts_ms: int
    update_due: bool
    resolved_reason: str | None
    resolved_ts_ms: int | None
    acknowledged_by: str | None
    acknowledged_at: str | None
    assigned_to: str | None
    superseded_by: str | None
    history: list[HistoryEntry]
    max_report_ids: int
    seniority: tuple[int, str]
    surge_id: str | None
    anchor: tuple[float, float] | None
    recent_ts: list[int]
    significance: float
    reach_m: float


class SurgeState(_Base):
    """surge._Surge, every slot: one open surge (it may span several keys)."""

    incident_id: str
    validated_ms: int
    first_ms: int
    last_ms: int
    version: int
    report_count: int
    report_ids: list[str]
    report_ids_truncated: bool
    sources: dict[str, int]
    independence: IndependenceState
    tracked: int
    last_emit_ms: int
    groups_at_emit: int
    update_due: bool
    calm_since_ms: int | None
    peak_ratio: float
    status: str
    resolved_reason: str | None
    lat: float
    lon: float
    h3_cell: str
    radius_m: float
    keys: list[Key]


class KeyState(_Base, array_like=True):
    """One (region, category, lang) of the surge detector: its baseline, surge and cooldown.
    Thousands of them in a busy city, so a bare array."""

    ident: Key
    ewma: float
    ewma_bucket: int
    since_ms: int
    # index into SurgeDetectorState.surges: the keys of a multi-region surge share one object
    surge: int | None
    cooldown_until_ms: int | None
    pending: list[tuple[int, int]]  # (minute bucket, reports) not folded into the baseline yet


class SurgeDetectorState(_Base):
    """What `SurgeDetector.snapshot()` returns."""

    keys: list[KeyState]
    surges: list[SurgeState]
    open: dict[str, Key]  # open surge id -> the key that opened it
    timers: list[tuple[int, int, int, Key | None, str | None]]  # (due, seq, kind, key, surge id)
    seq: int
    clock_ms: int | None
    origin_bucket: int | None
    sweep_scheduled: bool


class BurstsState(_Base):
    """What `NewReporterBursts.snapshot()` returns (detectors/bursts.py)."""

    counts: dict[str, int]  # bursts declared per category since the stream began
    # first-time reports of the last window: (category, ts_ms, report id, lat, lon, reporter,
    # device key)
    recent: list[tuple[str, int, str, float, float, str, str]]
    on: list[tuple[str, float, float, int, int]]  # (category, lat, lon, declared, last active)
    sweep_ms: int


def _no_bursts() -> BurstsState:
    return BurstsState({}, [], [], 0)


class DetectorState(_Base):
    """What `Detector.snapshot()` returns."""

    incidents: list[IncidentState]  # the dict's values in order; keyed by incident_id
    timers: list[tuple[int, int, int, str]]  # (due, seq, kind, incident id)
    max_ts_ms: int | None
    watermark_ms: int | None
    clock_ms: int | None
    counts: dict[str, int]
    blocked_reporters: dict[str, int | None]
    blocked_devices: dict[str, int | None]
    seq: int
    first_ms: int | None
    chance_groups: int
    surge: SurgeDetectorState
    # reporter -> (corroborated, uncorroborated, flagged, decayed to this event time)
    reputation: dict[str, tuple[float, float, float, int]]
    reputation_sweep_ms: int
    # new-reporter bursts; a checkpoint written before them decodes to none (so no format bump)
    bursts: BurstsState = msgspec.field(default_factory=_no_bursts)


class PartitionState(_Base):
    next_offset: int
    rebuild_offset: int
    max_ts_ms: int | None
    marks: list[tuple[int, int]]  # (first offset of a batch, max event time after it)


class Checkpoint(_Base, tag="geoincident.checkpoint"):
    """What `WorkerCore.checkpoint()` returns."""

    version: int  # the runtime's CHECKPOINT_VERSION, checked by WorkerCore.restore
    seq: int
    detector: DetectorState
    totals: dict[str, int]
    partitions: dict[int, PartitionState]
    # actions-topic partition -> next offset to apply; absent from older dicts
    actions: dict[int, int] = {}
    # a routed partition's detector ([scale]): source actions partition -> next source offset
    # to apply (an action routed again is skipped); empty for an unsharded worker
    source_actions: dict[int, int] = {}


def _plain(value: object) -> object:
    """What msgspec cannot encode itself: a reporter's Standing, as its 4-tuple."""
    if isinstance(value, Standing):
        return value.plain()
    raise NotImplementedError(f"cannot encode {type(value).__name__}")


_encoder = msgspec.msgpack.Encoder(enc_hook=_plain)
_decoder = msgspec.msgpack.Decoder(Checkpoint)


# --------------------------------------------------------------------------- encode


def encode(checkpoint: dict) -> bytes:
    """A `WorkerCore.checkpoint()` dict as bytes: magic, format version, zlib(msgpack).

    Keys and slots are checked here; value types only when the bytes are decoded (checking
    them on every write would cost a decode a second), so the round-trip tests guard them."""
    encoding = Encoding(checkpoint)
    while not encoding.step():
        pass
    return pack(encoding.body())


def pack(body: bytes) -> bytes:
    """The blob of an encoded body: magic, format version, zlib."""
    return _HEADER + zlib.compress(body, _ZLIB_LEVEL)


class Packing:
    """A blob compressed a part at a time, as an `Encoding` gives the parts of its body
    (`Encoding.take()`): the body is never held whole, only the compressed blob grows.
    `add` may run in a thread (zlib lets go of the interpreter), one call at a time."""

    __slots__ = ("_compressor", "_parts")

    def __init__(self) -> None:
        self._compressor = zlib.compressobj(_ZLIB_LEVEL)
        self._parts: list[bytes] = [_HEADER]

    def add(self, pieces: list[bytes]) -> None:
        compress = self._compressor.compress
        self._parts.extend(compress(piece) for piece in pieces)

    def blob(self) -> bytes:
        """The blob, once every part was added; decodes as `pack(body)` does."""
        self._parts.append(self._compressor.flush())
        return b"".join(self._parts)


# entries (reporters, held first reports) encoded per `Encoding.step()`: about 4 ms each
REPUTATION_SLICE = 20_000


class Encoding:
    """A checkpoint being encoded to msgpack. Making it captures the state: everything is
    encoded then but the two parts that grow with the stream, the reputation (lists of the
    reporters and of their Standings, which are never changed, `detectors.reputation.Rows`)
    and the bursts' held first reports (lists copied when the snapshot was taken,
    `detectors.bursts.Rows`); those are encoded `REPUTATION_SLICE` entries per `step()` and
    spliced in where markers held their places. `take()` hands the body over as it is made
    (the worker compresses it so, `Packing`); `body()` gives it whole."""

    __slots__ = ("_pieces", "_todo", "_done", "_taken")

    def __init__(self, checkpoint: dict) -> None:
        try:
            state = _checkpoint_state(checkpoint)
        except CheckpointError:
            raise
        except (KeyError, TypeError, AttributeError, ValueError) as exc:
            raise CheckpointError(f"cannot encode the checkpoint: {exc!r}") from exc
        detector = state.detector
        reputation, recent = detector.reputation, detector.bursts.recent
        # their places in the body: markers encoded verbatim, then cut out
        first, second = os.urandom(16), os.urandom(16)
        placed = replace(
            detector,
            reputation=msgspec.Raw(first),
            bursts=replace(detector.bursts, recent=msgspec.Raw(second)),
        )
        whole = _encoder.encode(replace(state, detector=placed))
        self._done = False
        self._taken = False
        if whole.count(first) != 1 or whole.count(second) != 1 or first == second:
            # sixteen random bytes met elsewhere: encode it whole
            listed = replace(detector.bursts, recent=list(recent))
            whole_detector = replace(detector, reputation=dict(reputation.items()), bursts=listed)
            self._pieces = [_encoder.encode(replace(state, detector=whole_detector))]
            self._todo = []
            self._done = True
            return
        head, _, rest = whole.partition(first)
        middle, _, tail = rest.partition(second)
        self._pieces: list[bytes] = [head, _header(dict, len(reputation))]
        # (entries left, their container, what follows the part in the body)
        self._todo: list[tuple[Iterator, type, bytes]] = [
            (iter(reputation.items()), dict, middle + _header(list, len(recent))),
            (iter(recent), list, tail),
        ]

    def step(self) -> bool:
        """Encode the next slice of entries; True once the body is complete."""
        if self._done:
            return True
        items, container, after = self._todo[0]
        part = container(islice(items, REPUTATION_SLICE))
        if part:
            self._pieces.append(_encoder.encode(part)[len(_header(container, len(part))) :])
        if len(part) < REPUTATION_SLICE:  # this part is done: what follows it, then the next
            self._pieces.append(after)
            del self._todo[0]
            if not self._todo:
                self._done = True
                return True
        return False

    def take(self) -> list[bytes]:
        """The parts of the body encoded since the last call, in order (the whole body, once
        `step()` returned True and every part was taken); then `body()` is no longer there."""
        self._taken = True
        pieces, self._pieces = self._pieces, []
        return pieces

    def body(self) -> bytes:
        """The msgpack body, once `step()` returned True (and nothing was taken)."""
        if self._taken:
            raise RuntimeError("the body was taken a part at a time (take())")
        if not self._done:
            raise RuntimeError("the checkpoint is not encoded yet: step() until it returns True")
        if len(self._pieces) > 1:
            self._pieces = [b"".join(self._pieces)]
        return self._pieces[0]


# msgpack's header codes for a map and an array: up to 15 entries, up to 65,535, more
_HEADER_CODES: dict[type, tuple[int, bytes, bytes]] = {
    dict: (0x80, b"\xde", b"\xdf"),
    list: (0x90, b"\xdc", b"\xdd"),
}


def _header(container: type, size: int) -> bytes:
    """The msgpack header of a map (dict) or an array (list) of `size` entries, in its
    shortest form (as msgspec writes it)."""
    fix, short, long = _HEADER_CODES[container]
    if size < 16:
        return bytes([fix | size])
    if size < 1 << 16:
        return short + size.to_bytes(2, "big")
    return long + size.to_bytes(4, "big")


def _fields(
    where: str, given: dict, names: frozenset[str], optional: frozenset[str] = frozenset()
) -> None:
    """The dict must hold exactly these keys (the optional ones may be absent)."""
    extra = given.keys() - names
    if extra:
        raise CheckpointError(
            f"cannot encode the checkpoint: {where} has {sorted(extra)}, which the schema in "
            "stream/checkpoint.py does not hold; add it there and bump FORMAT_VERSION"
        )
    missing = names - optional - given.keys()
    if missing:
        raise CheckpointError(f"cannot encode the checkpoint: {where} lacks {sorted(missing)}")


def _names(struct: type[msgspec.Struct], *less: str) -> frozenset[str]:
    return frozenset(struct.__struct_fields__) - set(less)


def _checkpoint_state(checkpoint: dict) -> Checkpoint:
    _fields(
        "the checkpoint", checkpoint, _names(Checkpoint), frozenset({"actions", "source_actions"})
    )
    partitions = {}
    for number, saved in checkpoint["partitions"].items():
        _fields(f"partition {number}", saved, _names(PartitionState))
        partitions[number] = PartitionState(**{**saved, "marks": list(saved["marks"])})
    return Checkpoint(
        **{
            **checkpoint,
            "detector": _detector_state(checkpoint["detector"]),
            "totals": dict(checkpoint["totals"]),
            "partitions": partitions,
            "actions": dict(checkpoint.get("actions") or {}),
            "source_actions": dict(checkpoint.get("source_actions") or {}),
        }
    )


def _detector_state(snapshot: dict) -> DetectorState:
    _fields("the detector snapshot", snapshot, _names(DetectorState))
    _same_slots("Incident", INCIDENT_ATTRIBUTES, IncidentState)
    incidents = []
    for incident_id, incident in snapshot["incidents"].items():
        if incident.incident_id != incident_id:
            raise CheckpointError(f"incident {incident.incident_id} is filed as {incident_id}")
        incidents.append(_incident_state(incident))
    # the other fields are plain data, kept as they are (_fields checked that they all are)
    surge = _surge_detector_state(snapshot["surge"])
    _fields("the bursts snapshot", snapshot["bursts"], _names(BurstsState))
    bursts = BurstsState(**snapshot["bursts"])
    return DetectorState(**{**snapshot, "incidents": incidents, "surge": surge, "bursts": bursts})


def _incident_state(incident: Incident) -> IncidentState:
    members = []
    for report_id, record in incident.members.items():
        if record.report_id != report_id:  # the dict is rebuilt from the records' ids
            raise CheckpointError(
                f"{incident.incident_id}: member {record.report_id} filed as {report_id}"
            )
        members.append(Member(record.report_id, record.reporter, record.device, record.weight))
    plain = {name: getattr(incident, name) for name in IncidentState.__struct_fields__}
    return IncidentState(
        **{
            **plain,
            "centroid": Centroid(*incident.centroid.__getstate__()),
            "cells": sorted(incident.cells),  # a set: sorted so equal states give equal bytes
            "independence": _independence_state(incident.independence),
            "members": members,
            "history": [HistoryEntry(**entry) for entry in incident.history],
        }
    )


def _independence_state(independence: Independence) -> IndependenceState:
    parent, weight, score, groups = independence.__getstate__()
    return IndependenceState(parent, weight, score, groups)


def _surge_detector_state(snapshot: dict) -> SurgeDetectorState:
    # `surges` is not a key of the dict: the surge objects sit inside `keys`
    _fields("the surge snapshot", snapshot, _names(SurgeDetectorState, "surges"))
    _same_slots("_Surge", _Surge.__slots__, SurgeState)
    # A multi-region surge is one object under several keys: stored once, referred to by
    # position, so the restored keys share one object again (as pickle's memo did).
    surges: list[SurgeState] = []
    position: dict[int, int] = {}
    keys = []
    for ident, saved in snapshot["keys"].items():
        ewma, ewma_bucket, since_ms, surge, cooldown_until_ms, pending = saved
        index = None
        if surge is not None:
            index = position.get(id(surge))
            if index is None:
                index = position[id(surge)] = len(surges)
                surges.append(_surge_state(surge))
        keys.append(KeyState(ident, ewma, ewma_bucket, since_ms, index, cooldown_until_ms, pending))
    return SurgeDetectorState(**{**snapshot, "keys": keys, "surges": surges})


def _surge_state(surge: _Surge) -> SurgeState:
    return SurgeState(
        incident_id=surge.incident_id,
        validated_ms=surge.validated_ms,
        first_ms=surge.first_ms,
        last_ms=surge.last_ms,
        version=surge.version,
        report_count=surge.report_count,
        report_ids=surge.report_ids,
        report_ids_truncated=surge.report_ids_truncated,
        sources=surge.sources,
        independence=_independence_state(surge.independence),
        tracked=surge.tracked,
        last_emit_ms=surge.last_emit_ms,
        groups_at_emit=surge.groups_at_emit,
        update_due=surge.update_due,
        calm_since_ms=surge.calm_since_ms,
        peak_ratio=surge.peak_ratio,
        status=surge.status,
        resolved_reason=surge.resolved_reason,
        lat=surge.lat,
        lon=surge.lon,
        h3_cell=surge.h3_cell,
        radius_m=surge.radius_m,
        keys=surge.keys,
    )


def _same_slots(name: str, attributes: tuple[str, ...], struct: type[msgspec.Struct]) -> None:
    """A slot added to (or renamed in) the live class must get a field here, not vanish.
    (`attributes`: the class's __slots__, which a compiled class does not keep: Incident
    names them in lifecycle.INCIDENT_ATTRIBUTES.)"""
    slots = set(attributes)
    fields = set(struct.__struct_fields__)
    if slots != fields:
        raise CheckpointError(
            f"cannot encode the checkpoint: {name} has slots {sorted(slots - fields)} "
            f"the schema lacks and the schema has {sorted(fields - slots)} it lacks; update "
            "stream/checkpoint.py and bump FORMAT_VERSION"
        )


# --------------------------------------------------------------------------- decode


def decode(blob: bytes | bytearray | memoryview) -> dict:
    """The dict `encode` was given, with fresh live objects; CheckpointError if `blob` is not
    a checkpoint this build reads. Never runs code from the blob."""
    data = bytes(blob)
    if not data:
        raise CheckpointError("not a geoincident checkpoint: it is empty (0 bytes)")
    if not data.startswith(MAGIC):
        raise CheckpointError(
            f"not a geoincident checkpoint (starts with {data[:4]!r}{_guess(data)})"
        )
    if len(data) == len(MAGIC):
        raise CheckpointError("checkpoint is truncated: it ends after its magic bytes")
    version = data[len(MAGIC)]
    if version != FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint format version {version} is not supported "
            f"(this build reads {FORMAT_VERSION})"
        )
    body = _inflate(data[len(_HEADER) :])
    try:
        state = _decoder.decode(body)
    except msgspec.ValidationError as exc:
        raise CheckpointError(f"checkpoint does not match its schema: {exc}") from None
    except msgspec.DecodeError as exc:
        raise CheckpointError(f"checkpoint body is not valid msgpack: {exc}") from None
    return _checkpoint_dict(state)


def _guess(data: bytes) -> str:
    """A hint at what the bytes are instead, for the two usual suspects."""
    if data[:1] == b"\x80":
        return ": a pickle?"
    if len(data) >= 2 and data[0] & 0x0F == 8 and (data[0] << 8 | data[1]) % 31 == 0:
        return ": zlib data, perhaps a pickled checkpoint from before this codec?"
    return ""


def _inflate(compressed: bytes) -> bytes:
    inflater = zlib.decompressobj()
    try:
        body = inflater.decompress(compressed, MAX_DECODED_BYTES)
    except zlib.error as exc:
        raise CheckpointError(f"checkpoint body is not valid zlib data: {exc}") from None
    if inflater.unconsumed_tail:
        raise CheckpointError(f"checkpoint inflates to more than {MAX_DECODED_BYTES} bytes")
    if not inflater.eof:
        raise CheckpointError("checkpoint is truncated: its compressed body ends early")
    if inflater.unused_data:
        raise CheckpointError(
            f"checkpoint has {len(inflater.unused_data)} stray bytes after its body"
        )
    return body


# The containers msgspec decodes are fresh objects no one else holds: they go into the live
# objects as they are, uncopied.


def _checkpoint_dict(state: Checkpoint) -> dict:
    # `actions` is always there: empty when the writer had none
    return {
        **msgspec.structs.asdict(state),
        "detector": _detector_dict(state.detector),
        "partitions": {
            number: msgspec.structs.asdict(saved) for number, saved in state.partitions.items()
        },
    }


def _detector_dict(state: DetectorState) -> dict:
    incidents = {}
    for saved in state.incidents:
        if saved.incident_id in incidents:
            raise CheckpointError(f"checkpoint holds incident {saved.incident_id} twice")
        incidents[saved.incident_id] = _incident(saved)
    return {
        **msgspec.structs.asdict(state),
        "incidents": incidents,
        "surge": _surge_detector_dict(state.surge),
        "bursts": msgspec.structs.asdict(state.bursts),
    }


def _incident(saved: IncidentState) -> Incident:
    # Every slot is set from the saved state below.
    centroid = WeightedCentroid()
    c = saved.centroid
    centroid.__setstate__((c.x, c.y, c.z, c.weight))
    return Incident.restored(
        {
            **msgspec.structs.asdict(saved),
            "centroid": centroid,
            "cells": set(saved.cells),
            "independence": _independence(saved.independence),
            "members": {
                m.report_id: MemberRecord(m.report_id, m.reporter, m.device, m.weight)
                for m in saved.members
            },
            "history": [_history_dict(entry) for entry in saved.history],
        }
    )


def _history_dict(entry: HistoryEntry) -> dict[str, str]:
    # Action.to_dict() leaves out None and "": so does its inverse, in field order
    return {
        name: value
        for name in entry.__struct_fields__
        if (value := getattr(entry, name)) is not None and value != ""
    }


def _independence(saved: IndependenceState) -> Independence:
    independence = Independence()
    independence.__setstate__((saved.parent, saved.weight, saved.score, saved.groups))
    return independence


def _surge_detector_dict(state: SurgeDetectorState) -> dict:
    surges = [_surge(saved) for saved in state.surges]
    keys: dict[Key, tuple] = {}
    for key in state.keys:
        surge = None
        if key.surge is not None:
            if not 0 <= key.surge < len(surges):
                raise CheckpointError(
                    f"checkpoint does not match its schema: surge key {key.ident} refers to "
                    f"surge {key.surge} of {len(surges)}"
                )
            surge = surges[key.surge]
        keys[key.ident] = (
            key.ewma,
            key.ewma_bucket,
            key.since_ms,
            surge,
            key.cooldown_until_ms,
            key.pending,
        )
    for surge_id, ident in state.open.items():
        # SurgeDetector.restore follows each open surge to its key's surge object
        opened = keys.get(ident)
        if opened is None or opened[3] is None or opened[3].incident_id != surge_id:
            raise CheckpointError(
                f"checkpoint does not match its schema: open surge {surge_id} is not on key {ident}"
            )
    fields = msgspec.structs.asdict(state)
    del fields["surges"]  # in the live state they sit inside `keys`
    return {**fields, "keys": keys}


def _surge(saved: SurgeState) -> _Surge:
    # No __init__: every slot is set from the saved state below.
    surge = _Surge.__new__(_Surge)
    for name in SurgeState.__struct_fields__:
        setattr(surge, name, getattr(saved, name))
    surge.independence = _independence(saved.independence)
    return surge


__all__ = ["FORMAT_VERSION", "MAGIC", "CheckpointError", "decode", "encode"]


# ---------------------------------------------------------------------------- stored in chunks

# A checkpoint larger than this is stored as chunks of this size under keys of their own, and
# a small header under the checkpoint's key: Kafka refuses records over the broker's
# `message.max.bytes` (1 MiB by default), and a busy stream's state (reputation: every
# reporter seen for weeks) outgrows it. Smaller ones are stored whole, as before.
CHUNK_BYTES = 512 * 1024
CHUNKED = b"GICH"
_CHUNK_HEADER = struct.Struct(">4sQIIB16s")  # magic, seq, chunks, total bytes, parity, digest


def chunk_key(key: bytes, parity: int, index: int) -> bytes:
    return b"%s/chunk/%d/%d" % (key, parity, index)


def stored(key: bytes, blob: bytes, seq: int) -> list[tuple[bytes, bytes]]:
    """The (key, value) records that store a checkpoint, to be written in order: the chunks
    of a large one (under keys of parity seq % 2, so the ones the previous header names are
    left alone until this header is written) and then its header; a small one whole."""
    if len(blob) <= CHUNK_BYTES:
        return [(key, blob)]
    parity = seq % 2
    chunks = [blob[i : i + CHUNK_BYTES] for i in range(0, len(blob), CHUNK_BYTES)]
    digest = hashlib.blake2b(blob, digest_size=16).digest()
    header = _CHUNK_HEADER.pack(CHUNKED, seq, len(chunks), len(blob), parity, digest)
    return [(chunk_key(key, parity, i), c) for i, c in enumerate(chunks)] + [(key, header)]


def assembled(key: bytes, value: bytes, get: Callable[[bytes], bytes | None]) -> bytes:
    """The checkpoint stored under `key` (its value, and `get` for its chunks); CheckpointError
    when a chunk is missing or does not match its header (never a half-read state)."""
    if not value.startswith(CHUNKED):
        return value
    try:
        _, seq, count, total, parity, digest = _CHUNK_HEADER.unpack(value)
    except struct.error as exc:
        raise CheckpointError(f"chunked checkpoint header: {exc}") from None
    parts = []
    for index in range(count):
        part = get(chunk_key(key, parity, index))
        if part is None:
            raise CheckpointError(f"chunk {index} of {count} of checkpoint {seq} is missing")
        parts.append(part)
    blob = b"".join(parts)
    if len(blob) != total or hashlib.blake2b(blob, digest_size=16).digest() != digest:
        raise CheckpointError(f"the chunks of checkpoint {seq} do not match its header")
    return blob
