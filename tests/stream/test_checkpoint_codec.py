"""The checkpoint codec (stream/checkpoint.py): a worker's state survives the round trip, and
anything that is not a checkpoint is refused with a message saying why."""

from __future__ import annotations

import pickle
import random
import zlib

import h3
import msgspec
import orjson
import pytest

from geoincident.detectors import DetectorParams, Report
from geoincident.detectors.lifecycle import INCIDENT_ATTRIBUTES, Incident
from geoincident.detectors.surge import _Surge
from geoincident.geo import destination
from geoincident.stream.checkpoint import (
    FORMAT_VERSION,
    MAGIC,
    CheckpointError,
    IncidentState,
    SurgeState,
    decode,
    encode,
)
from geoincident.stream.runtime import WorkerCore
from tests.builders import MINUTE_MS, SPOT, T0_MS, line, report, ring
from tests.detectors.test_surge import REGION, background, burst, clock_start

PARTITIONS = (0, 1)
BATCH = 12
CUT_MS = T0_MS + 30 * MINUTE_MS  # the checkpoint is taken at the first batch past this
LOCAL_A = destination(*SPOT, 90.0, 2000.0)
LOCAL_B = destination(*SPOT, 0.0, 3000.0)
LOCAL_C = destination(*SPOT, 200.0, 2500.0)
NEIGHBOUR = sorted(set(h3.grid_disk(REGION, 1)) - {REGION})[0]


def _stream() -> list[Report]:
    """An hour of a city: a district's baseline, a surge over two districts, three local
    incidents, and filler far away that keeps event time moving."""
    rng = random.Random(11)
    reports = [
        clock_start(T0_MS - 60 * MINUTE_MS),
        *background(0.3, T0_MS - 60 * MINUTE_MS, T0_MS + 100 * MINUTE_MS),
        *burst(60, T0_MS + 5 * MINUTE_MS, 10 * MINUTE_MS, "s"),
        # the district next door surges too: it joins the open surge (one object, two keys)
        *burst(40, T0_MS + 8 * MINUTE_MS, 8 * MINUTE_MS, "n", region=NEIGHBOUR),
        # a flood the dispatcher resolves: its key is left cooling down
        *burst(50, T0_MS + 3 * MINUTE_MS, 8 * MINUTE_MS, "w", category="road_flooding", lang="es"),
        *ring(10, 50, centre=LOCAL_A, start_minute=2, step_minutes=1.5, prefix="a", source="app"),
        *ring(7, 50, centre=LOCAL_B, start_minute=10, prefix="b", lang="de"),
        *ring(8, 50, centre=LOCAL_C, start_minute=45, prefix="c"),
    ]
    for n in range(150):  # elsewhere, across the whole stream
        lat, lon = destination(47.0, -120.0, rng.uniform(0, 360), rng.uniform(0, 20_000))
        reports.append(report(f"f{n}", rng.uniform(-60, 110), lat, lon, category="pothole"))
    return sorted(reports, key=lambda r: (r.ts_ms, r.id))


