import keras
import numpy as np
import pytest

from conftest import blob_task
import keras_egt as egt


def test_step_decay_follows_the_formula():
    x, y = blob_task(32)
    model = egt.EarlyExitCNN(3, (32, 32, 2), widths=(4, 4, 4, 4, 4))
    model.compile(keras.optimizers.Adam(1e-3))
    history = model.fit(
        x, y, epochs=7, batch_size=32, verbose=0,
        callbacks=[egt.callbacks.StepDecay(every=3, factor=0.5)],
    )
    expected = [1e-3 * 0.5 ** (epoch // 3) for epoch in range(7)]
    np.testing.assert_allclose(history.history["learning_rate"], expected, rtol=1e-6)


@pytest.mark.parametrize("kwargs", [{"every": 0}, {"factor": 0.0}, {"factor": 1.5}])
def test_step_decay_rejects_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        egt.callbacks.StepDecay(**kwargs)
