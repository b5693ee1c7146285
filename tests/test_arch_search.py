"""Budgeted architecture search: over-budget trials never train, the score, the results, the CLI."""

import json
import os

import keras
import keras_tuner as kt
import numpy as np
import pytest

from keras_egt import arch_search, costs, tuning
from keras_egt.budget import estimate_deployment
from keras_egt.cli import main as cli_main
from keras_egt.mcu import EarlyExitMCU
from kit import blob_task, run_model_saving_test

SHAPE = (32, 32, 2)
# Stage 1's second candidate is far over a 40 KiB flash budget, the others far under.
# The two small ones share every kernel shape after stage 1: on JAX each new shape
# compiles its initializer, which is most of a build's time.
BIG = "c8p s64p s128p"
SMALL = ("c4p s8p", "c8p s8p")
FLASH_BUDGET = 40 * 1024


def _space():
    return arch_search.MCUSearchSpace([[SMALL[0], BIG, SMALL[1]], ["c8"]],
                                      attention_hidden_channels=[4])


def _estimate(stages, head=4, num_classes=3):
    """The estimate of the architecture built on its own, outside any search."""
    return estimate_deployment(EarlyExitMCU(num_classes, SHAPE, stages=stages,
                                            attention_hidden_channels=head))


class Recorder(keras.callbacks.Callback):
    """Every fit's stages and epoch logs. KerasTuner deep-copies search callbacks, so
    the record is a class attribute the copies share."""

    runs = []

    def on_train_begin(self, logs=None):
        self.runs.append((" | ".join(" ".join(s) for s in self.model.stages_spec), {}))

    def on_epoch_end(self, epoch, logs=None):
        self.runs[-1][1][epoch] = dict(logs)


@pytest.fixture(scope="module")
def data():
    x, y = blob_task(n=48, size=32)
    return (x[:32], y[:32]), (x[32:], y[32:])


@pytest.fixture(scope="module")
def search(data, tmp_path_factory):
    """A grid over three stage-1 candidates: trained, over budget, trained.

    The one search of this file that trains (compiling a trial is most of a test's
    time); the CLI test reports it again from its directory.
    """
    keras.utils.set_random_seed(7)
    Recorder.runs = []
    (x, y), validation = data
    hypermodel = arch_search.BudgetedHyperModel(3, SHAPE, space=_space(), flash_budget="40KiB",
                                                arena_budget="64KiB", accuracy_floor=0.0)
    directory = str(tmp_path_factory.mktemp("runs"))
    tuner = tuning.GridSearch(hypermodel, objective=tuning.objective("budget_speedup"),
                              directory=directory, project_name="mcu",
                              max_consecutive_failed_trials=None)
    tuner.search(x, y, validation_data=validation, epochs=1, batch_size=16, verbose=0,
                 callbacks=[Recorder()])
    runs = list(Recorder.runs)
    # Untimed: the CLI test times the same trials (a compile per trial and path).
    results = arch_search.budget_results(tuner)
    return tuner, runs, results, directory


def _stages(trial):
    return " | ".join(trial.hyperparameters.values[f"stage_{k}"] for k in (1, 2))


def test_over_budget_trial_is_rejected_before_training(search):
    tuner, runs, _, _ = search
    trials = {_stages(t): t for t in tuner.oracle.trials.values()}
    big, small = f"{BIG} | c8", [f"{s} | c8" for s in SMALL]
    assert sorted(trials) == sorted([big, *small])
    rejected = trials[big]
    assert str(rejected.status) == "FAILED"
    flash = _estimate(big)["total_flash_bytes"]
    assert flash > FLASH_BUDGET
    message = rejected.message.strip().splitlines()[-1]
    assert "rejected before training" in message
    assert f"flash {flash:,} > {FLASH_BUDGET:,} bytes" in message
    assert "Budget: flash 40 KiB, arena 64 KiB." in message
    # Nothing was trained: no fit began, no epoch was logged, no checkpoint was written.
    assert big not in [stages for stages, _ in runs]
    assert not rejected.metrics.metrics and rejected.score is None
    assert not os.path.exists(tuner._get_checkpoint_fname(rejected.trial_id))
    # The search went on after the rejection and trained the rest.
    assert tuner.oracle.end_order == sorted(tuner.oracle.trials)
    assert tuner.oracle.end_order.index(rejected.trial_id) == 1
    assert [stages for stages, _ in runs] == small
    for stages in small:
        assert str(trials[stages].status) == "COMPLETED"
        assert _estimate(stages)["total_flash_bytes"] <= FLASH_BUDGET
    # The λ table refuses a failed trial unless told that rejections are expected.
    with pytest.raises(RuntimeError, match="rejected before training"):
        tuning.results_table(tuner)