class Worker:
    """A WorkerCore fed like the worker feeds it: batches per partition, actions between."""

    def __init__(self) -> None:
        self.core = WorkerCore(DetectorParams(), "reports")
        self.values: dict[int, list[bytes]] = {p: [] for p in PARTITIONS}
        self.incidents: list[bytes] = []
        self.opened: list[str] = []  # local incident ids, in order of opening
        self.floods: list[str] = []  # road_flooding surge ids
        self.action_offset = 0
        self.now_ms = 0

    def step(self, batch: list[Report]) -> None:
        self.now_ms = max(r.ts_ms for r in batch) + 1_000
        for partition in PARTITIONS:
            records = []
            for n, r in enumerate(batch):
                if n % len(PARTITIONS) == partition:
                    value = line(r)
                    records.append((len(self.values[partition]), value, r.ts_ms))
                    self.values[partition].append(value)
            self._take(self.core.on_reports(partition, records, self.now_ms))

    def act(self, **action: str) -> None:
        value = orjson.dumps(action)
        out = self.core.on_action(value, 0, self.action_offset, self.now_ms)
        assert not out.action_dlq, out.action_dlq
        self.action_offset += 1
        self._take(out)

    def _take(self, out) -> None:
        for event in out.incidents:
            self.incidents.append(event.to_json())
            if event.event == "opened" and event.kind == "local":
                self.opened.append(event.incident_id)
            elif event.event == "opened" and event.category == "road_flooding":
                self.floods.append(event.incident_id)

    def script(self) -> None:
        """Dispatcher actions, once their incidents exist (same decisions in every run)."""
        done = self.action_offset
        if done == 0 and self.floods:
            self.act(action="resolve", incident_id=self.floods[0], by="disp-1")
        elif done == 1 and self.opened:
            first = self.opened[0]
            self.act(action="ack", incident_id=first, by="disp-7", note="crew informed")
            self.act(action="assign", incident_id=first, to="crew-12")
            self.act(action="block", reporter="a-user0", device="dev-x")
        elif done == 4 and len(self.opened) >= 2:
            self.act(action="flag_report", incident_id=self.opened[0], report_id="a1", by="disp-7")
            self.act(action="resolve", incident_id=self.opened[1], by="disp-2")
            self.act(action="block", device="dev-b")


def _batches() -> list[list[Report]]:
    reports = _stream()
    return [reports[n : n + BATCH] for n in range(0, len(reports), BATCH)]


def _run_to_cut() -> tuple[Worker, list[list[Report]]]:
    worker = Worker()
    batches = _batches()
    while batches:
        batch = batches.pop(0)
        worker.step(batch)
        worker.script()
        if worker.now_ms > CUT_MS:
            break
    return worker, batches


@pytest.fixture(scope="module")
def at_cut() -> tuple[Worker, dict]:
    worker, _ = _run_to_cut()
    return worker, worker.core.checkpoint()


def _restored(checkpoint: dict, worker: Worker) -> Worker:
    """A fresh worker restored from `checkpoint`, where `worker` stands (not yet refilled)."""
    other = Worker()
    other.core.restore(checkpoint, worker.now_ms)
    other.values = {p: list(v) for p, v in worker.values.items()}
    other.opened = list(worker.opened)
    other.floods = list(worker.floods)
    other.action_offset = worker.action_offset
    other.now_ms = worker.now_ms
    return other


def _rebuild(worker: Worker, checkpoint: dict) -> None:
    """Refill the windows from the input, partition by partition, as app.py does."""
    for partition, saved in checkpoint["partitions"].items():
        worker.core.rebuild(
            worker.values[partition][saved["rebuild_offset"] : saved["next_offset"]]
        )


# --------------------------------------------------------------------------- round trip


def test_the_stream_reaches_every_kind_of_state_before_the_cut(at_cut):
    """The round trip below is only worth something if the state holds all of it."""
    worker, checkpoint = at_cut
    detector = checkpoint["detector"]
    incidents = list(detector["incidents"].values())
    assert len(incidents) >= 2
    statuses = {incident.status for incident in incidents}
    assert {"acknowledged", "resolved"} <= statuses
    first = detector["incidents"][worker.opened[0]]
    assert [h["action"] for h in first.history] == ["ack", "assign", "flag_report"]
    assert first.history[0] == {
        "action": "ack",
        "incident_id": first.incident_id,
        "by": "disp-7",
        "note": "crew informed",
    }
    assert first.assigned_to == "crew-12" and first.surge_id is None
    assert detector["timers"], "throttled updates / quiet resolutions pending"
    assert detector["blocked_reporters"] == {"a-user0": detector["blocked_reporters"]["a-user0"]}
    assert set(detector["blocked_devices"]) == {"dev-b", "dev-x"}
    surge = detector["surge"]
    assert len(surge["open"]) == 1
    shared = [saved[3] for saved in surge["keys"].values() if saved[3] is not None]
    assert len(shared) == 2 and shared[0] is shared[1], "one surge over two districts"
    assert len(shared[0].keys) == 2
    cooling = [ident for ident, saved in surge["keys"].items() if saved[4] is not None]
    assert [ident[1:] for ident in cooling] == [("road_flooding", "es")]
    assert sorted(checkpoint["partitions"]) == [0, 1]
    assert all(saved["marks"] for saved in checkpoint["partitions"].values())
    assert any(b'"kind":"surge"' in line for line in worker.incidents)


