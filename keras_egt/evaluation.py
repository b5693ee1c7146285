"""`evaluate`: everything the paper reports about a model, in the paper's layout.

One call runs the model over a test set once (in batches) and reports:

* **Table I** (attention consistency): `Model | Exit 1 | ... | Exit K-1 | Avg |
  Overall Acc. (%)`, with the chance floor (shuffled pairing, see
  `keras_egt.metrics`) beside it. Exit k's figure is the mean over samples of the
  cosine between exit k's attention map, bilinearly resized, and the final exit's. "Overall
  Acc." is the accuracy of the early-exit cascade at the threshold: the paper's
  Table II repeats it as the "With Early Exit" accuracy (97.8 for λ = 0.5 in both).
* **Table II** (inference time): `Model | Avg Time/Sample (ms) | Accuracy (%)` for
  "With Early Exit" (the cascade) and "Without Early Exit" (the final exit alone).
* Per-exit accuracy, exit shares, the cost model's MACs (see `keras_egt.cascade`):
  the cascade's average, its speedup vs the model without early exit and the
  oracle bound (every sample at its earliest correct exit).

**Timing** is wall clock at batch size 1, the way an edge device runs: one sample at
a time, a few warm-up samples first (which also trace every segment), on at most
`timing_samples` samples, layers called with `training=False`. *With early exit*
runs stage 1 and head 1, decides, and goes on stage by stage only while no exit is
confident; *without early exit* runs every stage and the final head. Compiled (the
default), each path is one traced call (`tf.function` / `jax.jit`; PyTorch eager
under `no_grad`): the early-exit path is `keras_egt.compiled_cascade.CompiledCascade`,
every stage, exit test and branch in one graph whose untaken branches never run, so
a sample pays one dispatch wherever it leaves. The two paths are interleaved sample
by sample (alternating which goes first), so machine noise hits both alike. The absolute figures are the
framework's on this host, not a microcontroller's; the ratio is what carries over.
"""

import dataclasses
import json
import time

import keras
import numpy as np
from keras import ops

from keras_egt import atomic, calibration, costs, exit_rule, metrics
from keras_egt import cascade as egt_cascade
from keras_egt.checks import check_finite_outputs, check_labels
from keras_egt.timing import SUMMARY_FIELDS, interleaved, sample_count

__all__ = ["Report", "compare_markdown", "evaluate", "time_per_sample"]

DEFAULT_TIMING_SAMPLES = 200
WARMUP_SAMPLES = 5