def test_fit_rejects_on_either_budget_without_training(data):
    (x, y), validation = data
    hypermodel = arch_search.BudgetedHyperModel(3, SHAPE, space=_space(), arena_budget="20KiB")
    hp = kt.HyperParameters()
    hypermodel.declare_hyperparameters(hp)
    Recorder.runs = []
    # The over-budget architecture builds (KerasTuner builds the space's default when
    # a tuner is created), but fit refuses it before model.fit begins.
    hp.values["stage_1"] = BIG
    model = hypermodel.build(hp)
    arena = _estimate(f"{BIG} | c8")["max_arena_bytes"]
    before = [keras.ops.convert_to_numpy(w).copy() for w in model.weights]
    with pytest.raises(kt.errors.FailedTrialError,
                       match=f"arena {arena:,} > {20 * 1024:,} bytes.*arena 20 KiB"):
        hypermodel.fit(hp, model, x, y, validation_data=validation, epochs=1, verbose=0,
                       callbacks=[Recorder()])
    assert Recorder.runs == [] and int(model.optimizer.iterations) == 0
    for a, b in zip(before, model.weights):
        np.testing.assert_array_equal(a, keras.ops.convert_to_numpy(b))

    hp.values["stage_1"] = SMALL[0]
    model = hypermodel.build(hp)
    assert isinstance(model, EarlyExitMCU) and model.optimizer.built
    assert model.stages_spec == (("c4p", "s8p"), ("c8",))
    assert model.attention_hidden_channels == 4
    assert hypermodel.check_budget(hp, model) == estimate_deployment(model)
    assert estimate_deployment(model)["max_arena_bytes"] <= 20 * 1024


def test_budget_score_hand_made():
    assert arch_search.budget_score(0.96, 2.5, 0.95) == 2.5
    assert arch_search.budget_score(0.95, 1.7, 0.95) == 1.7       # the floor itself is met
    assert arch_search.budget_score(0.90, 3.0, 0.95) == pytest.approx(-0.05)
    assert arch_search.budget_score(0.50, 9.0, 0.95) == pytest.approx(-0.45)
    # Every trial meeting the floor outranks every one missing it, even a faster one.
    assert arch_search.budget_score(0.95, 0.9, 0.95) > arch_search.budget_score(0.949, 9.0, 0.95)

    estimate = {"total_flash_bytes": 1000, "max_arena_bytes": 300}
    callback = arch_search.BudgetMetrics(estimate, accuracy_floor=0.8)
    met = {"val_cascade_accuracy": 0.85, "val_cascade_speedup": 2.0}
    callback.on_epoch_end(0, met)
    assert met == {"val_cascade_accuracy": 0.85, "val_cascade_speedup": 2.0,
                   "val_flash_bytes": 1000.0, "val_arena_bytes": 300.0, "val_budget_speedup": 2.0}
    missed = {"val_cascade_accuracy": 0.6, "val_cascade_speedup": 4.0}
    callback.on_epoch_end(0, missed)
    assert missed["val_budget_speedup"] == pytest.approx(-0.2)
    with pytest.raises(ValueError, match="CascadeMetrics"):
        callback.on_epoch_end(0, {"val_loss": 1.0})
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        arch_search.BudgetMetrics(estimate, accuracy_floor=95)


