"""Categories, their tags and keywords, and how a report is assigned to one (CONTRACT §1)."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

UNCLASSIFIED = "unclassified"
# The largest report value read (CONTRACT §1): `[detection] max_report_bytes`.
DEFAULT_MAX_REPORT_BYTES = 64 * 1024

_DROPPED = str.maketrans("", "", "_- ")


def normalise_tag(tag: str) -> str:
    """NFKC, lower-case, no leading '#', no '_', '-' or spaces.

    `#StreetLightOut`, `street_light-out` and `streetlightout` all become `streetlightout`.
    """
    text = unicodedata.normalize("NFKC", tag).lower().strip()
    if text.startswith("#"):
        text = text[1:]
    return text.translate(_DROPPED)


@dataclass(frozen=True, slots=True)
class Category:
    name: str
    tags: tuple[str, ...] = ()
    keywords: tuple[str, ...] = ()


# The default taxonomy of the contract; operators extend or replace it in the config.
DEFAULT_TAXONOMY: tuple[Category, ...] = (
    Category(
        "streetlight_out",
        ("lightout", "streetlight", "lampout"),
        ("street light", "streetlight", "lamp post"),
    ),
    Category(
        "traffic_signal_out",
        ("signalout", "trafficlightout", "trafficsignal"),
        ("traffic light", "traffic signal", "signal out"),
    ),
    Category("road_flooding", ("flooding", "roadflood", "flood"), ("flooded", "flooding")),
    Category("pothole", ("potholes",), ("pothole",)),
    Category(
        "water_main_break",
        ("watermain", "watermainbreak", "waterleak"),
        ("water main", "main break", "gushing"),
    ),
    Category("downed_tree", ("treedown", "fallentree"), ("tree down", "fallen tree")),
    Category("gas_leak", ("gasleak", "gassmell"), ("smell of gas", "gas leak")),
    Category("power_outage", ("poweroutage", "blackout"), ("power out", "no power", "blackout")),
)


@dataclass(slots=True)
class Taxonomy:
    """Resolves a report's category: explicit category, then tags, then text keywords."""

    categories: Sequence[Category] = DEFAULT_TAXONOMY
    # The largest report value parse_report reads (bytes): it travels with the taxonomy, the
    # one configured object parse_report is handed, from `[detection] max_report_bytes`.
    max_report_bytes: int = DEFAULT_MAX_REPORT_BYTES
    _by_name: dict[str, str] = field(init=False, repr=False)
    _by_tag: dict[str, str] = field(init=False, repr=False)
    _keywords: re.Pattern[str] | None = field(init=False, repr=False)
    _keyword_owner: dict[str, str] = field(init=False, repr=False)
    _tag_cache: dict[str, str | None] = field(init=False, repr=False)
    _name_cache: dict[str, str | None] = field(init=False, repr=False)
    _keyword_checks: tuple = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._by_name = {}
        self._by_tag = {}
        self._keyword_owner = {}
        keywords: list[str] = []
        for category in self.categories:
            canonical = normalise_tag(category.name)
            if canonical in self._by_name:
                raise ValueError(f"category {category.name!r} is defined twice")
            self._by_name[canonical] = category.name
            # A category's own name is always one of its tags; the first category to claim a
            # tag keeps it, so the configured order decides ambiguous tags.
            for tag in (category.name, *category.tags):
                self._by_tag.setdefault(normalise_tag(tag), category.name)
            for keyword in category.keywords:
                key = keyword.lower()
                if key not in self._keyword_owner:
                    self._keyword_owner[key] = category.name
                    keywords.append(key)
        self._tag_cache = {}
        self._name_cache = {}
        self._keyword_checks = tuple(
            (
                category.name,
                tuple(
                    (k.lower(), re.compile(rf"(?<!\w){re.escape(k.lower())}(?!\w)"))
                    for k in category.keywords
                ),
            )
            for category in self.categories
        )
        if keywords:
            # One alternation, longest first, so "water main" beats a shorter overlapping keyword.
            alternatives = sorted(keywords, key=lambda k: (-len(k), k))
            body = "|".join(re.escape(k) for k in alternatives)
            self._keywords = re.compile(rf"(?<!\w)(?:{body})(?!\w)", re.IGNORECASE)
        else:
            self._keywords = None

    @property
    def names(self) -> list[str]:
        return [category.name for category in self.categories]

    def category_of_name(self, name: str) -> str | None:
        cache = self._name_cache
        try:
            return cache[name]
        except KeyError:
            pass
        found = self._by_name.get(normalise_tag(name))
        if len(cache) < 100_000:  # as for tags: names repeat, junk cannot grow it forever
            cache[name] = found
        return found

    def category_of_tag(self, tag: str) -> str | None:
        cache = self._tag_cache
        try:
            return cache[tag]
        except KeyError:
            pass
        found = self._by_tag.get(normalise_tag(tag))
        if len(cache) < 100_000:  # tags repeat a lot; cap so junk tags cannot grow it forever
            cache[tag] = found
        return found

    def category_of_text(self, text: str) -> str | None:
        """The first category, in the taxonomy's order, with a keyword in `text` (word match)."""
        lowered = text.lower()
        for name, keywords in self._keyword_checks:
            for keyword, pattern in keywords:
                # A substring test is C-speed; the word-boundary regex runs only on a hit.
                if keyword in lowered and pattern.search(lowered) is not None:
                    return name
        return None

    def resolve(self, category: str | None, tags: Iterable[str] | None, text: str | None) -> str:
        if category:
            found = self.category_of_name(category)
            if found is not None:
                return found
        if tags:
            for tag in tags:
                found = self.category_of_tag(tag)
                if found is not None:
                    return found
        if text:
            found = self.category_of_text(text)
            if found is not None:
                return found
        return UNCLASSIFIED


def taxonomy_from_mapping(spec: Mapping[str, Mapping[str, Sequence[str]]]) -> Taxonomy:
    """Build a taxonomy from `{name: {"tags": [...], "keywords": [...]}}`, keeping the order."""
    return Taxonomy(
        tuple(
            Category(name, tuple(body.get("tags", ())), tuple(body.get("keywords", ())))
            for name, body in spec.items()
        )
    )