def test_a_decoded_checkpoint_restores_the_same_state(at_cut):
    worker, checkpoint = at_cut
    blob = encode(checkpoint)
    assert blob.startswith(MAGIC + bytes([FORMAT_VERSION]))
    decoded = decode(blob)
    assert encode(decoded) == blob
    assert decoded["seq"] == checkpoint["seq"] and decoded["totals"] == checkpoint["totals"]
    assert decoded["partitions"] == checkpoint["partitions"]
    assert decoded["actions"] == checkpoint.get("actions", {})

    restored = Worker()
    restored.core.restore(decoded, worker.now_ms)
    original = worker.core.detector
    again = restored.core.detector
    assert encode(_with_detector(checkpoint, again.snapshot())) == blob
    assert again.incidents.keys() == original.incidents.keys()
    for incident_id, incident in original.incidents.items():
        copy = again.incidents[incident_id]
        assert copy is not incident
        for name in INCIDENT_ATTRIBUTES:
            assert _plain(getattr(copy, name)) == _plain(getattr(incident, name)), name
        # an event of each says every field the same way, geometry included
        stamp = incident.last_emit_ts_ms
        assert _event_json(copy, stamp) == _event_json(incident, stamp)
    # the surge over two districts is one object again, under both keys and in _open_at
    surges = [key.surge for key in again.surge._keys.values() if key.surge is not None]
    assert len(surges) == 2 and surges[0] is surges[1]
    assert again.surge._open_at and all(s is surges[0] for s in again.surge._open_at.values())
    before = next(k.surge for k in original.surge._keys.values() if k.surge is not None)
    assert surges[0] is not before
    for name in _Surge.__slots__:
        assert _plain(getattr(surges[0], name)) == _plain(getattr(before, name)), name


def test_a_restored_worker_continues_byte_identically():
    worker, batches = _run_to_cut()  # a worker of its own: this one goes on
    checkpoint = worker.core.checkpoint()
    decoded = decode(encode(checkpoint))
    restored = _restored(decoded, worker)
    # both checkpoint again: the same state gives the same bytes
    assert encode(restored.core.checkpoint()) == encode(worker.core.checkpoint())
    _rebuild(restored, decoded)
    assert batches, "the stream must go on after the cut"
    before = len(worker.incidents)
    for batch in batches:
        for one in (worker, restored):
            one.step(batch)
            one.script()
    for one in (worker, restored):
        # a restored resolved incident reopens; then an hour of quiet (idle advance)
        one.act(action="reopen", incident_id=worker.opened[1], by="disp-2")
        one._take(one.core.tick(one.now_ms + 3_600_000))
    continued = worker.incidents[before:]
    assert restored.incidents == continued
    kinds = {
        (e["kind"], e["event"], e.get("resolved_reason")) for e in map(orjson.loads, continued)
    }
    # after the cut: a new incident opens, the old ones and the surge resolve when quiet
    assert ("local", "opened", None) in kinds
    assert ("local", "resolved", "quiet") in kinds
    assert ("surge", "resolved", "quiet") in kinds
    # The incidents end alike too. (Not the whole surge state: SurgeDetector.snapshot leaves
    # out minute counts a key has not folded yet, which can be older than the rebuild reads
    # again, so a restored key's baseline can differ, with pickle as with this codec.)
    ends = [_body(encode(one.core.checkpoint()))["detector"] for one in (worker, restored)]
    assert ends[0]["incidents"] == ends[1]["incidents"]


