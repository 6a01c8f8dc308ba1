"""The scheduler's pure core: queue, lease table, fairness and placement, no I/O.

Its modules run compiled with mypyc when `make core` has built them from the sources as they
are now (`compiled_build`, beside them); `BUILD` says which build runs. The core imports
nothing of the service around it.
"""

from services.scheduler.core import compiled_build

BUILD = compiled_build.activate(__path__)
