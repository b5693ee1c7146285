"""Explanations and figures as PNG files (matplotlib, Agg backend, imported lazily).

* `attention_grid`: inputs with every exit's attention map overlaid, one row per
  sample (what each exit looks at, and whether it agrees with the final exit).
* `consistency_bars`: per-exit consistency of several models (baseline vs EGT), with
  each model's chance floor.
* `exit_histogram`: where samples leave the cascade (and where the oracle would).
* `speedup_curve`: accuracy against MAC speedup over cascade thresholds.
* `pareto_plot`: the trials of a λ search, accuracy against consistency and against
  MAC speedup, with the Pareto front.
* `deletion_curves`: every exit's deletion and insertion curves, attention order
  against random order (`keras_egt.explanation_quality`).

Every function writes the file atomically and returns its path.
"""

import os

import numpy as np
from keras import ops

from keras_egt import metrics
from keras_egt.checks import check_inputs

__all__ = [
    "attention_grid", "consistency_bars", "deletion_curves", "exit_histogram", "pareto_plot",
    "speedup_curve",
]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: never needs a display
    import matplotlib.pyplot as plt

    return plt


def _check_path(path):
    path = os.fspath(path)
    if not path.lower().endswith(".png"):
        raise ValueError(f"Plots are written as PNG: the path must end in .png, got {path!r}.")
    return path


def _save(fig, path):
    from keras_egt.atomic import atomic_output

    plt = _pyplot()
    try:
        with atomic_output(path, ".png") as tmp:
            fig.savefig(tmp, format="png", dpi=100)
    finally:
        plt.close(fig)
    return path


def _get(report, key):
    return report[key] if isinstance(report, dict) else getattr(report, key)


def attention_grid(model, x, path, y=None, class_names=None, channel=0):
    """Writes a grid of inputs with every exit's attention map overlaid.

    Row i shows sample i: its input (one channel, grey) and then, for exits 1-5, the
    input with that exit's map (bilinearly upsampled, scaled to its own maximum)
    overlaid, titled with the exit's prediction and, for exits 1-4, the cosine of
    its map with the final exit's (the Table I metric for this one sample).

    Args:
        model: an `EarlyExitCNN`.
        x: inputs `(n, H, W, C)`, one row each (keep n small, e.g. 8).
        path: the `.png` to write.
        y: optional true labels, shown in the row labels.
        class_names: optional names for the classes.
        channel: which input channel to draw under the maps.

    Returns:
        `path`.

    Example:
    >>> egt.plots.attention_grid(model, x_test[:8], "attention.png", y=y_test[:8])
    """
    path = _check_path(path)
    x = np.asarray(x)
    check_inputs(x, model.image_shape, "x")
    if len(x) == 0:
        raise ValueError("attention_grid needs at least one sample.")
    if not 0 <= int(channel) < x.shape[-1]:
        raise ValueError(f"channel must be in 0..{x.shape[-1] - 1}, got {channel}.")
    outputs = metrics.exit_outputs(model, x, batch_size=len(x))
    predictions = outputs.predictions
    scores = metrics.attention_consistency(outputs, per_sample=True)
    # The maps at their own resolution, for drawing.
    run = metrics.compile_inference(lambda t: metrics._run_exits(model, t, True)[1])
    maps = run(ops.convert_to_tensor(x, dtype=model.compute_dtype))
    maps = [np.asarray(ops.convert_to_numpy(m))[..., 0] for m in maps]

    def name(c):
        c = int(c)
        return str(class_names[c]) if class_names is not None and c < len(class_names) else str(c)

    plt = _pyplot()
    n, (height, width) = len(x), x.shape[1:3]
    columns = model.num_exits + 1
    fig, axes = plt.subplots(n, columns, squeeze=False, figsize=(1.7 * columns, 1.8 * n + 0.4))
    extent = (0, width, height, 0)
    for i in range(n):
        image = x[i, :, :, int(channel)]
        for j in range(columns):
            ax = axes[i, j]
            ax.set_xticks([])
            ax.set_yticks([])
            ax.imshow(image, cmap="gray", extent=extent, interpolation="nearest")
            if j == 0:
                label = "" if y is None else f"true: {name(y[i])}"
                ax.set_ylabel(f"#{i} {label}", fontsize=7)
                if i == 0:
                    ax.set_title("input", fontsize=8)
                continue
            k = j - 1
            m = maps[k][i]
            ax.imshow(m / max(float(m.max()), 1e-12), cmap="jet", alpha=0.5, extent=extent,
                      interpolation="bilinear", vmin=0.0, vmax=1.0)
            title = f"pred {name(predictions[k][i])}"
            if k < model.num_exits - 1:
                title += f", cos {scores[k, i]:.2f}"
            ax.set_title((f"Exit {k + 1}\n" if i == 0 else "") + title, fontsize=7)
    fig.tight_layout()
    return _save(fig, path)


