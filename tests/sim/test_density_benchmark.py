"""benchmarks/density.py: its streams fit the hours asked for, and its section of
docs/quality.md survives both its own rewrites and benchmarks/quality.py's."""

from __future__ import annotations

import importlib.util
import sys
from dataclasses import replace
from pathlib import Path
from types import ModuleType

import pytest

from geoincident.sim.simulate import DEFAULT_FAMILY_COUNTS, simulate

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCHMARKS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    # Dataclasses resolve their module through sys.modules while the class is built.
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def density() -> ModuleType:
    return _load("density")


@pytest.fixture(scope="module")
def quality() -> ModuleType:
    return _load("quality")


def test_the_section_is_appended_once_then_replaced_between_its_markers(density, tmp_path):
    doc = tmp_path / "quality.md"
    doc.write_text("# Detection quality\n\nbody\n")
    density.write_section(doc, "first table\n")
    density.write_section(doc, "second table\n")
    text = doc.read_text()
    assert text == (
        "# Detection quality\n\nbody\n\n## Density\n\n"
        "<!-- density:begin -->\nsecond table\n<!-- density:end -->\n"
    )
    doc.write_text(text + "\n## Later\n\nkept\n")
    density.write_section(doc, "third\n")
    assert doc.read_text().endswith(
        "<!-- density:begin -->\nthird\n<!-- density:end -->\n\n## Later\n\nkept\n"
    )


def test_quality_carries_the_density_section_over_its_rewrite(density, quality, tmp_path):
    doc = tmp_path / "quality.md"
    doc.write_text("# Detection quality\n\nold numbers\n")
    density.write_section(doc, "| density | table |\n")
    kept = quality.density_section(doc.read_text())
    assert kept.startswith("## Density\n") and "| density | table |" in kept
    assert kept.rstrip().endswith(density.DENSITY_END)
    assert quality.density_section("# Detection quality\n\nno section\n") == ""
    assert (quality.DENSITY_BEGIN, quality.DENSITY_END) == (
        density.DENSITY_BEGIN,
        density.DENSITY_END,
    )


@pytest.mark.parametrize("hours", [1.0, 1.25, 2.0, 6.0])
def test_every_stream_fits_the_hours_with_as_many_families_as_fit(density, hours):
    families = density.families_for(hours)
    if hours >= 2.0:
        assert families == dict(DEFAULT_FAMILY_COUNTS)
    else:
        assert families["trickle"] == 0 and families["true"] == DEFAULT_FAMILY_COUNTS["true"]
    names = [s.name for s in density.streams_for([300.0])]
    assert names == ["uniform 300/min", "hotspot", "outbreak"]
    for stream in density.streams_for([300.0]):
        # A thin background: only whether every family and option can be placed matters here.
        sim = simulate(replace(stream.params(seed=11, hours=hours), background_per_min=1.0))
        assert sum(1 for t in sim.truth if t.family == "outbreak") == (stream.name == "outbreak")
