"""Batch-1 timing of a cascade against the same model without early exit, side by side.

One protocol for every runtime (float Keras in `keras_egt.evaluation`, the int8 TFLM
interpreter in `keras_egt.export.final_only`): the two paths run on the same samples,
interleaved sample by sample and in alternating order (so drifts of the machine, a
warming cache or a busy neighbour, fall on both alike), each clocked on its own
span; the progress bar is drawn outside the clocked spans. This module imports
neither Keras nor a backend.
"""

import numpy as np

__all__ = ["SUMMARY_FIELDS", "interleaved", "sample_count"]

# What every timing report gives (each runtime adds its own extras).
SUMMARY_FIELDS = ("samples", "ms_with_early_exit", "ms_without_early_exit", "speedup",
                  "ms_with_early_exit_median", "ms_without_early_exit_median")


def sample_count(samples, x):
    """How many of `x` a timing of `samples` runs, or a one-line ValueError for none.

    Example:
    >>> sample_count(200, x_test[:50])
    50
    """
    count = min(int(samples), len(x))
    if count < 1:
        raise ValueError(f"Timing needs at least one sample: pass samples >= 1 and a "
                         f"non-empty x. Received: samples={samples}, {len(x)} inputs.")
    return count


def interleaved(with_early_exit, without_early_exit, x, samples, clock, progress=None):
    """Times `with_early_exit` and `without_early_exit` on the first `samples` of `x`.

    Args:
        with_early_exit: `f(sample) -> (label, exit)` for a batch-1 `sample`
            (`x[i : i + 1]`), exit 0-based.
        without_early_exit: `f(sample) -> label`.
        x: the inputs.
        samples: how many to time (at most `len(x)`, at least 1).
        clock: a function returning seconds (`time.perf_counter` for wall clock,
            `time.thread_time` for this thread's CPU time).
        progress: an object with `update(done)` (a `keras.utils.Progbar`), or None.

    Returns:
        A dict: `samples`, `ms_with_early_exit` and `ms_without_early_exit` (means:
        the paper's "Avg Time/Sample"), `speedup` (ratio of the means), their
        medians `ms_*_median` (they resist a scheduler's stalls), and the lists
        `exits`, `labels_with_early_exit`, `labels_without_early_exit`.

    Example:
    >>> interleaved(cascade_fn, full_fn, x_test, 100, time.perf_counter)["speedup"]
    """
    count = sample_count(samples, x)
    early, full, exits, labels_early, labels_full = [], [], [], [], []
    for i in range(count):
        sample = x[i : i + 1]
        for path in ((0, 1) if i % 2 == 0 else (1, 0)):
            start = clock()
            if path == 0:
                label, exit_ = with_early_exit(sample)
                early.append(clock() - start)
                labels_early.append(int(label))
                exits.append(int(exit_))
            else:
                label = without_early_exit(sample)
                full.append(clock() - start)
                labels_full.append(int(label))
        if progress is not None:
            progress.update(i + 1)
    mean_early, mean_full = float(np.mean(early)), float(np.mean(full))
    return {
        "samples": count,
        "ms_with_early_exit": 1e3 * mean_early,
        "ms_without_early_exit": 1e3 * mean_full,
        "speedup": mean_full / mean_early if mean_early > 0 else float("nan"),
        "ms_with_early_exit_median": 1e3 * float(np.median(early)),
        "ms_without_early_exit_median": 1e3 * float(np.median(full)),
        "exits": exits,
        "labels_with_early_exit": labels_early,
        "labels_without_early_exit": labels_full,
    }