def consistency_bars(reports, path):
    """Writes grouped bars of every model's per-exit consistency (early exits and Avg).

    A black tick on each bar marks that model's chance floor.

    Args:
        reports: `{label: Report}` (or `Report.to_dict()` dicts), e.g.
            `{"Baseline": r0, "EGT (λ = 0.3)": r3}`.
        path: the `.png` to write.

    Returns:
        `path`.

    Example:
    >>> egt.plots.consistency_bars({"Baseline": r0, "EGT (λ = 0.3)": r3}, "consistency.png")
    """
    path = _check_path(path)
    if not reports:
        raise ValueError("consistency_bars needs at least one report.")
    plt = _pyplot()
    early = max(len(_get(r, "consistency")) for r in reports.values())
    if any(len(_get(r, "consistency")) != early for r in reports.values()):
        raise ValueError("consistency_bars compares models with the same number of exits.")
    groups = [f"Exit {k + 1}" for k in range(early)] + ["Avg"]
    fig, ax = plt.subplots(figsize=(1.2 + 1.3 * len(groups), 3.6))
    count = len(reports)
    width = 0.8 / count
    centers = np.arange(len(groups))
    for i, (label, report) in enumerate(reports.items()):
        values = list(_get(report, "consistency")) + [_get(report, "consistency_avg")]
        floor = list(_get(report, "chance_consistency")) + [_get(report, "chance_consistency_avg")]
        offsets = centers - 0.4 + width * (i + 0.5)
        ax.bar(offsets, values, width * 0.95, label=str(label))
        ax.hlines(floor, offsets - width * 0.45, offsets + width * 0.45, colors="black",
                  linewidth=1.5, label="chance floor" if i == 0 else None)
    ax.set_xticks(centers)
    ax.set_xticklabels(groups)
    ax.set_ylabel(f"cosine with exit {early + 1}")
    ax.set_ylim(0, 1.05)
    ax.set_title("Attention consistency (Table I)")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return _save(fig, path)


