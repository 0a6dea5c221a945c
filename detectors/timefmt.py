"""The one time parser and formatter: RFC 3339 / epoch milliseconds <-> integer epoch ms."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_MS = timedelta(milliseconds=1)

# Integers below this are almost surely epoch *seconds* sent by mistake (it is 1973-03-03 in ms).
MIN_EPOCH_MS = 100_000_000_000
MAX_EPOCH_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z, the last RFC 3339 instant


def datetime_to_ms(moment: datetime) -> int:
    """Epoch milliseconds of an aware datetime, exact (no float rounding)."""
    return (moment - _EPOCH) // _ONE_MS


def parse_rfc3339_ms(text: str) -> int:
    """Epoch ms of an RFC 3339 timestamp with an offset; ValueError otherwise."""
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        raise ValueError(f"timestamp {text!r} has no UTC offset")
    return datetime_to_ms(moment)


def format_ms(epoch_ms: int) -> str:
    """RFC 3339 UTC with milliseconds, e.g. 2026-11-24T09:00:00.123Z."""
    moment = _EPOCH + timedelta(milliseconds=epoch_ms)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"