def test_the_actions_offsets_go_through_when_present(at_cut):
    _, checkpoint = at_cut
    with_actions = {**checkpoint, "actions": {0: 17, 3: 2}}
    assert decode(encode(with_actions))["actions"] == {0: 17, 3: 2}


def test_a_checkpoint_written_before_new_reporter_bursts_decodes_to_none(at_cut):
    worker, checkpoint = at_cut
    assert checkpoint["detector"]["bursts"]["recent"], "the stream has first-time reporters"
    body = _body(encode(checkpoint))
    del body["detector"]["bursts"]
    decoded = decode(_blob(body))
    assert decoded["detector"]["bursts"] == {"counts": {}, "recent": [], "on": [], "sweep_ms": 0}
    restored = Worker()
    restored.core.restore(decoded, worker.now_ms)
    assert restored.core.detector.bursts.snapshot() == decoded["detector"]["bursts"]
    # the rest of the state is there as written
    assert decoded["detector"]["incidents"].keys() == checkpoint["detector"]["incidents"].keys()


def test_the_schema_mirrors_every_slot_of_the_live_classes():
    assert set(IncidentState.__struct_fields__) == set(INCIDENT_ATTRIBUTES)
    # what the class really holds: its slots, or compiled, the attributes mypyc lists
    held = getattr(Incident, "__slots__", None) or Incident.__mypyc_attrs__  # type: ignore[attr-defined]
    assert set(held) == set(INCIDENT_ATTRIBUTES)
    assert set(SurgeState.__struct_fields__) == set(_Surge.__slots__)


def test_state_the_schema_does_not_hold_is_refused_rather_than_dropped(at_cut):
    _, checkpoint = at_cut
    grown = {**checkpoint, "detector": {**checkpoint["detector"], "new_thing": 1}}
    with pytest.raises(CheckpointError, match=r"new_thing.*FORMAT_VERSION"):
        encode(grown)


# --------------------------------------------------------------------------- refusals


def test_a_pickle_is_refused_unread(at_cut):
    _, checkpoint = at_cut
    with pytest.raises(CheckpointError, match=r"not a geoincident checkpoint.*pickle"):
        decode(pickle.dumps(checkpoint, protocol=5))
    # today's blobs: the pickle compressed
    with pytest.raises(CheckpointError, match=r"not a geoincident checkpoint.*zlib"):
        decode(zlib.compress(pickle.dumps(checkpoint, protocol=5), 1))


def test_a_pickle_behind_the_right_header_runs_nothing(at_cut, tmp_path):
    """Even with the magic and version in front, a pickle is only bytes to the decoder."""
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (marker.touch, ())

    blob = MAGIC + bytes([FORMAT_VERSION]) + zlib.compress(pickle.dumps(Payload()))
    with pytest.raises(CheckpointError, match="not valid msgpack|does not match its schema"):
        decode(blob)
    assert not marker.exists()


def test_random_bytes_are_refused():
    noise = random.Random(5).randbytes(4096)
    with pytest.raises(CheckpointError, match="not a geoincident checkpoint"):
        decode(noise)
    with pytest.raises(CheckpointError, match="not valid zlib"):
        decode(MAGIC + bytes([FORMAT_VERSION]) + noise)


def test_empty_bytes_are_refused():
    with pytest.raises(CheckpointError, match="empty"):
        decode(b"")


@pytest.mark.parametrize("keep", [3, 4, 5, 40, -1])
def test_a_truncated_blob_is_refused(at_cut, keep):
    _, checkpoint = at_cut
    blob = encode(checkpoint)
    with pytest.raises(CheckpointError, match="truncated|not a geoincident"):
        decode(blob[:keep])


def test_stray_bytes_after_the_body_are_refused(at_cut):
    _, checkpoint = at_cut
    with pytest.raises(CheckpointError, match="stray bytes"):
        decode(encode(checkpoint) + b"\x00")


