"""Are an early-exit model's explanations faithful? Measures beyond consistency.

`explanation_quality(model, x, y)` reports, for every exit k = 1..K:

* **Consistency, chance floor, chance-corrected consistency** (exits 1..K-1): the
  paper's Table I cosine of exit k's map with exit K's, the same between the maps
  of *different* samples (`keras_egt.metrics.chance_consistency`), and
  `(c - floor) / (1 - floor)` (`keras_egt.metrics.chance_corrected`): 0 when the
  maps agree no more than any two samples' maps do, 1 when they are identical.
  Maps that grow alike across samples raise the raw figure but not this one.
* **Deletion and insertion AUC** (Petsiuk, Das & Saenko, RISE, BMVC 2018), on the
  exit's own predicted class `c` (its argmax on the intact input): the cells of the
  input are ranked by the exit's attention map, bilinearly resized to the cell
  grid (the input's size for `cell_size=1`), most attended first. *Deletion*
  replaces the first `round(i/steps * P)` of the `P` cells with the baseline value
  and reads the exit's probability of `c`, for i = 0..steps; *insertion* starts
  from the all-baseline input and puts the input's own values back in the same
  order. The AUC is the trapezoid integral of the mean curve over the fraction of
  cells removed (inserted), in [0, 1]. A faithful map gives a *low* deletion AUC
  (the probability drops as soon as the attended cells go) and a *high* insertion
  AUC. The reference is the same with every sample's cells in a random order
  (`np.argsort(np.random.default_rng(seed).random((n, P)), axis=1)`); attention
  ties are broken by cell index (row-major).
* **Randomisation-check correlation** (Adebayo et al., "Sanity checks for
  saliency maps", NeurIPS 2018): the Spearman rank correlation between exit k's map
  of the trained model and of the same architecture with freshly initialised
  weights, per sample over the map's H_k x W_k cells, averaged over samples. Near 1
  means the map hardly depends on what the model learnt (an edge detector would
  pass as an "explanation"): the check fails. Samples whose map is constant in
  either model have no rank correlation and are left out of the mean.

**Baseline value of removed cells.** By default the per-channel mean of `x`: the
constant that is closest, on average, to the data (0 for standardised inputs, as
the radar set's are), so a removed cell carries no evidence of its own and no
edge pattern that a constant of extreme value (e.g. the minimum) would add. Pass
`baseline=` a number (or one per channel) to choose another.

**Caveat** (Gomez et al., "Metrics for saliency map evaluation of deep learning
explanation methods", 2022): deletion and insertion feed the model inputs unlike
any it was trained on (patches of constant value). The probability may fall
because the input is out of distribution rather than because evidence went,
which favours maps that remove large contiguous regions first. That is why every
AUC is read against the random-order reference on the same inputs, and why
deletion and insertion are reported together (they disagree when the effect is
the artefact's).

Only `model(x)` (K logits tensors, via `model.predict`), `model.attention_maps(x)`
(K maps `(batch, H_k, W_k, 1)`), `model.image_shape` and `model.num_classes` are
used, so any early-exit model with these works. Everything runs in batches; one
forward pass gives every exit's probabilities, so the random-order curves of all
exits share their passes, and each exit's attention-order curves take
`2 * (steps - 1) * n` inputs.
"""

import random

import keras
import numpy as np
from keras import ops

from keras_egt import losses, metrics
from keras_egt.checks import check_inputs, check_labels

__all__ = ["ExplanationQuality", "explanation_quality", "reinitialised_copy", "spearman"]

EXIT_KEYS = (
    "consistency", "chance_floor", "corrected_consistency", "deletion_auc",
    "random_deletion_auc", "insertion_auc", "random_insertion_auc",
    "randomisation_correlation",
)
CURVE_KEYS = ("deletion", "random_deletion", "insertion", "random_insertion")
# Perturbed inputs per `model.predict` call, in units of its batch size.
_BATCHES_PER_CALL = 16


