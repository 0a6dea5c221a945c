"""Synthetic city streams with planted truth, and the tools that score a detector on them.

``simulate``: the seeded report generator and its truth; ``live``: playing it into Kafka;
``evaluate``: matching incident events to the truth; ``naive``: the baseline to beat;
``cli``: the ``geoincident simulate`` and ``geoincident evaluate`` commands.
"""
