"""geoincident: a streaming geo-incident detector.

The code lives in three rooms, installed under this namespace:
``geoincident.geo`` (pure geometry), ``geoincident.detectors`` (pure decision logic)
and ``geoincident.stream`` (the Faust worker, CLI and web).

The hot modules of the first two are compiled where the build could (setup.py); whether they
run compiled or from their Python sources is decided here, before any of them is imported
(geoincident/compiled.py; GEOINCIDENT_PURE_PYTHON=1 forces the sources).
"""

__version__ = "0.1.0"

from geoincident import compiled as _compiled_core  # noqa: E402 - after the version, first

_compiled_core.setup()
