"""The one batch-1 timing protocol (`keras_egt.timing`), on a hand-made clock."""

import numpy as np
import pytest

from keras_egt import timing


class StepClock:
    """A clock that each path advances by its own known cost."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_interleaved_alternates_the_order_and_clocks_each_path_alone():
    clock, calls, ticks = StepClock(), [], []
    # Sample i costs 1 ms + i us with early exit and 4 ms without; the bar's update
    # costs 1 s, which must fall outside both clocked spans.
    x = np.arange(5, dtype=np.float32).reshape(5, 1)

    def early(sample):
        calls.append(("early", int(sample[0, 0])))
        clock.now += 1e-3 + 1e-6 * int(sample[0, 0])
        return int(sample[0, 0]) % 3, int(sample[0, 0]) % 2

    def full(sample):
        calls.append(("full", int(sample[0, 0])))
        clock.now += 4e-3
        return 7

    class Bar:
        def update(self, done):
            ticks.append(done)
            clock.now += 1.0

    out = timing.interleaved(early, full, x, 4, clock, Bar())
    # Even samples run with early exit first, odd ones without first.
    assert calls == [("early", 0), ("full", 0), ("full", 1), ("early", 1),
                     ("early", 2), ("full", 2), ("full", 3), ("early", 3)]
    assert ticks == [1, 2, 3, 4] and out["samples"] == 4
    assert out["ms_with_early_exit"] == pytest.approx(1.0 + 1.5e-3)
    assert out["ms_with_early_exit_median"] == pytest.approx(1.0 + 1.5e-3)
    assert out["ms_without_early_exit"] == pytest.approx(4.0)
    assert out["speedup"] == pytest.approx(4.0 / (1.0 + 1.5e-3))
    assert out["exits"] == [0, 1, 0, 1] and out["labels_with_early_exit"] == [0, 1, 2, 0]
    assert out["labels_without_early_exit"] == [7] * 4
    assert set(timing.SUMMARY_FIELDS) <= set(out)


@pytest.mark.parametrize("samples, n", [(0, 5), (3, 0)])
def test_no_sample_to_time_is_one_clear_error(samples, n):
    with pytest.raises(ValueError, match=f"samples={samples}, {n} inputs"):
        timing.interleaved(None, None, np.zeros((n, 1)), samples, StepClock())
