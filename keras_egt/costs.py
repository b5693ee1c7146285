"""Analytic multiply-accumulate (MAC) counts of the early-exit CNN."""

from keras_egt.model import NUM_EXITS


def _feature_shapes(model):
    """Spatial size and channels of every block's output."""
    h, w, c = model.image_shape
    shapes = []
    for k, width in enumerate(model.widths):
        if k < NUM_EXITS - 1:
            h, w = h // 2, w // 2
        shapes.append((h, w, width))
    return shapes


def block_macs(model):
    """MACs of each backbone block for one sample (batch norm folds into the conv).

    Block k runs a 3x3 "same" conv at its input's resolution:
    `H_in * W_in * 9 * C_in * C_out`. Pooling and ReLU are comparisons, not MACs.

    Args:
        model: an `EarlyExitCNN`.

    Returns:
        A list of 5 ints.

    Example:
    >>> block_macs(EarlyExitCNN(9, (64, 64, 2)))[0]   # 64*64*9*2*64
    4718592
    """
    h, w, c_in = model.image_shape
    macs = []
    for k, c_out in enumerate(model.widths):
        macs.append(h * w * 9 * c_in * c_out)
        if k < NUM_EXITS - 1:
            h, w = h // 2, w // 2
        c_in = c_out
    return macs


def head_macs(model):
    """MACs of each exit head for one sample.

    On features `H x W x C`, with `h` hidden attention channels and `n` classes:
    1x1 conv `H*W*C*h`, 3x3 score conv `H*W*9*h`, gating and pooling `H*W*C`,
    dense `G*C*n` over the `G` cells of the pooled grid.

    Args:
        model: an `EarlyExitCNN`.

    Returns:
        A list of 5 ints.
    """
    macs = []
    for (h, w, c), head in zip(_feature_shapes(model), model.heads):
        hidden = head.attention.reduce.filters
        p_h, p_w = head.pool_size((None, h, w, c))
        cells = (h // p_h) * (w // p_w)
        macs.append(
            h * w * c * hidden + h * w * 9 * hidden + h * w * c + cells * c * model.num_classes
        )
    return macs


def exit_macs(model):
    """Cost of a sample that leaves the cascade at each exit.

    Leaving at exit k means running blocks 1..k and heads 1..k (every head on the
    way was evaluated and found not confident enough).

    Args:
        model: an `EarlyExitCNN`.

    Returns:
        A list of 5 ints, non-decreasing.

    Example:
    >>> exit_macs(model)[-1] > final_only_macs(model)   # heads 1-4 cost extra
    True
    """
    blocks, heads = block_macs(model), head_macs(model)
    out, total = [], 0
    for b, h in zip(blocks, heads):
        total += b + h
        out.append(total)
    return out


def final_only_macs(model):
    """MACs of the model without early exit: all five blocks and the final head."""
    return sum(block_macs(model)) + head_macs(model)[-1]