def test_another_format_version_is_refused_by_number(at_cut):
    _, checkpoint = at_cut
    blob = bytearray(encode(checkpoint))
    blob[len(MAGIC)] = 7
    with pytest.raises(CheckpointError) as refused:
        decode(bytes(blob))
    assert str(refused.value) == (
        f"checkpoint format version 7 is not supported (this build reads {FORMAT_VERSION})"
    )


def test_a_field_of_the_wrong_type_is_refused_with_its_path(at_cut):
    _, checkpoint = at_cut
    body = _body(encode(checkpoint))
    body["detector"]["seq"] = "12"
    with pytest.raises(CheckpointError) as refused:
        decode(_blob(body))
    assert str(refused.value) == (
        "checkpoint does not match its schema: Expected `int`, got `str` - at `$.detector.seq`"
    )


def test_a_missing_field_and_an_unknown_one_are_refused(at_cut):
    _, checkpoint = at_cut
    body = _body(encode(checkpoint))
    del body["detector"]["incidents"][0]["history"]
    with pytest.raises(CheckpointError, match=r"missing required field `history`"):
        decode(_blob(body))
    body = _body(encode(checkpoint))
    body["detector"]["surge"]["code"] = "os.system"
    with pytest.raises(CheckpointError, match=r"unknown field `code`"):
        decode(_blob(body))


def test_a_surge_key_pointing_nowhere_is_refused(at_cut):
    _, checkpoint = at_cut
    body = _body(encode(checkpoint))
    key = next(k for k in body["detector"]["surge"]["keys"] if k[4] is not None)
    key[4] = 99
    with pytest.raises(CheckpointError, match="refers to surge 99"):
        decode(_blob(body))


# --------------------------------------------------------------------------- size


def test_the_encoded_size_is_no_worse_than_the_pickle(at_cut):
    _, checkpoint = at_cut
    encoded = len(encode(checkpoint))
    pickled = len(zlib.compress(pickle.dumps(checkpoint, protocol=5), 1))
    print(f"checkpoint: codec {encoded} bytes, pickle+zlib {pickled} bytes")
    assert encoded <= 1.5 * pickled


# --------------------------------------------------------------------------- helpers


def _with_detector(checkpoint: dict, snapshot: dict) -> dict:
    return {**checkpoint, "detector": snapshot}


def _event_json(incident: Incident, stamp: int) -> bytes:
    """An event of the incident without touching it (event() bumps the version)."""
    clone = Incident.restored(incident.__getstate__())
    return clone.event("updated", stamp, None).to_json()


def _plain(value: object) -> object:
    """Live helper objects compared by their state."""
    if hasattr(value, "__getstate__") and type(value).__module__.startswith("geoincident"):
        return (type(value).__name__, value.__getstate__())
    return value


def _body(blob: bytes) -> dict:
    """The msgpack body of a blob as plain data, to tamper with."""
    return msgspec.msgpack.decode(zlib.decompress(blob[len(MAGIC) + 1 :]))


def _blob(body: dict) -> bytes:
    return MAGIC + bytes([FORMAT_VERSION]) + zlib.compress(msgspec.msgpack.encode(body))


# ---------------------------------------------------------------------------- stored in chunks


def _table(records):
    table = {}
    for key, value in records:
        table[key] = value
    return table


def test_a_small_checkpoint_is_stored_whole_as_before():
    from geoincident.stream.checkpoint import assembled, stored

    blob = b"GICP" + bytes(1000)
    assert stored(b"checkpoint", blob, 7) == [(b"checkpoint", blob)]
    assert assembled(b"checkpoint", blob, {}.get) == blob


