"""geoincident: a streaming geo-incident detector.

The code lives in three rooms, installed under this namespace:
``geoincident.geo`` (pure geometry), ``geoincident.detectors`` (pure decision logic)
and ``geoincident.stream`` (the Faust worker, CLI and web).
"""

__version__ = "0.1.0"
