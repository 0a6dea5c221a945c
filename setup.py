"""The build: the package as pyproject.toml declares it, plus the hot modules of the detector
core compiled to C extensions by mypyc (docs/design.md, "The compiled core").

Compiling is an optimisation only. Where mypyc or a C compiler is missing, where compiling
fails, or when GEOINCIDENT_PURE_PYTHON=1 is set at build time, the build says so and goes on
without the extensions: the package then runs its Python sources, with the same results,
slower.

mypyc names a module after its path, while pyproject.toml maps `geoincident.geo` to geo/ and
`geoincident.detectors` to detectors/: the sources are copied into build/mypyc-src/geoincident/
first, where their paths give their installed names.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent
PURE_ENV = "GEOINCIDENT_PURE_PYTHON"

# The modules compiled, by path in the repository (docs/design.md, "The compiled core" says
# which stay Python and why).
COMPILED = [
    "geo/distance.py",
    "geo/grid.py",
    "geo/regions.py",
    "detectors/bursts.py",
    "detectors/chance.py",
    "detectors/clusters.py",
    "detectors/dispatch.py",
    "detectors/engine.py",
    "detectors/grouping.py",
    "detectors/held.py",
    "detectors/incidents.py",
    "detectors/independence.py",
    "detectors/lifecycle.py",
    "detectors/reputation.py",
    "detectors/significance.py",
    "detectors/surge.py",
    "detectors/surge_baseline.py",
    "detectors/surge_keys.py",
    "detectors/taxonomy.py",
    "detectors/timers.py",
]
# The packages mypy reads while compiling them: the compiled code relies on the types found
# here, so a change to any of their files makes the compiled modules stale
# (geoincident/compiled.py).
TYPED_PACKAGES = {"geo": "geoincident/geo", "detectors": "geoincident/detectors"}
# The package's own modules mypy follows imports into (not compiled; no digest: the compiled code
# does not depend on them).
TYPED_FILES = {"geoincident/__init__.py", "geoincident/compiled.py", "geoincident/files.py"}

STAGE = Path("build") / "mypyc-src"
TARGET = Path("build") / "mypyc"
# The C of every compiled module in one shared library, geoincident/_core__mypyc.*.so, with a
# small extension per module that loads its part of it.
GROUP = "geoincident._core"
# A compiled-only module naming the sources the build compiled, with their digests.
MANIFEST = "geoincident/_compiled.py"
CONTRACT_OFF = "-ffp-contract=off"


def _truthy(value: str | None) -> bool:
    return value is not None and value.strip().lower() not in ("", "0", "false", "no")


def _say(message: str) -> None:
    print(f"geoincident build: {message}", file=sys.stderr)


def _digest(path: Path) -> str:
    return hashlib.blake2b(path.read_bytes(), digest_size=16).hexdigest()


def _stage() -> dict[str, Path]:
    """Copy the typed sources under their installed names; returns installed path -> source."""
    staged: dict[str, Path] = {}
    for name in sorted(TYPED_FILES):
        staged[name] = ROOT / name
    for directory, installed in TYPED_PACKAGES.items():
        for source in sorted((ROOT / directory).glob("*.py")):
            staged[f"{installed}/{source.name}"] = source
    shutil.rmtree(STAGE, ignore_errors=True)
    for name, source in staged.items():
        target = STAGE / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
    # Which sources the compiled modules were built from, as a module compiled with them: it
    # exists only where the build compiled (no .py of it is ever installed).
    digests = {name: _digest(source) for name, source in staged.items() if name not in TYPED_FILES}
    lines = [
        '"""Written by setup.py: the sources the compiled core was built from."""',
        "",
        "MODULES: tuple[str, ...] = (",
        *(f'    "{_installed_module(path)}",' for path in COMPILED),
        ")",
        "SOURCES: dict[str, str] = {",
        *(f'    "{name}": "{digest}",' for name, digest in digests.items()),
        "}",
        "",
    ]
    (STAGE / MANIFEST).write_text("\n".join(lines), encoding="utf-8")
    return staged


def _installed_path(path: str) -> str:
    directory, _, name = path.partition("/")
    return f"{TYPED_PACKAGES[directory]}/{name}"


def _installed_module(path: str) -> str:
    return _installed_path(path).removesuffix(".py").replace("/", ".")


def _manifest_module() -> str:
    return MANIFEST.removesuffix(".py").replace("/", ".")


def compiled_extensions() -> list:
    """The mypyc extensions, or none (and why) when they cannot be built here."""
    if _truthy(os.environ.get(PURE_ENV)):
        _say(f"{PURE_ENV} is set: pure Python, nothing compiled")
        return []
    try:
        from mypyc.build import mypycify
    except ImportError as error:
        _say(f"mypyc is not available ({error}): pure Python, nothing compiled")
        return []
    _stage()
    paths = [str(STAGE / _installed_path(path)) for path in COMPILED] + [str(STAGE / MANIFEST)]
    try:
        extensions = mypycify(
            [f"--config-file={ROOT / 'pyproject.toml'}", *paths],
            opt_level="3",
            group_name=GROUP,
            target_dir=str(TARGET),
        )
    except BaseException as error:  # mypyc reports type errors with SystemExit
        if isinstance(error, KeyboardInterrupt):
            raise
        _say(f"mypyc failed ({error!r}): pure Python, nothing compiled")
        return []
    return extensions


# Stands for the compiled extensions until build_ext asks mypyc for them: a pip build runs this
# file three times, twice only for metadata (commands below), which need only know there are
# extensions (egg_info finalizes build_ext to list their sources, and compiles nothing).
PLACEHOLDER = Extension(f"{GROUP}__mypyc", sources=[])
METADATA_COMMANDS = {"egg_info", "dist_info", "sdist"}


class OptionalBuildExt(build_ext):
    """Builds the compiled core if it can; otherwise none of it (the package then runs as
    pure Python). All or nothing: the modules of the core call each other natively."""

    def finalize_options(self) -> None:
        commands = set(self.distribution.commands)
        if not commands <= METADATA_COMMANDS and PLACEHOLDER in (
            self.distribution.ext_modules or []
        ):
            self.distribution.ext_modules = compiled_extensions()
            if not self.distribution.ext_modules and "editable_wheel" in commands:
                self._remove_in_place()  # (build_ext will not run)
        super().finalize_options()

    def run(self) -> None:
        if self.extensions:
            try:
                super().run()
            except Exception as error:  # no compiler, no Python headers, a compiler error
                _say(f"compiling failed ({error}): pure Python, nothing compiled")
                self._remove_outputs()
                self.extensions = []
        if not self.extensions and (self.inplace or self.editable_mode):
            self._remove_in_place()
        elif self.inplace or self.editable_mode:
            self._remove_stale()

    def _remove_stale(self) -> None:
        """An editable install that compiles removes the extensions an earlier build put beside
        the sources of modules it no longer compiles (taken off COMPILED): such an extension
        would be imported instead of the module's source, and fail to load its part of the
        shared library, which no longer has it."""
        compiled = set(map(_installed_module, COMPILED))
        typed = [
            f"{installed.replace('/', '.')}.{source.stem}"
            for directory, installed in TYPED_PACKAGES.items()
            for source in sorted((ROOT / directory).glob("*.py"))
        ]
        self._remove_extensions([name for name in typed if name not in compiled])

    def _remove_in_place(self) -> None:
        """An editable install that compiles nothing this time removes what an earlier build
        put beside the sources, which would otherwise go on running."""
        self._remove_extensions(
            [f"{GROUP}__mypyc", _manifest_module(), *map(_installed_module, COMPILED)]
        )

    def _remove_extensions(self, names: list[str]) -> None:
        """Remove the extensions of these modules (full names) from beside their sources."""
        build_py = self.get_finalized_command("build_py")
        for fullname in names:
            package, _, name = fullname.rpartition(".")
            directory = Path(build_py.get_package_dir(package))
            for suffix in EXTENSION_SUFFIXES:
                (directory / f"{name}{suffix}").unlink(missing_ok=True)

    def build_extension(self, ext) -> None:  # noqa: ANN001 - setuptools' own signature
        if self.compiler.compiler_type == "unix" and CONTRACT_OFF not in ext.extra_compile_args:
            # The same floating-point results as the Python sources on every platform: no
            # fused multiply-add where the C compiler would contract a * b + c (GCC does by
            # default wherever the CPU has FMA, e.g. on arm64).
            ext.extra_compile_args.append(CONTRACT_OFF)
        super().build_extension(ext)

    def _remove_outputs(self) -> None:
        for ext in self.extensions:
            built = Path(self.build_lib) / self.get_ext_filename(self.get_ext_fullname(ext.name))
            built.unlink(missing_ok=True)

    def get_outputs(self) -> list[str]:
        return super().get_outputs() if self.extensions else []


setup(ext_modules=[PLACEHOLDER], cmdclass={"build_ext": OptionalBuildExt})