def test_a_large_checkpoint_goes_in_chunks_under_the_kafka_record_limit_and_reads_back():
    """At 20,000 reports/s of a national stream the checkpoint reached 8.7 MB within 30 s
    (reputation holds every reporter seen for weeks): more than the producer would send (the
    worker then stopped, and stopped again at each start) and far more than a Kafka broker's
    1 MiB record limit."""
    import os

    from geoincident.stream.checkpoint import CHUNK_BYTES, assembled, stored

    blob = os.urandom(3 * CHUNK_BYTES + 123)
    records = stored(b"routed/2", blob, 41)
    assert len(records) == 5 and records[-1][0] == b"routed/2"  # the header goes last
    assert max(len(value) for _, value in records) <= CHUNK_BYTES < 1024 * 1024
    table = _table(records)
    assert assembled(b"routed/2", table[b"routed/2"], table.get) == blob


def test_a_checkpoint_cut_short_by_a_crash_leaves_the_previous_one_readable():
    """Chunks of the next checkpoint go under the other parity's keys: a crash before its
    header is written leaves the previous header and its chunks intact."""
    import os

    from geoincident.stream.checkpoint import CHUNK_BYTES, assembled, stored

    first, second = os.urandom(2 * CHUNK_BYTES + 1), os.urandom(2 * CHUNK_BYTES + 2)
    table = _table(stored(b"checkpoint", first, 10))
    for key, value in stored(b"checkpoint", second, 11)[:-1]:  # all but the header
        table[key] = value
    assert assembled(b"checkpoint", table[b"checkpoint"], table.get) == first
    table[b"checkpoint"] = stored(b"checkpoint", second, 11)[-1][1]
    assert assembled(b"checkpoint", table[b"checkpoint"], table.get) == second


def test_a_missing_or_foreign_chunk_is_refused_not_half_read():
    import os

    import pytest

    from geoincident.stream.checkpoint import (
        CHUNK_BYTES,
        CheckpointError,
        assembled,
        chunk_key,
        stored,
    )

    blob = os.urandom(2 * CHUNK_BYTES + 5)
    table = _table(stored(b"checkpoint", blob, 4))
    header = table[b"checkpoint"]
    del table[chunk_key(b"checkpoint", 0, 1)]
    with pytest.raises(CheckpointError, match="chunk 1 of 3"):
        assembled(b"checkpoint", header, table.get)
    table[chunk_key(b"checkpoint", 0, 1)] = os.urandom(CHUNK_BYTES)
    with pytest.raises(CheckpointError, match="do not match"):
        assembled(b"checkpoint", header, table.get)


# ------------------------------------------------------------------------- encoded in steps


@pytest.mark.parametrize("reporters", [0, 1, 15, 16, 7 * 3, 7 * 3 + 1, 65_535, 65_536, 70_001])
def test_a_checkpoint_encoded_in_steps_is_the_same_bytes_as_one_encoded_whole(
    at_cut, monkeypatch, reporters
):
    """The reputation and the bursts' held first reports are encoded a slice per step and
    spliced into the body: the bytes must be exactly those of one encode of the whole state,
    across header sizes (16 and 65,536 entries) and slice ends (here 7 a slice, and 20,000)."""
    from geoincident.stream import checkpoint as codec

    _, checkpoint = at_cut
    rng = random.Random(reporters)
    reputation = {
        f"reporter-{rng.randrange(10**9)}-{n}": (rng.random(), float(n % 3), 0.0, T0_MS + n)
        for n in range(reporters)
    }
    bursts = checkpoint["detector"]["bursts"]
    held = len(bursts["recent"])
    recent = [
        (f"category-{n % 3}", T0_MS + n, f"r{n}", 47.6, -122.3, f"u{n}", f"d:{n}")
        for n in range(reporters)
    ]
    snapshot = {**checkpoint["detector"], "reputation": reputation}
    # the fixture's own held reports (detectors.bursts.Rows), and as many again as reporters
    for detector in (snapshot, {**snapshot, "bursts": {**bursts, "recent": recent}}):
        state = _with_detector(checkpoint, detector)
        whole = _encoded_whole(state)
        rows = len(detector["bursts"]["recent"])
        for size in (7, 20_000):
            monkeypatch.setattr(codec, "REPUTATION_SLICE", size)
            encoding = codec.Encoding(state)
            steps = 1
            while not encoding.step():
                steps += 1
            assert encoding.body() == whole
            assert steps == reporters // size + 1 + rows // size + 1
        decoded = decode(encode(state))["detector"]
        assert decoded["reputation"] == reputation
        assert decoded["bursts"]["recent"] == list(detector["bursts"]["recent"])
    assert held > 0