def exit_histogram(report_or_exits, path, title=None, num_exits=None):
    """Writes a bar chart of the share of samples leaving at each exit.

    Args:
        report_or_exits: a `Report` (or its dict): the cascade's shares, with the
            oracle's beside them; or an int array of 0-based exits (`Cascade.predict`).
        path: the `.png` to write.
        title: optional title.
        num_exits: the model's number of exits K, with an exit array (default: the
            highest exit in it + 1).

    Returns:
        `path`.

    Example:
    >>> labels, exits = cascade.predict(x_test)
    >>> egt.plots.exit_histogram(exits, "exits.png")
    """
    path = _check_path(path)
    series = {}
    if isinstance(report_or_exits, dict) or hasattr(report_or_exits, "exit_shares"):
        series["cascade"] = list(_get(report_or_exits, "exit_shares"))
        oracle = _get(report_or_exits, "oracle")
        if oracle:
            series["oracle"] = list(oracle["exit_shares"])
    else:
        exits = np.asarray(report_or_exits).reshape(-1)
        if exits.size == 0:
            raise ValueError("exit_histogram needs at least one exit index.")
        count = int(num_exits) if num_exits is not None else (
            int(exits.max()) + 1 if np.issubdtype(exits.dtype, np.integer) else 0)
        if not np.issubdtype(exits.dtype, np.integer) or exits.min() < 0 or exits.max() >= count:
            raise ValueError(f"exits must be integers in 0..{max(count, 2) - 1} (0-based exits).")
        series["cascade"] = list(np.bincount(exits, minlength=count) / exits.size)
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.2))
    count = len(series["cascade"])
    centers = np.arange(count)
    width = 0.8 / len(series)
    for i, (label, shares) in enumerate(series.items()):
        ax.bar(centers - 0.4 + width * (i + 0.5), 100 * np.asarray(shares), width * 0.95,
               label=label)
    ax.set_xticks(centers)
    ax.set_xticklabels([f"Exit {k + 1}" for k in range(count)])
    ax.set_ylabel("samples leaving here (%)")
    ax.set_title(title or "Exit shares")
    if len(series) > 1:
        ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def speedup_curve(curve, path, title=None):
    """Writes accuracy against MAC speedup over cascade thresholds.

    Args:
        curve: a list of points with `threshold`, `accuracy`, `speedup` (from
            `keras_egt.cascade.threshold_curve`), or a `Report` / `CalibratedThresholds`
            (their `curve`; the calibrated thresholds' own point is marked).
        path: the `.png` to write.
        title: optional title.

    Returns:
        `path`.

    Example:
    >>> egt.plots.speedup_curve(report, "speedup.png")
    """
    path = _check_path(path)
    marked = None
    if isinstance(curve, dict) or hasattr(curve, "curve"):
        owner = curve
        curve = _get(owner, "curve")
        if hasattr(owner, "speedup") and hasattr(owner, "accuracy"):
            marked = ("calibrated", owner.speedup, owner.accuracy)
        elif _get(owner, "mac_speedup") is not None:
            marked = ("report threshold", _get(owner, "mac_speedup"), _get(owner, "accuracy"))
    if not curve:
        raise ValueError("speedup_curve needs a non-empty curve of threshold points.")
    points = sorted(curve, key=lambda p: p["threshold"])
    speed = np.array([p["speedup"] for p in points])
    acc = 100 * np.array([p["accuracy"] for p in points])
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.6))
    ax.plot(speed, acc, "-", color="tab:blue", label="one shared threshold")
    ax.plot(speed, acc, ".", color="tab:blue", markersize=3)
    for p, s, a in zip(points, speed, acc):
        if any(abs(p["threshold"] - t) < 1e-9 for t in (0.5, 0.9, 0.99)):
            ax.annotate(f"{p['threshold']:g}", (s, a), fontsize=7, xytext=(3, 3),
                        textcoords="offset points")
    if marked is not None:
        ax.plot([marked[1]], [100 * marked[2]], "r*", markersize=10, label=marked[0])
    ax.set_xlabel("MAC speedup vs the final exit only (x)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(title or "Accuracy vs speedup over thresholds")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, path)


def pareto_plot(table, path, title=None):
    """Writes the trials of a λ search: cascade accuracy vs consistency and vs speedup.

    Every trial is a point labelled with its λ; the Pareto front (no other trial has
    both higher accuracy and higher consistency, resp. speedup) is joined by a line.

    Args:
        table: rows from `keras_egt.tuning.results_table` (or dicts with
            `consistency_weight`, `consistency`, `cascade_accuracy`, `cascade_speedup`).
        path: the `.png` to write.
        title: optional title.

    Returns:
        `path`.

    Example:
    >>> egt.plots.pareto_plot(egt.tuning.results_table(tuner), "pareto.png")
    """
    from keras_egt.tuning import pareto_front

    path = _check_path(path)
    rows = [r for r in table if r.get("cascade_accuracy") is not None]
    if not rows:
        raise ValueError("pareto_plot needs at least one completed trial.")
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), sharey=True)
    for ax, key, label in ((axes[0], "consistency", "validation consistency (Avg)"),
                           (axes[1], "cascade_speedup", "validation MAC speedup (x)")):
        usable = [r for r in rows if r.get(key) is not None]
        ax.scatter([r[key] for r in usable], [100 * r["cascade_accuracy"] for r in usable],
                   color="tab:blue", zorder=2)
        for r in usable:
            ax.annotate(f"λ={r['consistency_weight']:g}", (r[key], 100 * r["cascade_accuracy"]),
                        fontsize=7, xytext=(3, 3), textcoords="offset points")
        front = sorted(pareto_front(usable, ("cascade_accuracy", key)), key=lambda r: r[key])
        ax.plot([r[key] for r in front], [100 * r["cascade_accuracy"] for r in front], "-",
                color="tab:red", label="Pareto front", zorder=1)
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[0].set_ylabel("validation cascade accuracy (%)")
    fig.suptitle(title or "λ search: accuracy vs consistency and speedup", fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def deletion_curves(quality, path, title=None):
    """Writes every exit's deletion and insertion curves, attention vs random order.

    One column per exit; the top row is deletion (a faithful map's curve drops
    faster than the random order's), the bottom row insertion (it rises faster).
    The legends give the AUCs.

    Args:
        quality: an `ExplanationQuality` or its `to_dict()`.
        path: the `.png` to write.
        title: optional title.

    Returns:
        `path`.

    Example:
    >>> quality = egt.explanation_quality(model, x_test[:500], y_test[:500])
    >>> egt.plots.deletion_curves(quality, "deletion.png")
    """
    from keras_egt.explanations import ExplanationQuality

    path = _check_path(path)
    if isinstance(quality, dict):
        quality = ExplanationQuality.from_dict(quality)
    if not isinstance(quality, ExplanationQuality) or not quality.exits:
        raise ValueError("deletion_curves needs an ExplanationQuality (or its to_dict()).")
    fractions, curves = quality.fractions, quality.curves
    count = quality.num_exits
    plt = _pyplot()
    fig, axes = plt.subplots(2, count, squeeze=False, sharex=True, sharey=True,
                             figsize=(2.3 * count + 0.6, 4.6))
    for k in range(count):
        e = quality.exits[k]
        for row, (name, key) in enumerate((("deletion", "deletion_auc"),
                                           ("insertion", "insertion_auc"))):
            ax = axes[row, k]
            ax.plot(fractions, curves[name][k], "-", color="tab:red",
                    label=f"attention, AUC {e[key]:.3f}")
            ax.plot(fractions, curves["random_" + name][k], "--", color="tab:gray",
                    label=f"random, AUC {e['random_' + key]:.3f}")
            ax.set_ylim(0, 1.02)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=6, loc="upper right" if row == 0 else "lower right")
            if row == 0:
                ax.set_title(f"Exit {k + 1}", fontsize=9)
            else:
                ax.set_xlabel("fraction of cells " + ("inserted" if row else "removed"), fontsize=7)
            if k == 0:
                ax.set_ylabel(f"{name}: p(predicted class)", fontsize=7)
    fig.suptitle(title or "Deletion and insertion (Petsiuk et al. 2018)", fontsize=10)
    fig.tight_layout()
    return _save(fig, path)
