"""`keras_egt.budget`: the before-training estimate against what the export measures."""

import keras
import numpy as np
import pytest

import keras_egt as egt
from keras_egt import budget
from kit import blob_task


@pytest.mark.parametrize("text, expected", [
    ("256KiB", 262144), ("64 KiB", 65536), ("1MiB", 1048576), ("200kB", 200000),
    ("65536", 65536), ("1.5KiB", 1536), ("12b", 12),
])
def test_parse_bytes(text, expected):
    assert budget.parse_bytes(text) == expected


@pytest.mark.parametrize("text", ["", "KiB", "-1KiB", "0", "12 GiB", "ten"])
def test_parse_bytes_refuses_what_it_cannot_read(text):
    with pytest.raises(ValueError, match="size"):
        budget.parse_bytes(text)


def test_the_arena_follows_the_live_activations_counted_by_hand():
    # Segment 1 of stages "cN | c8p" on 32x32x2, int8 bytes: the image 2048, the
    # conv's output F = 1024 * N, then the head on F (hidden 8 channels): reduce
    # 8192, score 1024, sigmoid 1024, F * sigmoid 1024 * N, ... F stays alive to the
    # end (segment 2 reads it). The peak is at the multiply for N = 16
    # (F + sigmoid + product = 16384 + 1024 + 16384) and at the score or multiply
    # for N = 8 (8192 + 8192 + 1024). Persistent state grows by one requantization
    # multiplier and shift (8 bytes) per extra conv channel.
    narrow = egt.EarlyExitMCU(3, (32, 32, 2), stages="c8 | c8p")
    wide = egt.EarlyExitMCU(3, (32, 32, 2), stages="c16 | c8p")
    narrow_arena = budget.estimate_deployment(narrow)["arena_bytes"][0]
    wide_arena = budget.estimate_deployment(wide)["arena_bytes"][0]
    assert wide_arena - narrow_arena == (16384 + 1024 + 16384) - (8192 + 8192 + 1024) + 8 * 8


def test_an_over_budget_model_is_named_with_its_estimate():
    model = egt.EarlyExitMCU(3, (32, 32, 2), stages="c8p s16p | c32")
    estimate = budget.estimate_deployment(model)
    with pytest.raises(budget.BudgetExceeded, match=r"flash [\d,]+ > 1,024 bytes"):
        budget.check_budget(model, flash_budget="1KiB")
    with pytest.raises(budget.BudgetExceeded, match=r"arena [\d,]+ > 2,048 bytes"):
        budget.check_budget(model, arena_budget=2048)
    assert budget.check_budget(model, "1MiB", "1MiB") == estimate


# Models the constants were not read from (those were the micro preset and the
# (4, 8, 8, 16, 16) CNN): depthwise-separable blocks, another CNN, wider heads.
CASES = {
    "mcu_separable": lambda: egt.EarlyExitMCU(3, (32, 32, 2), stages="c8p s16p | s24 s24p | c32"),
    "cnn": lambda: egt.EarlyExitCNN(3, (32, 32, 2), widths=(6, 12, 12, 24, 24)),
    "mcu_heads": lambda: egt.EarlyExitMCU(3, (48, 48, 2), stages="c4p s8p | c16p | c24",
                                          attention_hidden_channels=12),
}


@pytest.mark.tensorflow_only
@pytest.mark.parametrize("name", sorted(CASES))
def test_the_estimate_is_within_10_percent_of_the_export(name, tmp_path):
    keras.utils.set_random_seed(0)
    model = CASES[name]()
    x, y = blob_task(n=64, size=model.image_shape[0])
    model.compile("adam")
    model.fit(x, y, epochs=1, batch_size=32, verbose=0)  # trained biases are not all zero
    estimate = budget.estimate_deployment(model)
    manifest = egt.export.export_cascade(model, str(tmp_path / "deploy"), x[:16])
    flash = [seg["flash_bytes"] for seg in manifest["segments"]]
    arena = [seg["arena_bytes"] for seg in manifest["segments"]]
    # The budgets are on the total flash and on the largest arena; small segments'
    # arenas are mostly TFLM's own state, which the host interpreter rounds up.
    np.testing.assert_allclose(estimate["flash_bytes"], flash, rtol=0.10)
    assert estimate["total_flash_bytes"] == pytest.approx(sum(flash), rel=0.10)
    assert estimate["max_arena_bytes"] == pytest.approx(max(arena), rel=0.10)
