"""The processes of geoincident: the worker, the CLI, the console and the web endpoints.

numpy (which shapely imports) starts OpenBLAS with a thread per core, and those threads spin
for a while after they start, taking a core from the worker's own threads on a small machine.
Nothing here does linear algebra, so the processes start OpenBLAS with one thread, unless
OPENBLAS_NUM_THREADS says otherwise. It is set here, before any module of the package imports
numpy.
"""

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
