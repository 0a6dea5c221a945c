"""Range rules of the detector's parameters, declared once on the dataclass fields.

A field declared with `bounded(default, gt=0)` carries its rule in its metadata. The dataclass
enforces it (`check`, from its `__post_init__`) and the config loader turns the same metadata
into the constraints of the config key (stream/config.py), so a key's default and its rule are
written in one place. Pure: no pydantic here, the detector core has no config dependency.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field, fields
from typing import Any

BOUNDS = "geoincident.bounds"  # the metadata key


@dataclass(frozen=True, slots=True)
class Bounds:
    gt: float | None = None
    ge: float | None = None
    lt: float | None = None
    le: float | None = None
    # The bounds hold for every item of a sequence (or every value of a mapping), not the value.
    each: bool = False
    nonempty: bool = False

    def limits(self) -> dict[str, float]:
        """The bounds that are set, by name (the names pydantic's `Field` takes)."""
        named = {"gt": self.gt, "ge": self.ge, "lt": self.lt, "le": self.le}
        return {name: limit for name, limit in named.items() if limit is not None}

    def admits(self, value: Any) -> bool:
        if not self.each:
            return self._admits_one(value)
        items = list(value.values() if isinstance(value, Mapping) else value)
        if self.nonempty and not items:
            return False
        return all(self._admits_one(item) for item in items)

    def _admits_one(self, value: Any) -> bool:
        # Written so that NaN fails every bound.
        return (
            (self.gt is None or value > self.gt)
            and (self.ge is None or value >= self.ge)
            and (self.lt is None or value < self.lt)
            and (self.le is None or value <= self.le)
        )

    def __str__(self) -> str:
        symbols = {"gt": ">", "ge": ">=", "lt": "<", "le": "<="}
        rule = " and ".join(f"{symbols[name]} {limit:g}" for name, limit in self.limits().items())
        if self.each:
            return f"{'a non-empty list of ' if self.nonempty else ''}values {rule}"
        return rule


def bounded(
    default: Any = MISSING,
    *,
    default_factory: Any = MISSING,
    gt: float | None = None,
    ge: float | None = None,
    lt: float | None = None,
    le: float | None = None,
    each: bool = False,
    nonempty: bool = False,
) -> Any:
    """A dataclass field with a default and a range rule."""
    rule = Bounds(gt=gt, ge=ge, lt=lt, le=le, each=each, nonempty=nonempty)
    return field(default=default, default_factory=default_factory, metadata={BOUNDS: rule})


def bounds_of(params: Any) -> dict[str, Bounds]:
    """The rules of a parameters dataclass (or instance), by field name."""
    return {f.name: f.metadata[BOUNDS] for f in fields(params) if BOUNDS in f.metadata}


def check(params: Any, section: str) -> None:
    """Raise ValueError naming the key (`section.field`) of the first value out of its bounds."""
    for name, rule in bounds_of(params).items():
        value = getattr(params, name)
        if value is not None and not rule.admits(value):  # None: unset, a fallback applies
            raise ValueError(f"{section}.{name} must be {rule}, not {value!r}")