def test_a_checkpoint_is_encoded_whole_if_a_marker_would_be_ambiguous(at_cut, monkeypatch):
    from geoincident.stream import checkpoint as codec

    _, checkpoint = at_cut
    monkeypatch.setattr(codec.os, "urandom", lambda n: b"\x00")  # found all over the body
    encoding = codec.Encoding(checkpoint)
    assert encoding.step() and encoding.body() == _encoded_whole(checkpoint)


def _encoded_whole(checkpoint: dict) -> bytes:
    """The msgpack body of one encode of the whole state (the held reports listed, the
    reputation as a dict)."""
    from msgspec.structs import replace

    from geoincident.stream import checkpoint as codec

    state = codec._checkpoint_state(checkpoint)
    bursts = replace(state.detector.bursts, recent=list(state.detector.bursts.recent))
    reputation = dict(state.detector.reputation.items())
    detector = replace(state.detector, bursts=bursts, reputation=reputation)
    return codec._encoder.encode(replace(state, detector=detector))


def test_a_checkpoint_being_encoded_holds_the_state_of_when_it_was_taken(at_cut):
    """What changes after an `Encoding` is made (reputation, incidents) is not in it."""
    from geoincident.stream.checkpoint import Encoding, pack

    worker, checkpoint = at_cut
    other = Worker()  # a copy of its own (the fixture's objects are shared by other tests)
    other.core.restore(decode(encode(checkpoint)), worker.now_ms)
    encoding = Encoding(other.core.checkpoint())
    detector = other.core.detector
    reporters = detector.reputation.state_reporters
    for n in range(50):
        detector.reputation.flagged(f"newcomer-{n}", worker.now_ms)
    held = detector.bursts.state_reports
    for n in range(3):  # first reports held by the bursts after the capture
        detector.bursts.observe(report(f"late-first-{n}", 0.0, *SPOT, reporter=f"first-{n}"))
    incidents = list(detector.book.incidents)
    detector.book.incidents.clear()
    while not encoding.step():
        pass
    restored = decode(pack(encoding.body()))
    assert reporters > 0 and len(restored["detector"]["reputation"]) == reporters
    assert held > 0 and detector.bursts.state_reports == held + 3
    assert len(restored["detector"]["bursts"]["recent"]) == held
    assert incidents and list(restored["detector"]["incidents"]) == incidents


def test_a_checkpoint_compressed_a_part_at_a_time_decodes_to_the_same_state(at_cut, monkeypatch):
    """The worker's way (stream/app.py `_write_checkpoint`): the body's parts are taken as they
    are encoded and compressed one after another, and the body is never joined. The blob
    is the header and the body compressed, and the parts taken are the body, in order."""
    from geoincident.stream import checkpoint as codec

    _, checkpoint = at_cut
    monkeypatch.setattr(codec, "REPUTATION_SLICE", 5)
    whole = _encoded_whole(checkpoint)
    encoding, packing, taken = codec.Encoding(checkpoint), codec.Packing(), []
    while True:
        done = encoding.step()
        parts = encoding.take()
        taken += parts
        packing.add(parts)
        if done:
            break
    assert len(taken) > 3
    assert b"".join(taken) == whole
    blob = packing.blob()
    assert blob.startswith(codec._HEADER)
    assert zlib.decompress(blob[len(codec._HEADER) :]) == whole
    assert decode(blob)["detector"].keys() == decode(encode(checkpoint))["detector"].keys()
    with pytest.raises(RuntimeError, match="taken"):
        encoding.body()