@dataclasses.dataclass
class Report:
    """Evaluation of one early-exit model on one data set (`evaluate` makes it).

    Fractions are in [0, 1] (the markdown shows percentages); exits are numbered
    1..5 in the tables and 0-based in arrays.

    Attributes:
        name: the model's row label ("Baseline" for λ = 0, else "EGT (λ = ...)").
        num_samples: test samples.
        thresholds: the cascade's K thresholds (the last is ignored).
        criterion: the exit criterion.
        consistency_weight: the model's λ (a list for one λ per early exit).
        widths: the model's channel widths (`EarlyExitCNN`; None for other models).
        exit_accuracy: accuracy of each of the K exits alone.
        consistency: Table I consistency of the K-1 early exits with the final exit.
        consistency_avg: their mean (Table I "Avg").
        chance_consistency: the same with shuffled pairing (chance floor).
        chance_consistency_avg: its mean.
        corrected_consistency: `(c - floor) / (1 - floor)` per early exit
            (`metrics.chance_corrected`): what is left of the consistency once the
            agreement between different samples' maps is taken out.
        corrected_consistency_avg: its mean.
        accuracy: the cascade's accuracy (Table I "Overall Acc.", Table II "With
            Early Exit").
        final_accuracy: the final exit's accuracy (Table II "Without Early Exit").
        exit_shares: fraction of samples leaving at each exit.
        exit_macs: MACs of leaving at each exit (stages and heads 1..k).
        final_only_macs: MACs without early exit.
        average_macs: the cascade's mean MACs per sample.
        mac_speedup: `final_only_macs / average_macs`.
        oracle: `accuracy`, `average_macs`, `speedup`, `exit_shares` of the oracle.
        mac_ratio_to_oracle: `average_macs / oracle["average_macs"]`.
        timing: None, or `samples`, `ms_with_early_exit`, `ms_without_early_exit`,
            `speedup`, `backend`, `timed_exit_shares`.
        curve: the shared-threshold accuracy/cost curve (`calibration.threshold_curve`).
    """

    name: str
    num_samples: int
    thresholds: list
    criterion: str
    consistency_weight: float
    widths: list  # None for models other than EarlyExitCNN
    exit_accuracy: list
    consistency: list
    consistency_avg: float
    chance_consistency: list
    chance_consistency_avg: float
    accuracy: float
    final_accuracy: float
    exit_shares: list
    exit_macs: list
    final_only_macs: int
    average_macs: float
    mac_speedup: float
    oracle: dict
    mac_ratio_to_oracle: float
    timing: dict = None
    curve: list = None
    corrected_consistency: list = None
    corrected_consistency_avg: float = None

    def to_dict(self):
        """The report as JSON-ready built-in types."""
        return _plain(dataclasses.asdict(self))

    def to_json(self, path):
        """Writes `to_dict()` as JSON to `path` atomically; returns `path`."""
        text = json.dumps(self.to_dict(), indent=2)
        atomic.write_text(path, text + "\n")
        return path

    @classmethod
    def from_dict(cls, data):
        """The inverse of `to_dict`."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    @classmethod
    def from_json(cls, path):
        """Reads a report written by `to_json`."""
        with open(path) as f:
            return cls.from_dict(json.load(f))

    def to_markdown(self):
        """Table I and Table II in the paper's layout, then per-exit figures and cost.

        Example:
        >>> print(egt.evaluate(model, x_test, y_test).to_markdown())
        """
        t = self.thresholds
        rule = ("threshold " + _fmt_thresholds(t) + f", {self.criterion}")
        lines = [
            f"## {self.name}: {self.num_samples} test samples, cascade {rule}",
            "",
            _table_one([self]),
            "",
            _table_two([self]),
            "",
            "Per exit:",
            "",
            "| | " + " | ".join(_exit_names(len(self.exit_accuracy))) + " |",
            "|---|" + "---|" * len(self.exit_accuracy),
            "| Accuracy (%) | " + " | ".join(_pct(a) for a in self.exit_accuracy) + " |",
            f"| Consistency with exit {len(self.exit_accuracy)} | " + " | ".join(_f3(c) for c in self.consistency)
            + " | |",
            "| Chance floor (shuffled pairs) | "
            + " | ".join(_f3(c) for c in self.chance_consistency) + " | |",
            "| Chance-corrected consistency | "
            + " | ".join(_f3(c) for c in (self.corrected_consistency or [None] * len(self.consistency)))
            + " | |",
            "| Exit share, cascade (%) | " + " | ".join(_pct(s, 1) for s in self.exit_shares)
            + " |",
            "| Exit share, oracle (%) | "
            + " | ".join(_pct(s, 1) for s in self.oracle["exit_shares"]) + " |",
            "| MACs to leave here | " + " | ".join(_macs(m) for m in self.exit_macs) + " |",
            "",
            _cost_table([self]),
        ]
        return "\n".join(lines)


def _plain(value):
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return _plain(value.tolist())
    return value


def _pct(v, digits=2):
    return "–" if v is None else f"{100 * v:.{digits}f}"


def _f3(v):
    return "–" if v is None else f"{v:.3f}"


def _ms(v):
    return "–" if v is None else f"{v:.2f}"


def _macs(v):
    v = float(v)
    if v >= 1e9:
        return f"{v / 1e9:.2f} G"
    if v >= 1e6:
        return f"{v / 1e6:.2f} M"
    if v >= 1e3:
        return f"{v / 1e3:.1f} k"
    return f"{v:.0f}"


def _exit_names(count):
    return [f"Exit {k + 1}" for k in range(count)]


def _fmt_thresholds(t):
    early = [float(v) for v in t[:-1]]
    if len(set(early)) == 1:
        return f"{early[0]:g}"
    return "[" + ", ".join(f"{v:.3g}" for v in early) + "]"


def _table_one(reports):
    early = max(len(r.consistency) for r in reports)
    rows = [
        "Table I: attention consistency (cosine with the final exit after bilinear resize, "
        "mean over samples); chance floor: the same between different samples; corrected: "
        "(Avg - floor) / (1 - floor), averaged over exits.",
        "",
        "| Model | " + " | ".join(_exit_names(early))
        + " | Avg | Overall Acc. (%) | Chance Avg | Corrected Avg |",
        "|---|" + "---|" * (early + 4),
    ]
    for r in reports:
        rows.append(
            f"| {r.name} | " + " | ".join(_f3(c) for c in r.consistency)
            + " | –" * (early - len(r.consistency))
            + f" | {_f3(r.consistency_avg)} | {_pct(r.accuracy)} | {_f3(r.chance_consistency_avg)}"
            + f" | {_f3(r.corrected_consistency_avg)} |"
        )
    return "\n".join(rows)


def _table_two(reports):
    timed = [r for r in reports if r.timing]
    note = (f"batch 1, {timed[0].timing['samples']} samples, {timed[0].timing['backend']} backend"
            if timed else "not timed")
    rows = [
        f"Table II: average inference time per sample ({note}).",
        "",
        "| Model | Avg Time/Sample (ms) | Accuracy (%) |",
        "|---|---|---|",
    ]
    for r in reports:
        prefix = "" if len(reports) == 1 else f"{r.name}: "
        timing = r.timing or {}
        rows.append(f"| {prefix}With Early Exit | {_ms(timing.get('ms_with_early_exit'))} | "
                    f"{_pct(r.accuracy)} |")
        rows.append(f"| {prefix}Without Early Exit | {_ms(timing.get('ms_without_early_exit'))} | "
                    f"{_pct(r.final_accuracy)} |")
    return "\n".join(rows)


def _cost_table(reports):
    rows = [
        "Cost (MACs per sample; speedups against the final exit without early exit; oracle: every "
        "sample leaves at its earliest correct exit):",
        "",
        "| Model | Threshold | MACs without EE | Avg MACs with EE | MAC speedup "
        "| Wall-clock speedup | Accuracy (%) | Oracle MACs | Oracle speedup | Oracle Acc. (%) "
        "| MACs / oracle |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in reports:
        wall = r.timing["speedup"] if r.timing else None
        rows.append(
            f"| {r.name} | {_fmt_thresholds(r.thresholds)} | {_macs(r.final_only_macs)} | "
            f"{_macs(r.average_macs)} | {r.mac_speedup:.2f}x | "
            f"{'–' if wall is None else f'{wall:.2f}x'} | {_pct(r.accuracy)} | "
            f"{_macs(r.oracle['average_macs'])} | {r.oracle['speedup']:.2f}x | "
            f"{_pct(r.oracle['accuracy'])} | {r.mac_ratio_to_oracle:.2f} |"
        )
    return "\n".join(rows)


def compare_markdown(reports):
    """Table I, Table II and the cost table of several reports, one row per model.

    Args:
        reports: a dict `{row label: Report}` (e.g. `{"Baseline": r0, "EGT (λ = 0.3)": r3}`)
            or a list of reports (labelled by their `name`).

    Returns:
        A markdown string.

    Example:
    >>> print(compare_markdown({"Baseline": r0, "EGT (λ = 0.3)": r3}))
    """
    if isinstance(reports, dict):
        items = [dataclasses.replace(r, name=str(name)) for name, r in reports.items()]
    else:
        items = list(reports)
    if not items:
        raise ValueError("compare_markdown needs at least one report.")
    return "\n\n".join([_table_one(items), _table_two(items), _cost_table(items)])


def _sync(tensor):
    # Reading the value forces the computation (JAX and PyTorch may run lazily/async).
    return ops.convert_to_numpy(tensor)


def _timed_paths(model, thresholds, criterion, compiled):
    last = model.num_exits - 1

    def segment(k):
        def fn(h):
            h = model.stages[k](h, training=False)
            return h, model.heads[k](h)

        return metrics.compile_inference(fn) if compiled else fn

    def full_fn(h):
        for stage in model.stages:
            h = stage(h, training=False)
        return model.heads[-1](h)

    stages = [segment(k) for k in range(model.num_exits)]
    full = metrics.compile_inference(full_fn) if compiled else full_fn

    def without_early_exit(sample):
        h = ops.convert_to_tensor(sample, dtype=model.compute_dtype)
        return int(np.argmax(ops.convert_to_numpy(full(h))[0]))

    if compiled:
        # The whole early-exit path as one traced call (stages, exit tests, branches).
        from keras_egt.compiled_cascade import CompiledCascade

        run = CompiledCascade(model, thresholds, criterion)
        return run, without_early_exit, run

    def with_early_exit(sample):
        h = ops.convert_to_tensor(sample, dtype=model.compute_dtype)
        for k in range(model.num_exits):
            h, logits = stages[k](h)
            p = metrics.softmax(logits)  # reads the value: waits for the computation
            if k == last or exit_rule.should_exit(p, thresholds[k], criterion)[0]:
                return int(np.argmax(p[0])), k

    def every_stage(sample):
        # Warm-up: traces and runs every segment, whichever exit the sample would take.
        h = ops.convert_to_tensor(sample, dtype=model.compute_dtype)
        for stage in stages:
            h, logits = stage(h)
            ops.convert_to_numpy(logits)

    return with_early_exit, without_early_exit, every_stage


def time_per_sample(model, x, threshold=0.9, criterion=None,
                    samples=DEFAULT_TIMING_SAMPLES, warmup=WARMUP_SAMPLES, compiled=True,
                    verbose=0):
    """Batch-1 wall-clock ms per sample with and without early exit.

    See the module docstring for the protocol. With `compiled=True` the early-exit path
    (`CompiledCascade`: every stage, exit test and branch) and the no-early-exit path
    (every stage + the final head) each run as one compiled function (`tf.function` /
    `jax.jit`; PyTorch eager under `no_grad`); `compiled=False` calls the Keras layers
    eagerly one by one, segment by segment.

    Args:
        model: an `EarlyExitModel` (e.g. an `EarlyExitCNN`).
        x: inputs; the first `samples` are timed (after `warmup` untimed ones).
        threshold: the cascade's threshold(s).
        criterion: the exit criterion (None: as for `Cascade`).
        samples: how many samples to time.
        warmup: untimed samples run first through both paths (at least 1: it also
            traces the compiled functions).
        compiled: run segments compiled (see above).
        verbose: 1 shows a progress bar over the timed samples (`keras.utils.Progbar`).

    Returns:
        A dict: `samples`, `ms_with_early_exit`, `ms_without_early_exit` (means: the
        paper's "Avg Time/Sample"), `speedup` (ratio of the means), their medians
        `ms_*_median`, `backend`, `compiled`, `timed_exit_shares`.

    Example:
    >>> time_per_sample(model, x_test, 0.9, samples=100)["speedup"]
    """
    rule = egt_cascade.Cascade(model, threshold, criterion)
    thresholds, criterion = rule.thresholds, rule.criterion
    x = np.asarray(x)
    count = sample_count(samples, x)
    with_early_exit, without_early_exit, every_stage = _timed_paths(
        model, thresholds, criterion, compiled)
    for i in range(max(1, min(int(warmup), len(x)))):
        sample = x[i : i + 1]
        every_stage(sample)
        with_early_exit(sample)
        without_early_exit(sample)
    progress = keras.utils.Progbar(count, unit_name="sample") if verbose else None
    result = interleaved(with_early_exit, without_early_exit, x, count, time.perf_counter,
                         progress)
    return {
        **{key: result[key] for key in SUMMARY_FIELDS},
        "backend": keras.backend.backend(),
        "compiled": bool(compiled),
        "timed_exit_shares": exit_rule.exit_shares(result["exits"], model.num_exits),
    }


def default_name(model):
    """`"Baseline"` for λ = 0, else `"EGT (λ = <λ>)"`."""
    weight = _consistency_weight(model)
    if isinstance(weight, list):
        return ("Baseline" if not any(weight) else
                "EGT (λ = " + ", ".join(f"{w:g}" for w in weight) + ")")
    return "Baseline" if weight == 0 else f"EGT (λ = {weight:g})"


def _consistency_weight(model):
    weight = getattr(model, "consistency_weight", 0.0)
    if isinstance(weight, (list, tuple)):
        return [float(w) for w in weight]
    return float(weight)


def evaluate(model, x, y, threshold=0.9, criterion=None, timing=True,
             timing_samples=DEFAULT_TIMING_SAMPLES, batch_size=metrics.DEFAULT_BATCH_SIZE,
             seed=0, name=None, verbose=0):
    """Evaluates an early-exit model the way the paper does (Tables I and II) and more.

    Args:
        model: an `EarlyExitModel` (e.g. an `EarlyExitCNN`).
        x: test inputs `(n, H, W, C)`, n >= 2.
        y: integer labels `(n,)`.
        threshold: the cascade's threshold, one number or one per exit (e.g. from
            `calibrate_thresholds`).
        criterion: `"max_probability"` (the paper's) or `"entropy"`; None: the one
            `threshold` was calibrated for, else `"max_probability"`.
        timing: measure batch-1 wall-clock time (Table II).
        timing_samples: samples timed at most.
        batch_size: batch size of the (untimed) evaluation pass.
        seed: seed of the chance floor's shuffled pairing.
        name: row label; default `"Baseline"` (λ = 0) or `"EGT (λ = ...)"`.
        verbose: 1 shows a progress bar over the timed samples (`keras.utils.Progbar`).

    Returns:
        A `Report` (`to_markdown()`, `to_json(path)`, `to_dict()`).

    Example:
    >>> report = egt.evaluate(model, x_test, y_test, threshold=0.9)
    >>> print(report.to_markdown())
    >>> report.to_json("report.json")
    """
    cascade = egt_cascade.Cascade(model, threshold, criterion)
    criterion = cascade.criterion
    x = np.asarray(x)
    y = np.asarray(y).reshape(-1)
    check_labels(y, model.num_classes, "y", len(x))
    if len(x) < 2:
        raise ValueError("evaluate needs at least 2 samples (the chance floor pairs samples).")
    progress = keras.utils.Progbar(len(x), unit_name="sample") if verbose else None
    outputs = metrics.exit_outputs(model, x, batch_size=batch_size, maps=True, progress=progress)
    check_finite_outputs(outputs.probabilities, "the exits' probabilities")
    correct = outputs.correct(y)
    rows = np.arange(len(y))
    consistency = metrics.attention_consistency(outputs)
    chance = metrics.chance_consistency(outputs, seed=seed)
    exit_macs = [int(v) for v in costs.exit_macs(model)]
    final_macs = int(costs.final_only_macs(model))

    labels, exits = cascade.decide(outputs.probabilities)
    figures = exit_rule.exit_summary(exits, model.num_exits, labels == y, exit_macs, final_macs)
    oracle = exit_rule.oracle_exits(correct)
    report = Report(
        name=name or default_name(model),
        num_samples=len(y),
        thresholds=[float(t) for t in cascade.thresholds],
        criterion=criterion,
        consistency_weight=_consistency_weight(model),
        widths=[int(w) for w in model.widths] if hasattr(model, "widths") else None,
        exit_accuracy=metrics.exit_accuracies(outputs, y),
        consistency=consistency,
        consistency_avg=float(np.mean(consistency)),
        chance_consistency=chance,
        chance_consistency_avg=float(np.mean(chance)),
        corrected_consistency=metrics.chance_corrected(consistency, chance),
        corrected_consistency_avg=float(np.mean(metrics.chance_corrected(consistency, chance))),
        accuracy=figures["accuracy"],
        final_accuracy=float(correct[-1].mean()),
        exit_shares=figures["exit_shares"],
        exit_macs=exit_macs,
        final_only_macs=final_macs,
        average_macs=figures["average_macs"],
        mac_speedup=figures["speedup"],
        oracle=exit_rule.exit_summary(oracle, model.num_exits, correct[oracle, rows], exit_macs,
                                      final_macs),
        mac_ratio_to_oracle=figures["average_macs"] / exit_rule.average_cost(oracle, exit_macs),
        curve=calibration.threshold_curve(outputs.probabilities, y, exit_macs, final_macs,
                                          criterion=criterion),
    )
    if timing:
        report.timing = time_per_sample(model, x, cascade.thresholds, criterion,
                                        samples=timing_samples, verbose=verbose)
    return report