class ExplanationQuality:
    """What `explanation_quality` measured, per exit (see the module docstring).

    Attributes:
        exits: a list of K dicts with the keys of `EXIT_KEYS` (the last exit's
            consistency figures are None: it is the reference).
        fractions: the `steps + 1` fractions of cells removed (inserted).
        curves: dict of `CURVE_KEYS` -> float arrays `(K, steps + 1)`: the mean
            probability of each exit's predicted class along the curve.
        accuracy: each exit's accuracy on `y` (None without labels).
        settings: `num_samples`, `steps`, `cell_size`, `baseline`, `seed`.
    """

    def __init__(self, exits, fractions, curves, accuracy=None, settings=None):
        self.exits = exits
        self.fractions = np.asarray(fractions, np.float64)
        self.curves = {k: np.asarray(v, np.float64) for k, v in curves.items()}
        self.accuracy = accuracy
        self.settings = settings or {}

    @property
    def num_exits(self):
        return len(self.exits)

    def to_dict(self):
        """JSON-ready: `{"exits": [...one dict per exit...], "fractions", "curves",
        "accuracy", "settings"}`."""
        return {
            "exits": [{key: _plain(e[key]) for key in EXIT_KEYS} for e in self.exits],
            "fractions": self.fractions.tolist(),
            "curves": {k: v.tolist() for k, v in self.curves.items()},
            "accuracy": self.accuracy,
            "settings": _plain(self.settings),
        }

    @classmethod
    def from_dict(cls, data):
        """The inverse of `to_dict`."""
        return cls(data["exits"], data["fractions"], data["curves"], data.get("accuracy"),
                   data.get("settings"))

    def to_markdown(self, title=None):
        """One row per exit: consistency figures, AUCs beside their random order, and
        the randomisation check."""
        s = self.settings
        lines = [
            title or (f"Explanation quality: {s.get('num_samples', '?')} samples, "
                      f"{s.get('steps', '?')} steps, cells of {s.get('cell_size', '?')} px"),
            "",
            "| Exit | Consistency | Chance floor | Corrected | Deletion AUC ↓ | random | "
            "Insertion AUC ↑ | random | Randomisation ρ ↓ | Accuracy (%) |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for k, e in enumerate(self.exits):
            acc = None if self.accuracy is None else 100 * self.accuracy[k]
            lines.append(
                f"| {k + 1} | " + " | ".join(_fmt(e[key]) for key in EXIT_KEYS)
                + f" | {_fmt(acc, 2)} |"
            )
        return "\n".join(lines)


def _fmt(v, digits=3):
    return "–" if v is None or (isinstance(v, float) and np.isnan(v)) else f"{v:.{digits}f}"


def _plain(v):
    if isinstance(v, (list, tuple, np.ndarray)):
        return [_plain(u) for u in v]
    if isinstance(v, dict):
        return {k: _plain(u) for k, u in v.items()}
    if isinstance(v, (np.floating, float)):
        return None if np.isnan(v) else float(v)
    if isinstance(v, np.integer):
        return int(v)
    return v


def _ranks(values):
    """Average ranks (0-based) along axis 1, ties sharing their mean rank."""
    n, p = values.shape
    order = np.argsort(values, axis=1, kind="stable")
    sorted_values = np.take_along_axis(values, order, 1)
    new_group = np.ones((n, p), bool)
    new_group[:, 1:] = sorted_values[:, 1:] != sorted_values[:, :-1]
    group = np.cumsum(new_group, axis=1) - 1 + p * np.arange(n)[:, None]
    positions = np.broadcast_to(np.arange(p, dtype=np.float64), (n, p))
    mean_rank = (np.bincount(group.ravel(), positions.ravel(), minlength=n * p)
                 / np.maximum(np.bincount(group.ravel(), minlength=n * p), 1))
    ranks = np.empty((n, p))
    np.put_along_axis(ranks, order, mean_rank[group], 1)
    return ranks


def spearman(a, b):
    """Spearman rank correlation of every row of `a` with the same row of `b`.

    The Pearson correlation of the rows' average ranks (ties share their mean rank).

    Args:
        a: array `(n, P)`.
        b: array `(n, P)`.

    Returns:
        A float array `(n,)`, NaN for a row that is constant in `a` or `b`.

    Example:
    >>> spearman(np.array([[1, 2, 3]]), np.array([[10, 20, 40]]))   # [1.]
    """
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"spearman needs two arrays of the same shape (n, P), got {a.shape} and {b.shape}.")
    ra = _ranks(a)
    rb = _ranks(b)
    ra -= ra.mean(axis=1, keepdims=True)
    rb -= rb.mean(axis=1, keepdims=True)
    norm = np.sqrt((ra * ra).sum(1) * (rb * rb).sum(1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(norm > 0, (ra * rb).sum(1) / np.where(norm > 0, norm, 1.0), np.nan)


def reinitialised_copy(model, seed=0):
    """The same architecture as `model` with freshly initialised weights.

    Built from `model.get_config()`. Keras draws the seed of every initializer
    given none from Python's `random` module, which is seeded with `seed` for the
    build and restored afterwards, so the copy is reproducible and the caller's
    random state is left as it was.

    Args:
        model: a Keras model whose class rebuilds it from its config.
        seed: the seed of the new weights.

    Returns:
        A new, built model.

    Example:
    >>> fresh = reinitialised_copy(model, seed=1)
    """
    state = random.getstate()
    random.seed(int(seed))
    try:
        fresh = model.__class__.from_config(model.get_config())
        if not fresh.built:
            fresh.build((None,) + tuple(model.image_shape))
    finally:
        random.setstate(state)
    return fresh


def _probabilities(model, x, batch_size):
    """Softmax of every exit, `(K, len(x), C)`; inputs padded to whole batches so
    that `predict` traces one shape."""
    count = len(x)
    pad = (-count) % batch_size
    if pad:
        x = np.concatenate([x, np.repeat(x[-1:], pad, axis=0)])
    logits = model.predict(x, batch_size=batch_size, verbose=0)
    if not isinstance(logits, (list, tuple)) or len(logits) < 2:
        raise ValueError(
            "explanation_quality needs an early-exit model whose call returns a list of "
            f"K >= 2 logits tensors (one per exit), got {type(logits).__name__}."
        )
    return np.stack([metrics.softmax(np.asarray(l)[:count]) for l in logits])


def _maps(model, x, batch_size):
    """Every exit's attention maps as numpy `(n, H_k, W_k)`, in batches."""
    parts = []
    for part in metrics.batches(len(x), batch_size):
        maps = model.attention_maps(x[part])
        parts.append([np.asarray(ops.convert_to_numpy(m), np.float64)[..., 0] for m in maps])
    return [np.concatenate([p[k] for p in parts]) for k in range(len(parts[0]))]


def _cell_ranks(maps, grid):
    """Rank of every cell in the removal order (0: first), `(n, P)`: the map resized
    to `grid`, most attended first, ties by cell index."""
    resized = ops.convert_to_numpy(
        losses.resize_map(ops.convert_to_tensor(maps[..., None].astype("float32")), grid)
    )
    flat = resized.reshape(len(maps), -1)
    return _order_to_ranks(np.argsort(-flat, axis=1, kind="stable"))


def _order_to_ranks(order):
    ranks = np.empty_like(order)
    np.put_along_axis(ranks, order, np.arange(order.shape[1])[None], 1)
    return ranks


def _curves(model, x, ranks, counts, fill, classes, exits, cell_size, batch_size):
    """Mean deletion and insertion curves `(len(exits), steps + 1)` of the given exits
    for one cell order per sample (`ranks`).

    The intact and all-baseline ends come from `_ends`; the inner steps of all samples
    are batched, `2 * (steps - 1)` inputs per sample.
    """
    n, (height, width, channels) = len(x), x.shape[1:]
    inner = counts[1:-1]
    per_sample = 2 * len(inner)
    deletion = np.zeros((len(exits), n, len(inner)))
    insertion = np.zeros((len(exits), n, len(inner)))
    if not len(inner):
        return deletion, insertion
    chunk = max(1, (_BATCHES_PER_CALL * batch_size) // per_sample)
    for part in metrics.batches(n, chunk):
        m = part.stop - part.start
        gone = ranks[part][:, None, :] < inner[None, :, None]          # (m, S, P)
        gone = gone.reshape(m, len(inner), height // cell_size, width // cell_size)
        if cell_size > 1:
            gone = gone.repeat(cell_size, axis=2).repeat(cell_size, axis=3)
        gone = gone[..., None]
        xs = x[part][:, None]
        batch = np.concatenate(
            [np.where(gone, fill, xs), np.where(gone, xs, fill)], axis=1
        ).astype(x.dtype).reshape((-1, height, width, channels))
        probs = _probabilities(model, batch, batch_size)                # (K, m*2S, C)
        for j, k in enumerate(exits):
            p = probs[k].reshape(m, per_sample, -1)
            p = np.take_along_axis(p, classes[k, part][:, None, None], axis=-1)[..., 0]
            deletion[j, part] = p[:, : len(inner)]
            insertion[j, part] = p[:, len(inner):]
    return deletion, insertion


def _auc(fractions, curve):
    return float(np.sum((curve[1:] + curve[:-1]) * np.diff(fractions)) / 2.0)


def explanation_quality(model, x, y=None, steps=20, cell_size=1, baseline="mean",
                        batch_size=256, seed=0, randomised_model=None):
    """Measures whether every exit's attention map explains that exit's prediction.

    See the module docstring for each figure, the baseline value and the caveats.

    Args:
        model: an early-exit model (e.g. `EarlyExitCNN`): `model(x)` returns K
            logits tensors, `model.attention_maps(x)` K maps.
        x: inputs `(n, H, W, C)`, n >= 2 (the chance floor pairs samples).
        y: optional integer labels `(n,)`, for each exit's accuracy.
        steps: points of the deletion and insertion curves beyond the first.
        cell_size: side in pixels of the square cells removed together (divides H
            and W); 1 removes single pixels, as Petsiuk et al. do.
        baseline: value of removed cells: `"mean"` (per-channel mean of `x`), a
            number, or one number per channel.
        batch_size: inputs per forward pass.
        seed: seed of the random order, the chance floor's pairing and the
            re-initialised model's weights.
        randomised_model: the model of the randomisation check; default
            `reinitialised_copy(model, seed)`.

    Returns:
        An `ExplanationQuality` (`to_markdown()`, `to_dict()`).

    Example:
    >>> quality = egt.explanation_quality(model, x_test[:500], y_test[:500])
    >>> print(quality.to_markdown())
    >>> egt.plots.deletion_curves(quality, "deletion.png")
    """
    x = np.asarray(x, dtype="float32")
    check_inputs(x, model.image_shape, "x")
    n, (height, width, channels) = len(x), x.shape[1:]
    if n < 2:
        raise ValueError("explanation_quality needs at least 2 samples (the chance floor pairs samples).")
    if y is not None:
        y = np.asarray(y).reshape(-1)
        check_labels(y, model.num_classes, "y", n)
    steps, cell_size, batch_size = int(steps), int(cell_size), int(batch_size)
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}.")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    if cell_size < 1 or height % cell_size or width % cell_size:
        raise ValueError(
            f"cell_size must be a positive divisor of the input's height and width "
            f"({height} x {width}), got {cell_size}."
        )
    if isinstance(baseline, str):
        if baseline != "mean":
            raise ValueError(f'baseline must be "mean", a number or one number per channel, got {baseline!r}.')
        fill = x.mean(axis=(0, 1, 2))
    else:
        fill = np.broadcast_to(np.asarray(baseline, np.float32).reshape(-1), (channels,))
        if not np.all(np.isfinite(fill)):
            raise ValueError(f"baseline must be finite, got {baseline!r}.")
    fill = np.asarray(fill, np.float32)

    batch_size = min(batch_size, n * 2 * max(steps - 1, 1))
    probs = _probabilities(model, x, batch_size)
    num_exits = len(probs)
    classes = np.argmax(probs, axis=-1)                                  # (K, n)
    rows = np.arange(n)
    intact = np.stack([probs[k, rows, classes[k]] for k in range(num_exits)])
    blank = _probabilities(model, np.broadcast_to(fill, (1, height, width, channels)).copy(),
                           batch_size)
    blank = blank[:, 0][np.arange(num_exits)[:, None], classes]           # (K, n)

    grid = (height // cell_size, width // cell_size)
    cells = grid[0] * grid[1]
    counts = np.round(np.arange(steps + 1) * cells / steps).astype(np.int64)
    fractions = counts / cells

    def full(deleted, inserted, ks):
        ks = list(ks)
        d = np.concatenate([intact[ks][..., None], deleted, blank[ks][..., None]], axis=-1)
        i = np.concatenate([blank[ks][..., None], inserted, intact[ks][..., None]], axis=-1)
        return d.mean(axis=1), i.mean(axis=1)

    rng = np.random.default_rng(seed)
    random_ranks = _order_to_ranks(np.argsort(rng.random((n, cells)), axis=1))
    random_deletion, random_insertion = full(
        *_curves(model, x, random_ranks, counts, fill, classes, range(num_exits), cell_size,
                 batch_size),
        range(num_exits),
    )
    maps = _maps(model, x, batch_size)
    if len(maps) != num_exits:
        raise ValueError(
            f"model.attention_maps gave {len(maps)} maps for {num_exits} exits: one per exit needed."
        )
    deletion, insertion = np.zeros_like(random_deletion), np.zeros_like(random_insertion)
    for k in range(num_exits):
        ranks = _cell_ranks(maps[k], grid)
        d, i = full(*_curves(model, x, ranks, counts, fill, classes, [k], cell_size, batch_size),
                    [k])
        deletion[k], insertion[k] = d[0], i[0]

    as_tensors = [m[..., None].astype("float32") for m in maps]
    consistency = metrics.attention_consistency(as_tensors)
    floor = metrics.chance_consistency(as_tensors, seed=seed)
    corrected = metrics.chance_corrected(consistency, floor)

    if randomised_model is None:
        randomised_model = reinitialised_copy(model, seed)
    fresh_maps = _maps(randomised_model, x, batch_size)
    correlation = []
    for k in range(num_exits):
        rho = spearman(maps[k].reshape(n, -1), fresh_maps[k].reshape(n, -1))
        correlation.append(float(np.nanmean(rho)) if np.any(np.isfinite(rho)) else None)

    exits = []
    for k in range(num_exits):
        early = k < num_exits - 1
        exits.append({
            "consistency": consistency[k] if early else None,
            "chance_floor": floor[k] if early else None,
            "corrected_consistency": corrected[k] if early else None,
            "deletion_auc": _auc(fractions, deletion[k]),
            "random_deletion_auc": _auc(fractions, random_deletion[k]),
            "insertion_auc": _auc(fractions, insertion[k]),
            "random_insertion_auc": _auc(fractions, random_insertion[k]),
            "randomisation_correlation": correlation[k],
        })
    accuracy = None if y is None else [float(v) for v in (classes == y[None]).mean(axis=1)]
    return ExplanationQuality(
        exits, fractions,
        {"deletion": deletion, "random_deletion": random_deletion, "insertion": insertion,
         "random_insertion": random_insertion},
        accuracy=accuracy,
        settings={"num_samples": n, "steps": steps, "cell_size": cell_size,
                  "baseline": [float(v) for v in fill], "seed": int(seed),
                  "backend": keras.backend.backend()},
    )
