"""Whether the detector core runs compiled or as pure Python, and the switch to pure Python.

The build (setup.py) compiles the hot modules of geo/ and detectors/ with mypyc where it can;
their Python sources are installed beside the extensions. `geoincident/__init__.py` decides
before any of them is imported:

- `GEOINCIDENT_PURE_PYTHON=1` (any value but empty, 0, false or no): every module of the
  package is imported from its Python source, even where an extension was built;
- a source that differs from the one the build compiled (an editable install after an edit,
  before the next build): the same, with a warning naming the file. The compiled modules call
  each other natively, so the core runs either wholly compiled or wholly from source, never a
  mix of old compiled code and new sources;
- no extensions were built (no C compiler, or a build with the switch set): pure Python.

Decisions and results are the same either way, byte for byte; compiled is faster.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
import warnings
from collections.abc import Mapping, Sequence
from importlib.abc import MetaPathFinder
from importlib.machinery import SOURCE_SUFFIXES, FileFinder, ModuleSpec, SourceFileLoader
from pathlib import Path
from types import ModuleType

PURE_ENV = "GEOINCIDENT_PURE_PYTHON"


def pure_requested(environ: Mapping[str, str] = os.environ) -> bool:
    value = environ.get(PURE_ENV)
    return value is not None and value.strip().lower() not in ("", "0", "false", "no")


class SourceFinder(MetaPathFinder):
    """Finds the modules of geoincident as Python sources only (never an extension)."""

    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None,
        target: ModuleType | None = None,
    ) -> ModuleSpec | None:
        if path is None or not fullname.startswith("geoincident."):
            return None
        for entry in path:
            finder = FileFinder(entry, (SourceFileLoader, SOURCE_SUFFIXES))
            spec = finder.find_spec(fullname, target)
            if spec is not None and spec.loader is not None:
                return spec
        return None  # a package mapped elsewhere (an editable install): the next finder's


def _package_dir(package: str) -> Path | None:
    """Where a package of geoincident lives, without importing it."""
    if package == "geoincident":
        return Path(__file__).resolve().parent
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _changed(sources: dict[str, str]) -> list[str]:
    """The sources (geoincident/detectors/engine.py, ...) that differ from the build's."""
    changed = []
    directories: dict[str, Path | None] = {}
    for name, digest in sources.items():
        package, _, filename = name.rpartition("/")
        dotted = package.replace("/", ".")
        if dotted not in directories:
            directories[dotted] = _package_dir(dotted)
        directory = directories[dotted]
        if directory is None:
            changed.append(name)
            continue
        try:
            data = (directory / filename).read_bytes()
        except OSError:
            continue  # installed without its source: nothing to fall back to anyway
        if hashlib.blake2b(data, digest_size=16).hexdigest() != digest:
            changed.append(name)
    return changed


def _decide() -> tuple[bool, str, tuple[str, ...]]:
    """(compiled, why not, the modules the build compiled)."""
    if pure_requested():
        return False, f"{PURE_ENV} is set", ()
    try:
        from geoincident import _compiled  # type: ignore[attr-defined]  # only a compiled build
    except ImportError:
        return False, "not compiled", ()
    modules = tuple(_compiled.MODULES)
    changed = _changed(_compiled.SOURCES)
    if changed:
        shown = ", ".join(name.removeprefix("geoincident/") for name in changed[:3])
        more = f" and {len(changed) - 3} more" if len(changed) > 3 else ""
        reason = f"{shown}{more} changed since the core was compiled"
        warnings.warn(
            f"geoincident: {reason}; running pure Python (reinstall to compile again)",
            RuntimeWarning,
            stacklevel=3,
        )
        return False, reason, modules
    return True, "", modules


def setup() -> None:
    """Decide once, at the import of geoincident; for pure Python, install the finder first."""
    global COMPILED, REASON, MODULES
    COMPILED, REASON, MODULES = _decide()
    if not COMPILED and not any(isinstance(f, SourceFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, SourceFinder())


def describe() -> str:
    """One line for logs and summaries: `compiled (mypyc, 20 modules)` or `pure Python (...)`."""
    if COMPILED:
        return f"compiled (mypyc, {len(MODULES)} modules)"
    return f"pure Python ({REASON})"


COMPILED = False
REASON = "not decided"
MODULES: tuple[str, ...] = ()
