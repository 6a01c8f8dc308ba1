"""The scheduler's pure core: queue, lease table, fairness and placement, no I/O.

Its modules run compiled with mypyc when `make core` has built them from the sources as they
are now (services.scheduler.compiled_core); `BUILD` says which build runs.
"""

from services.scheduler import compiled_core

BUILD = compiled_core.activate(__path__)
