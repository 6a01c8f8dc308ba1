"""The scheduler process collects the young generation less often, startup objects frozen."""

import gc

from services.scheduler.gc_tuning import YOUNG_THRESHOLD, tune_collector


def test_tuning_freezes_what_exists_and_raises_only_the_young_threshold():
    before = gc.get_threshold()
    try:
        tune_collector()
        assert gc.get_freeze_count() > 0
        assert gc.get_threshold() == (YOUNG_THRESHOLD, before[1], before[2])
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
