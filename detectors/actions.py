"""Dispatcher actions (CONTRACT §3), parsed at the edge."""

from __future__ import annotations

from typing import Any

import msgspec
import orjson

ACTIONS = ("ack", "assign", "resolve", "reopen", "flag_report", "block")


class ActionError(Exception):
    """An action that cannot take effect; `reason` goes to incident-actions.dlq."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


class Action(msgspec.Struct, frozen=True):
    action: str
    incident_id: str = ""
    by: str | None = None
    at: str | None = None
    note: str | None = None
    to: str | None = None
    report_id: str | None = None
    reporter: str | None = None
    device: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in msgspec.structs.asdict(self).items() if v is not None and v != ""}


_decoder = msgspec.json.Decoder(Action)


def parse_action(raw: bytes) -> Action:
    """Decode and check one action; ActionError("bad_action", ...) when it cannot be used."""
    try:
        action = _decoder.decode(raw)
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise ActionError("bad_action", str(exc)) from exc
    if action.action not in ACTIONS:
        raise ActionError("bad_action", f"action must be one of {', '.join(ACTIONS)}")
    if action.action != "block" and not action.incident_id:
        raise ActionError("bad_action", "incident_id is required")
    if action.action == "assign" and not action.to:
        raise ActionError("bad_action", "assign needs `to`")
    if action.action == "flag_report" and not action.report_id:
        raise ActionError("bad_action", "flag_report needs `report_id`")
    if action.action == "block" and not (action.reporter or action.device):
        raise ActionError("bad_action", "block needs `reporter` and/or `device`")
    if action.at is not None:
        from geoincident.detectors.timefmt import MAX_EPOCH_MS, MIN_EPOCH_MS, parse_rfc3339_ms

        try:
            at_ms = parse_rfc3339_ms(action.at)
        except ValueError as exc:
            raise ActionError("bad_action", f"at: {exc}") from exc
        if not MIN_EPOCH_MS <= at_ms <= MAX_EPOCH_MS:
            # a time that cannot be written back in RFC 3339 UTC (year 1 at +23:59 is year 0)
            raise ActionError("bad_action", f"at: {action.at!r} is before 1973 or after 9999")
    return action


def encode_action(action: Action) -> bytes:
    return orjson.dumps(action.to_dict())
