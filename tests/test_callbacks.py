import keras
import numpy as np
import pytest

import keras_egt as egt
from kit import blob_task, tiny_cnn


def test_step_decay_follows_the_formula():
    x, y = blob_task(32)
    model = tiny_cnn(widths=(4, 4, 4, 4, 4))
    model.compile(keras.optimizers.Adam(1e-3))
    history = model.fit(
        x, y, epochs=7, batch_size=32, verbose=0,
        callbacks=[egt.callbacks.StepDecay(every=3, factor=0.5)],
    )
    expected = [1e-3 * 0.5 ** (epoch // 3) for epoch in range(7)]
    np.testing.assert_allclose(history.history["learning_rate"], expected, rtol=1e-6)


@pytest.mark.parametrize(
    "kwargs, message",
    [({"every": 0}, "every must be a positive"), ({"factor": 0.0}, r"factor must be in \(0, 1\]"),
     ({"factor": 1.5}, r"factor must be in \(0, 1\]")],
)
def test_step_decay_rejects_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        egt.callbacks.StepDecay(**kwargs)
