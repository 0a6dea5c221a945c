"""The worker's metrics: names, units, labels and exposition (data contract §4)."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from geoincident import __version__
from geoincident.stream.metrics import (
    ACTION_OUTCOMES,
    ACTIONS,
    REJECT_REASONS,
    REPORT_OUTCOMES,
    WorkerMetrics,
)

CATEGORIES = ("streetlight_out", "pothole")


def samples(metrics: WorkerMetrics) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    body, _ = metrics.render()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(body.decode())
        for s in family.samples
    }


def value(metrics: WorkerMetrics, name: str, **labels: str) -> float:
    return samples(metrics)[(name, frozenset(labels.items()))]


def families(metrics: WorkerMetrics) -> dict[str, str]:
    body, _ = metrics.render()
    return {f.name: f.type for f in text_string_to_metric_families(body.decode())}


def test_contract_metrics_exist_with_their_types() -> None:
    found = families(WorkerMetrics(categories=CATEGORIES))
    # The parser drops a counter's _total suffix from the family name.
    assert found["geoincident_reports"] == "counter"
    assert found["geoincident_reports_rejected"] == "counter"
    assert found["geoincident_incidents"] == "counter"
    assert found["geoincident_actions"] == "counter"
    assert found["geoincident_dlq_records"] == "counter"
    assert found["geoincident_open_incidents"] == "gauge"
    assert found["geoincident_detection_latency_seconds"] == "histogram"
    assert found["geoincident_event_time_lag_seconds"] == "gauge"
    assert found["geoincident_active_cells"] == "gauge"
    assert found["geoincident_state_reports"] == "gauge"
    assert found["geoincident_chance_groups"] == "counter"
    assert found["geoincident_new_reporter_bursts"] == "counter"
    assert found["geoincident_reporters_tracked"] == "gauge"
    assert found["geoincident_reporters_low_weight"] == "gauge"
    assert found["geoincident_reporter_weight_mean"] == "gauge"
    assert found["geoincident_reporters_evicted"] == "counter"
    assert found["geoincident_consumer_lag"] == "gauge"
    assert found["geoincident_build_info"] == "gauge"
    assert found["geoincident_broker_up"] == "gauge"
    assert found["geoincident_broker_outages"] == "counter"


def test_every_own_metric_has_the_prefix_and_process_metrics_are_there() -> None:
    names = set(families(WorkerMetrics()))
    own = {n for n in names if not n.startswith(("process_", "python_"))}
    assert own and all(n.startswith("geoincident_") for n in own)
    assert {"process_cpu_seconds", "process_resident_memory_bytes", "python_info"} <= names


def test_known_label_sets_exist_at_zero_from_the_start() -> None:
    metrics = WorkerMetrics(categories=CATEGORIES)
    for outcome in REPORT_OUTCOMES:
        assert value(metrics, "geoincident_reports_total", outcome=outcome) == 0
    for reason in REJECT_REASONS:
        assert value(metrics, "geoincident_reports_rejected_total", reason=reason) == 0
    for action in ACTIONS:
        for outcome in ACTION_OUTCOMES:
            assert value(metrics, "geoincident_actions_total", action=action, outcome=outcome) == 0
    for category in CATEGORIES:
        assert value(metrics, "geoincident_open_incidents", category=category) == 0
        assert (
            value(
                metrics,
                "geoincident_incidents_total",
                event="opened",
                kind="local",
                category=category,
            )
            == 0
        )
        assert value(metrics, "geoincident_new_reporter_bursts_total", category=category) == 0
    assert value(metrics, "geoincident_dlq_records_total", topic="reports.dlq") == 0
    assert value(metrics, "geoincident_build_info", version=__version__) == 1


def test_the_rejection_reasons_are_the_contracts() -> None:
    assert set(REJECT_REASONS) == {
        "too_large",
        "invalid_utf8",
        "invalid_json",
        "not_an_object",
        "missing_field",
        "bad_type",
        "bad_coordinates",
        "bad_timestamp",
        "future_timestamp",
        "too_late",
        "internal_error",
    }


def test_batch_tallies_add_up() -> None:
    metrics = WorkerMetrics(categories=CATEGORIES)
    metrics.count_outcomes({"accepted": 480, "duplicate": 3, "rejected": 0})
    metrics.count_outcomes({"accepted": 20, "rejected": 2})
    metrics.count_rejections({"bad_coordinates": 1, "too_late": 1})
    metrics.count_incidents({("opened", "local", "pothole"): 2})
    metrics.count_incident("opened", "surge", "gas_leak")  # a category not in the taxonomy
    metrics.count_action("ack", "applied")
    metrics.count_action("launch_rocket", "invalid")  # free text from outside stays bounded
    metrics.count_dlq("reports.dlq", 2)
    metrics.count_burst("pothole")
    metrics.count_burst("gas_leak")  # a category not in the taxonomy gets its series

    assert value(metrics, "geoincident_reports_total", outcome="accepted") == 500
    assert value(metrics, "geoincident_reports_total", outcome="duplicate") == 3
    assert value(metrics, "geoincident_reports_total", outcome="rejected") == 2
    assert value(metrics, "geoincident_reports_rejected_total", reason="too_late") == 1
    labels = {"event": "opened", "kind": "local", "category": "pothole"}
    assert value(metrics, "geoincident_incidents_total", **labels) == 2
    labels = {"event": "opened", "kind": "surge", "category": "gas_leak"}
    assert value(metrics, "geoincident_incidents_total", **labels) == 1
    assert value(metrics, "geoincident_actions_total", action="ack", outcome="applied") == 1
    assert value(metrics, "geoincident_actions_total", action="other", outcome="invalid") == 1
    assert value(metrics, "geoincident_dlq_records_total", topic="reports.dlq") == 2
    assert value(metrics, "geoincident_new_reporter_bursts_total", category="pothole") == 1
    assert value(metrics, "geoincident_new_reporter_bursts_total", category="gas_leak") == 1


def test_labels_outside_the_fixed_sets_are_refused() -> None:
    metrics = WorkerMetrics()
    with pytest.raises(KeyError):
        metrics.count_outcomes({"acepted": 1})
    with pytest.raises(KeyError):
        metrics.count_rejections({"bad_vibes": 1})
    with pytest.raises(KeyError):
        metrics.count_incident("exploded", "local", "pothole")


def test_latency_histogram_is_in_seconds_from_1_ms_to_15_min() -> None:
    metrics = WorkerMetrics()
    metrics.observe_latency(0.0004)
    metrics.observe_latencies([0.2, 42.0, 900.0])
    metrics.observe_latency(-0.001)  # clock skew between hosts must not corrupt the sum
    got = samples(metrics)
    buckets = {
        float(dict(labels)["le"]): v
        for (name, labels), v in got.items()
        if name == "geoincident_detection_latency_seconds_bucket"
    }
    assert min(buckets) == 0.001 and max(b for b in buckets if b != float("inf")) == 900
    assert buckets[600.0] == 4 and buckets[900.0] == 5
    assert buckets[0.001] == 2
    assert buckets[0.25] == 3
    assert buckets[60.0] == 4
    assert buckets[float("inf")] == 5
    assert got[("geoincident_detection_latency_seconds_count", frozenset())] == 5
    assert got[("geoincident_detection_latency_seconds_sum", frozenset())] == pytest.approx(
        942.2004
    )


def test_state_gauges_and_resolved_categories_fall_to_zero() -> None:
    metrics = WorkerMetrics(categories=CATEGORIES)
    metrics.set_state(
        active_cells=12,
        state_reports=340,
        open_incidents={"pothole": 2, "gas_leak": 1},
        event_time_lag_s=125.5,
    )
    metrics.set_state(open_incidents={"pothole": 1})
    assert value(metrics, "geoincident_active_cells") == 12
    assert value(metrics, "geoincident_state_reports") == 340
    assert value(metrics, "geoincident_event_time_lag_seconds") == 125.5
    assert value(metrics, "geoincident_open_incidents", category="pothole") == 1
    assert value(metrics, "geoincident_open_incidents", category="gas_leak") == 0
    metrics.set_event_time_lag(3.0)
    assert value(metrics, "geoincident_event_time_lag_seconds") == 3.0


def test_chance_groups_count_what_the_detector_counted_since_the_worker_started() -> None:
    metrics = WorkerMetrics()
    metrics.set_state(chance_groups=40)  # restored from a checkpoint: history, not this process
    assert value(metrics, "geoincident_chance_groups_total") == 0
    metrics.set_state(chance_groups=43)
    metrics.set_state(chance_groups=43)
    metrics.set_state(chance_groups=50)
    assert value(metrics, "geoincident_chance_groups_total") == 10


def test_consumer_lag_forgets_partitions_lost_in_a_rebalance() -> None:
    metrics = WorkerMetrics()
    metrics.set_consumer_lag({("reports", 0): 10, ("reports", 1): 0})
    metrics.set_consumer_lag({("reports", 1): 7})
    got = samples(metrics)
    lag = {
        dict(labels)["partition"]: v
        for (name, labels), v in got.items()
        if name == "geoincident_consumer_lag"
    }
    assert lag == {"1": 7}


def test_render_gives_the_text_format_and_its_content_type() -> None:
    body, content_type = WorkerMetrics().render()
    assert content_type.startswith("text/plain; version=0.0.4")
    assert b"# TYPE geoincident_reports_total counter" in body


def test_workers_in_one_process_do_not_share_counts() -> None:
    first, second = WorkerMetrics(), WorkerMetrics()
    first.count_outcomes({"accepted": 5})
    assert value(second, "geoincident_reports_total", outcome="accepted") == 0


def test_reputation_gauges_show_the_detectors_summary() -> None:
    metrics = WorkerMetrics(categories=CATEGORIES)
    summary = {"reporters": 12, "below_half": 3, "at_floor": 1, "mean_multiplier": 0.9}
    metrics.set_state(reputation=summary)
    assert value(metrics, "geoincident_reporters_tracked") == 12
    assert value(metrics, "geoincident_reporters_low_weight") == 3
    assert value(metrics, "geoincident_reporter_weight_mean") == 0.9


def test_reporters_evicted_count_what_the_detector_forgot_since_the_worker_started() -> None:
    metrics = WorkerMetrics(categories=CATEGORIES)
    summary = {"reporters": 10, "below_half": 0, "at_floor": 0, "mean_multiplier": 1.0}
    metrics.set_state(reputation={**summary, "evicted": 0})
    assert value(metrics, "geoincident_reporters_evicted_total") == 0
    metrics.set_state(reputation={**summary, "evicted": 7})
    metrics.set_state(reputation={**summary, "evicted": 7})
    metrics.set_state(reputation={**summary, "evicted": 12})
    assert value(metrics, "geoincident_reporters_evicted_total") == 12