def _numpy_cascade(model, x, y, threshold=0.9):
    """Cascade accuracy and MAC speedup from the model's logits, in plain numpy."""
    logits = np.stack([keras.ops.convert_to_numpy(z) for z in model(x)]).astype(np.float64)
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    last = model.num_exits - 1
    exits = np.array([next((k for k in range(last) if p[k, i].max() >= threshold), last)
                      for i in range(len(x))])
    labels = p.argmax(-1)[exits, np.arange(len(x))]
    macs = np.asarray(costs.exit_macs(model), np.float64)[exits].mean()
    return np.mean(labels == y), costs.final_only_macs(model) / macs


def _dominated(row, rows):
    return any(o["cascade_accuracy"] >= row["cascade_accuracy"]
               and o["cascade_speedup"] >= row["cascade_speedup"]
               and (o["cascade_accuracy"], o["cascade_speedup"])
               != (row["cascade_accuracy"], row["cascade_speedup"]) for o in rows)


def test_results_hold_what_the_trials_logged(search, data):
    tuner, runs, results, _ = search
    _, (x_val, y_val) = data
    assert sorted(r["stages"] for r in results) == sorted(f"{s} | c8" for s in SMALL)
    logged = dict(runs)
    for row in results:
        logs = logged[row["stages"]][0]       # one epoch: the best is the only one
        assert row["best_step"] == 0
        assert row["cascade_accuracy"] == logs["val_cascade_accuracy"]
        assert row["final_accuracy"] == logs["val_final_accuracy"]
        assert row["cascade_speedup"] == logs["val_cascade_speedup"]
        assert row["budget_speedup"] == arch_search.budget_score(
            logs["val_cascade_accuracy"], logs["val_cascade_speedup"], 0.0)
        assert row["budget_speedup"] == pytest.approx(
            tuner.oracle.trials[row["trial_id"]].score, rel=1e-6)
        estimate = _estimate(row["stages"])
        assert (row["flash_bytes"], row["arena_bytes"]) == (
            estimate["total_flash_bytes"], estimate["max_arena_bytes"])
        assert row["floor_met"] is True and row["consistency_weight"] == 0.3
        assert row["attention_hidden_channels"] == 4
        # The checkpoint's cascade, recomputed in numpy, is the one logged.
        model = tuner.load_model(tuner.oracle.trials[row["trial_id"]])
        accuracy, speedup = _numpy_cascade(model, x_val, y_val)
        assert accuracy == row["cascade_accuracy"]
        assert speedup == pytest.approx(row["cascade_speedup"], rel=1e-12)

    # Pareto front on (accuracy, MAC speedup), by plain dominance.
    for row in results:
        assert row["pareto"] is (not _dominated(row, results))
        assert row["time_speedup"] is None    # no validation data given: not timed
    best = results.best()
    assert best["trial_id"] == tuner.oracle.get_best_trials(1)[0].trial_id

    (rejected,) = results.rejected
    estimate = _estimate(f"{BIG} | c8")
    assert rejected["stages"] == f"{BIG} | c8"
    assert (rejected["flash_bytes"], rejected["arena_bytes"]) == (
        estimate["total_flash_bytes"], estimate["max_arena_bytes"])

    markdown = results.to_markdown()
    lines = markdown.splitlines()
    assert lines[0] == "Budget: flash 40 KiB, arena 64 KiB; accuracy floor 0%."
    assert lines[2] == ("| Stages | Head | λ | Accuracy (%) | MAC speedup | Time speedup | "
                        "Flash (KiB) | Arena (KiB) | Floor met | Pareto | Trial |")
    first = lines[4].split(" | ")
    assert first[0] == "| " + best["stages"].replace("|", "\\|")   # best first
    assert first[3] == f"{100 * best['cascade_accuracy']:.2f}"
    assert first[6] == f"{best['flash_bytes'] / 1024:.1f}" and first[8] == "yes"
    assert "Rejected before training (over budget): 1." in markdown
    assert f"| {BIG} \\| c8 | 4 | {estimate['total_flash_bytes'] / 1024:.1f} |" in markdown
    assert json.loads(json.dumps(results.to_dict()))["best_trial"] == best["trial_id"]


