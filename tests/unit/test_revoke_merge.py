"""A generation that finished in the same batch of events as its lease's revoke is kept, not
thrown away and resumed (review finding 9); one still running is preempted."""

import pytest

from services.common.errors import LeaseEnded
from services.gpu_worker.engines.base import Finished, FinishReason, TextDelta
from services.gpu_worker.servicer import REVOKED, _merge


def test_a_generation_that_finished_as_it_was_revoked_stands():
    delta, finished = _merge(
        [TextDelta("last", 1, 0), REVOKED, Finished(FinishReason.LENGTH, 5, 8)]
    )
    assert delta.text == "last" and finished.completion_tokens == 8


def test_a_generation_still_running_is_preempted():
    with pytest.raises(LeaseEnded):
        _merge([TextDelta("more", 1, 0), REVOKED])