def test_results_floor_not_met_hand_made():
    row = dict(trial_id="0", stages="c8p | c8", attention_hidden_channels=8,
               consistency_weight=0.3, cascade_accuracy=0.5, final_accuracy=0.6,
               cascade_speedup=3.0, time_speedup=None, flash_bytes=2048, arena_bytes=1536,
               floor_met=False, budget_speedup=arch_search.budget_score(0.5, 3.0, 0.9),
               pareto=True, best_step=0)
    results = arch_search.BudgetResults([row], flash_budget=4096, accuracy_floor=0.9)
    assert results.best() is None and results.to_dict()["best_trial"] is None
    assert results.to_markdown().splitlines()[4] == (
        "| c8p \\| c8 | 8 | 0.3 | 50.00 | 3.00x | – | 2.0 | 1.5 | no | yes | 0 |")
    fast = dict(row, trial_id="1", cascade_accuracy=0.95, cascade_speedup=1.5, floor_met=True,
                budget_speedup=1.5)
    assert arch_search.BudgetResults([row, fast]).best()["trial_id"] == "1"


def test_searched_model_round_trips(tmp_path, data):
    hypermodel = arch_search.BudgetedHyperModel(3, SHAPE, space=_space())
    hp = kt.HyperParameters()
    hypermodel.declare_hyperparameters(hp)
    hp.values["stage_1"] = SMALL[1]            # not the default: the choice must survive
    model = hypermodel.build(hp)
    loaded = run_model_saving_test(model, data[1][0][:4], tmp_path)
    assert loaded.stages_spec == (("c8p", "s8p"), ("c8",))
    assert loaded.attention_hidden_channels == 4 and loaded.consistency_weight == 0.3


def test_space_and_bad_input():
    space = arch_search.MCUSearchSpace()
    assert space.num_stages == 4 and space.size == 3**4 * 2
    hp = kt.HyperParameters()
    assert space.declare(hp) == {"stages": " | ".join(s[0] for s in space.stages),
                                 "attention_hidden_channels": 8}
    assert [h.name for h in hp.space] == ["stage_1", "stage_2", "stage_3", "stage_4",
                                          "attention_hidden_channels"]
    custom = arch_search.MCUSearchSpace([[["c8p", "s16p"], "c8p  s32p"], ["c64"]], [8])
    assert custom.stages == (("c8p s16p", "c8p s32p"), ("c64",))

    with pytest.raises(ValueError, match="empty: stage 2"):
        arch_search.MCUSearchSpace([["c8p"], []])
    with pytest.raises(ValueError, match="twice"):
        arch_search.MCUSearchSpace([["c8p", "c8p"], ["c8"]])
    with pytest.raises(ValueError, match="Unknown block 'x8'"):
        arch_search.MCUSearchSpace([["c8p"], ["c8", "x8"]])
    with pytest.raises(ValueError, match=r"write \['c8p'\]"):
        arch_search.MCUSearchSpace(["c8p", ["c8"]])
    with pytest.raises(ValueError, match="at least 2 stages"):
        arch_search.MCUSearchSpace([["c8p"]])
    with pytest.raises(ValueError, match="whole numbers >= 1"):
        arch_search.MCUSearchSpace([["c8p"], ["c8"]], attention_hidden_channels=[0])
    with pytest.raises(ValueError, match=r"too small.*c8p c8p.*>= 8"):
        arch_search.BudgetedHyperModel(3, (4, 4, 2), space=arch_search.MCUSearchSpace(
            [["c8", "c8p c8p"], ["c8p"]], [4]))
    with pytest.raises(ValueError, match="Cannot read '12XB' as a size"):
        arch_search.BudgetedHyperModel(3, SHAPE, space=_space(), flash_budget="12XB")
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        arch_search.BudgetedHyperModel(3, SHAPE, space=_space(), accuracy_floor=1.5)
    with pytest.raises(ValueError, match="widths does not apply"):
        arch_search.BudgetedHyperModel(3, SHAPE, space=_space(), widths="micro")


def test_resuming_with_another_budget_is_refused():
    ours = arch_search.BudgetedHyperModel(3, SHAPE, space=_space(), flash_budget="40KiB")
    other = arch_search.BudgetedHyperModel(3, SHAPE, space=_space(), flash_budget="64KiB")
    hp = kt.HyperParameters()
    other.declare_hyperparameters(hp)
    with pytest.raises(kt.errors.FatalValueError, match="flash_budget"):
        ours.check_space(hp)
    hp = kt.HyperParameters()
    ours.declare_hyperparameters(hp)
    ours.check_space(hp)


def test_cli_budgeted_search(search, tmp_path, capsys):
    _, _, results, directory = search
    x, y = blob_task(n=40, size=32)
    npz = tmp_path / "tiny.npz"
    np.savez(npz, x_train=x, y_train=y)
    out = tmp_path / "out"
    # The fixture's search, from its directory: the same space, budgets and floor, so
    # the CLI resumes it (nothing left to train) and reports it.
    args = ["tune", "--data", str(npz), "--flash-budget", "40KiB", "--arena-budget", "64KiB",
            "--accuracy-floor", "0", "--stages", f"{SMALL[0]}, {BIG}, {SMALL[1]} | c8",
            "--head-channels", "4", "--tuner", "grid", "--epochs", "1", "--batch-size", "16",
            "--validation-split", "0.25", "--timing-samples", "5", "--verbose", "0",
            "--directory", directory, "--project-name", "mcu", "--output-dir", str(out)]
    assert cli_main(args) == 0
    printed = capsys.readouterr().out
    assert "| Stages | Head | λ | Accuracy (%) | MAC speedup | Time speedup |" in printed
    assert "Rejected before training (over budget): 1." in printed and "best.keras" in printed
    assert sorted(os.listdir(out)) == ["best.keras", "results.json", "results.md"]
    record = json.load(open(out / "results.json"))
    assert record["objective"] == "budget_speedup" and record["flash_budget"] == FLASH_BUDGET
    assert record["arena_budget"] == 64 * 1024 and record["best_trial"] == results.best()["trial_id"]
    assert sorted(t["stages"] for t in record["trials"]) == sorted(r["stages"] for r in results)
    # The Pareto front's trials are timed (batch 1, compiled cascade vs final exit), no other.
    for trial in record["trials"]:
        assert trial["pareto"] is (not _dominated(trial, record["trials"]))
        if trial["pareto"]:
            assert trial["time_speedup"] > 0 and np.isfinite(trial["time_speedup"])
        else:
            assert trial["time_speedup"] is None
    assert [t["stages"] for t in record["rejected"]] == [f"{BIG} | c8"]
    best = keras.saving.load_model(out / "best.keras")
    assert isinstance(best, EarlyExitMCU)
    assert " | ".join(" ".join(s) for s in best.stages_spec) == results.best()["stages"]
    assert "| Stages |" in open(out / "results.md").read()

    # A new search with every trial over budget: the results are written, best.keras
    # is not, exit code 2.
    assert cli_main(args[:4] + ["1KiB"] + args[5:] + ["--directory", str(tmp_path / "runs"),
                                                      "--output-dir", str(tmp_path / "none")]) == 2
    assert "every trial was over budget" in capsys.readouterr().err
    assert sorted(os.listdir(tmp_path / "none")) == ["results.json", "results.md"]
    record = json.load(open(tmp_path / "none" / "results.json"))
    assert record["trials"] == [] and len(record["rejected"]) == 3

    def error(*extra, base=args):
        assert cli_main(list(base) + list(extra)) == 2
        return capsys.readouterr().err

    assert "--flash-budget: Cannot read '12XB' as a size" in error("--flash-budget", "12XB")
    assert "--accuracy-floor must be a fraction in [0, 1]" in error("--accuracy-floor", "95")
    assert "drop --widths" in error("--widths", "micro")
    assert "--stages: Unknown block 'x8'" in error("--stages", "c8p | x8")
    assert "--head-channels must be comma-separated" in error("--head-channels", "a")
    plain = ["tune", "--data", str(npz), "--epochs", "1"]
    assert "give --flash-budget" in error("--objective", "budget_speedup", base=plain)
    assert "give --flash-budget" in error("--accuracy-floor", "0.9", base=plain)
