"""KerasTuner search of λ: hypermodel, objectives, results table, resume, distribution."""

import json
import os
import socket
import subprocess
import sys
import textwrap

import keras
import keras_tuner as kt
import numpy as np
import pytest

from keras_egt import costs, plots, tuning
from keras_egt.cli import main as cli_main
from kit import BACKEND, blob_task

TINY = (4, 4, 8, 8, 8)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
HERE = os.path.dirname(os.path.abspath(__file__))


class Recorder(keras.callbacks.Callback):
    """Keeps every fit's λ and its epochs' logs. KerasTuner deep-copies search
    callbacks, so the record is a class attribute shared by the copies."""

    logs, fits, runs = [], [], []

    def on_train_begin(self, logs=None):
        self.fits.append(self.model.consistency_weight)
        self.runs.append((self.model.consistency_weight, {}))

    def on_epoch_end(self, epoch, logs=None):
        self.logs.append((self.model.consistency_weight, epoch, dict(logs)))
        self.runs[-1][1][epoch] = dict(logs)


@pytest.fixture
def recorder():
    Recorder.logs, Recorder.fits, Recorder.runs = [], [], []
    return Recorder


def _row_matches_logs(row, logged):
    """The table row holds exactly what one fit logged at its best epoch."""
    scores = {e: logs["val_score"] for e, logs in logged.items()}
    if row["best_step"] != max(scores, key=scores.get):
        return False
    logs = logged[row["best_step"]]
    early = [key for key in logs if key.startswith("val_exit_") and key.endswith("_consistency")]
    expected = {key[len("val_"):]: logs[key] for key in early}
    expected.update(consistency=logs["val_consistency"],
                    cascade_accuracy=logs["val_cascade_accuracy"],
                    final_accuracy=logs["val_final_accuracy"],
                    cascade_speedup=logs["val_cascade_speedup"],
                    score=logs["val_score"], objective=logs["val_score"])
    return len(early) >= 1 and all(row[key] == value for key, value in expected.items())


def _check_rows_against_logs(table, recorder):
    """Every row of `results_table` is what a fit of its λ logged (by the callbacks)."""
    assert table
    for row in table:
        runs = [logged for lam, logged in recorder.runs if lam == row["consistency_weight"]]
        assert any(_row_matches_logs(row, logged) for logged in runs), row
        assert row["final_accuracy"] is not None
        assert row["score"] == pytest.approx(
            tuning.harmonic_mean(row["cascade_accuracy"], row["consistency"]))


@pytest.fixture(scope="module")
def data():
    x, y = blob_task(n=48, size=32)
    return (x[:32], y[:32]), (x[32:], y[32:])


def _search(directory, data, lambdas=(0.0, 0.3), epochs=2, tuner=tuning.GridSearch,
            callbacks=(), name="p", overwrite=True, widths=TINY, threshold=0.9, **tuner_args):
    (x, y), validation = data
    hypermodel = tuning.EGTHyperModel(3, (32, 32, 2), widths=widths, lambdas=lambdas,
                                      threshold=threshold)
    search = tuner(hypermodel, objective=tuning.objective("score"), directory=str(directory),
                   project_name=name, overwrite=overwrite, **tuner_args)
    search.search(x, y, validation_data=validation, epochs=epochs, batch_size=16, verbose=0,
                  callbacks=list(callbacks))
    return search


def _numpy_cascade(model, x, y, threshold=0.9):
    """Cascade accuracy and MAC speedup from the model's logits, in plain numpy."""
    logits = np.stack([keras.ops.convert_to_numpy(z) for z in model(x)]).astype(np.float64)
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    exits = np.full(len(x), 4)
    for i in range(len(x)):
        for k in range(4):
            if p[k, i].max() >= threshold:
                exits[i] = k
                break
    labels = p.argmax(-1)[exits, np.arange(len(x))]
    macs = np.asarray(costs.exit_macs(model), np.float64)[exits].mean()
    return np.mean(labels == y), costs.final_only_macs(model) / macs


def test_objectives():
    for name, (metric, direction) in tuning.OBJECTIVES.items():
        objective = tuning.objective(name)
        assert (objective.name, objective.direction) == (metric, direction)
    with pytest.raises(ValueError, match="Unknown objective 'accuracy'.*consistency"):
        tuning.objective("accuracy")


def test_harmonic_mean():
    assert tuning.harmonic_mean(0.9, 0.6) == pytest.approx(2 * 0.9 * 0.6 / 1.5)
    assert tuning.harmonic_mean(0.5, 0.5) == pytest.approx(0.5)
    assert tuning.harmonic_mean(1.0, 0.0) == 0.0
    assert tuning.harmonic_mean(0.2, 0.8) == pytest.approx(0.32)  # 2 * 0.16 / 1.0


def test_hypermodel_space_and_bad_input():
    hypermodel = tuning.EGTHyperModel(9, (64, 64, 2), widths="micro",
                                      exit_weights=[(1, 1, 1, 1, 1), (0.5, 0.5, 1, 1, 2)],
                                      learning_rates=[1e-3, 3e-4])
    hp = kt.HyperParameters()
    hypermodel.declare_hyperparameters(hp)
    space = {h.name: h for h in hp.space}
    assert list(space["consistency_weight"].values) == [0.0, 0.1, 0.2, 0.3, 0.4, 0.5]
    assert list(space["exit_weights"].values) == ["1,1,1,1,1", "0.5,0.5,1,1,2"]
    assert list(space["learning_rate"].values) == [1e-3, 3e-4]
    hp.values.update(consistency_weight=0.4, exit_weights="0.5,0.5,1,1,2", learning_rate=3e-4)
    model = hypermodel.build(hp)
    assert model.consistency_weight == 0.4 and model.exit_weights == (0.5, 0.5, 1, 1, 2)
    assert model.widths == (8, 16, 32, 64, 64)
    assert float(keras.ops.convert_to_numpy(model.optimizer.learning_rate)) == pytest.approx(3e-4)

    with pytest.raises(ValueError, match="search space is empty"):
        tuning.EGTHyperModel(9, (64, 64, 2), lambdas=[])
    with pytest.raises(ValueError, match=">= 0"):
        tuning.EGTHyperModel(9, (64, 64, 2), lambdas=[0.1, -0.1])
    with pytest.raises(ValueError, match="twice"):
        tuning.EGTHyperModel(9, (64, 64, 2), lambdas=[0.1, 0.1])
    with pytest.raises(ValueError, match="5 numbers"):
        tuning.EGTHyperModel(9, (64, 64, 2), exit_weights=[(1, 1)])
    with pytest.raises(ValueError, match="5 numbers"):  # a bad candidate after a good one
        tuning.EGTHyperModel(9, (64, 64, 2), exit_weights=[(1,) * 5, (1, 1, 1, 1, -1)])
    with pytest.raises(ValueError, match="too small"):
        tuning.EGTHyperModel(9, (16, 16, 2))


def test_hypermodel_searches_the_egt_variants():
    hypermodel = tuning.EGTHyperModel(
        9, (64, 64, 2), widths="micro", lambdas=[0.0, 0.4],
        consistency_targets=["final", "next"], consistency_losses=["cosine", "attention_transfer"],
        lambda_profiles=[(1, 1, 1, 1), (0.5, 1, 1, 1.5)],
    )
    hp = kt.HyperParameters()
    hypermodel.declare_hyperparameters(hp)
    space = {h.name: h for h in hp.space}
    assert list(space["consistency_target"].values) == ["final", "next"]
    assert list(space["consistency_loss"].values) == ["cosine", "attention_transfer"]
    assert list(space["lambda_profile"].values) == ["1,1,1,1", "0.5,1,1,1.5"]
    hp.values.update(consistency_weight=0.4, consistency_target="next",
                     consistency_loss="attention_transfer", lambda_profile="0.5,1,1,1.5")
    model = hypermodel.build(hp)
    assert model.consistency_target == "next" and model.consistency_loss == "attention_transfer"
    assert model.consistency_weight == pytest.approx((0.2, 0.4, 0.4, 0.6))
    # Without the new options the space is the λ search it was.
    plain = kt.HyperParameters()
    tuning.EGTHyperModel(9, (64, 64, 2), widths="micro").declare_hyperparameters(plain)
    assert not {"consistency_target", "consistency_loss", "lambda_profile"} & {h.name for h in plain.space}
    with pytest.raises(ValueError, match="consistency_target"):
        tuning.EGTHyperModel(9, (64, 64, 2), widths="micro", consistency_targets=["previous"])
    with pytest.raises(ValueError, match="one λ per early exit"):
        tuning.EGTHyperModel(9, (64, 64, 2), widths="micro", lambda_profiles=[(1, 1)])


def test_grid_search_table_holds_what_the_trials_logged(data, recorder, tmp_path):
    tuner = _search(tmp_path, data, lambdas=(0.0, 0.3), callbacks=[recorder()])
    table = tuning.results_table(tuner)
    assert sorted(r["consistency_weight"] for r in table) == [0.0, 0.3]
    assert sorted(recorder.fits) == [0.0, 0.3]
    _check_rows_against_logs(table, recorder)
    for row in table:
        assert sum(1 for lam in recorder.fits if lam == row["consistency_weight"]) == 1
    markdown = table.to_markdown()
    assert markdown.startswith("| λ | Exit 1 | Exit 2 | Exit 3 | Exit 4 | Avg |")
    assert len(markdown.strip().splitlines()) == 2 + 2

    # The best model is the checkpoint of the best trial's best epoch: the cascade
    # figures recomputed from its logits in numpy are the ones logged.
    best = tuner.get_best_models(1)[0]
    row = max(table, key=lambda r: r["score"])
    assert best.consistency_weight == row["consistency_weight"]
    (_, _), (x_val, y_val) = data
    accuracy, speedup = _numpy_cascade(best, x_val, y_val)
    assert accuracy == row["cascade_accuracy"]
    assert speedup == pytest.approx(row["cascade_speedup"], rel=1e-12)

    path = plots.pareto_plot(table, str(tmp_path / "pareto.png"))
    assert open(path, "rb").read(8) == PNG_SIGNATURE


def test_pareto_front_on_hand_made_rows():
    rows = [
        {"trial_id": "a", "cascade_accuracy": 0.9, "consistency": 0.3, "cascade_speedup": 2.0},
        {"trial_id": "b", "cascade_accuracy": 0.8, "consistency": 0.5, "cascade_speedup": 1.0},
        {"trial_id": "c", "cascade_accuracy": 0.8, "consistency": 0.3, "cascade_speedup": 3.0},
        {"trial_id": "d", "cascade_accuracy": 0.9, "consistency": 0.5, "cascade_speedup": 1.5},
    ]
    assert [r["trial_id"] for r in tuning.pareto_front(rows)] == ["d"]
    three = ("cascade_accuracy", "consistency", "cascade_speedup")
    assert [r["trial_id"] for r in tuning.pareto_front(rows, three)] == ["a", "c", "d"]


@pytest.mark.slow
@pytest.mark.parametrize("tuner_class, args", [
    (kt.RandomSearch, {"max_trials": 2, "seed": 1}),
    (kt.BayesianOptimization, {"max_trials": 2, "seed": 1}),
    (kt.Hyperband, {"max_epochs": 2, "factor": 2, "hyperband_iterations": 1, "seed": 1}),
])
def test_other_tuners(tuner_class, args, data, recorder, tmp_path):
    if tuner_class is kt.Hyperband:
        tuner = _search(tmp_path, data, lambdas=(0.0, 0.3), tuner=tuner_class,
                        callbacks=[recorder()], **args)
    else:
        tuner = _search(tmp_path, data, lambdas=(0.0, 0.1, 0.3), epochs=1, tuner=tuner_class,
                        callbacks=[recorder()], **args)
    table = tuning.results_table(tuner)
    assert table and all(r["consistency_weight"] in (0.0, 0.1, 0.3) for r in table)
    assert len(recorder.fits) >= len(table)
    _check_rows_against_logs(table, recorder)
    assert tuner.get_best_models(1)[0].consistency_weight in (0.0, 0.1, 0.3)


class Interrupt(keras.callbacks.Callback):
    """Stops the whole search (as Ctrl-C would) when the trial of λ = `at` starts."""

    at = None

    def on_train_begin(self, logs=None):
        if self.model.consistency_weight == self.at:
            raise KeyboardInterrupt


def test_resume_after_interruption_repeats_no_finished_trial(data, recorder, tmp_path):
    Interrupt.at = 0.3
    with pytest.raises(KeyboardInterrupt):
        _search(tmp_path, data, lambdas=(0.0, 0.3, 0.5), epochs=1,
                callbacks=[Interrupt(), recorder()])
    assert recorder.fits == [0.0]

    Interrupt.at = None
    tuner = _search(tmp_path, data, lambdas=(0.0, 0.3, 0.5), epochs=1, overwrite=False,
                    callbacks=[recorder(), Interrupt()])
    # λ = 0 ran once, before the interruption; the interrupted λ = 0.3 ran again.
    assert recorder.fits == [0.0, 0.3, 0.5]
    assert sorted(r["consistency_weight"] for r in tuning.results_table(tuner)) == [0.0, 0.3, 0.5]


def test_directory_of_another_search_is_refused(data, tmp_path):
    _search(tmp_path, data, lambdas=(0.0, 0.3), epochs=1, max_trials=1)
    # Trials left to run: the first one built refuses.
    with pytest.raises(kt.errors.FatalError, match="trials of another search.*widths"):
        _search(tmp_path, data, lambdas=(0.0, 0.3), epochs=1, overwrite=False,
                widths=(4, 4, 8, 8, 16))
    # A finished grid runs nothing more; reading its results refuses.
    _search(tmp_path, data, lambdas=(0.0, 0.3), epochs=1, overwrite=False)
    tuner = _search(tmp_path, data, lambdas=(0.0, 0.2), epochs=1, overwrite=False)
    with pytest.raises(kt.errors.FatalError, match="consistency_weight"):
        tuning.results_table(tuner)


def test_rerun_at_another_cascade_threshold_is_refused(data, tmp_path):
    # Trials are scored by the validation cascade: reusing those scored at 0.9 for a
    # search at 0.5 would rank trials on the wrong cascade.
    _search(tmp_path, data, lambdas=(0.0, 0.3), epochs=1, max_trials=1)
    with pytest.raises(kt.errors.FatalError, match="cascade_threshold.*another cascade threshold"):
        _search(tmp_path, data, lambdas=(0.0, 0.3), epochs=1, overwrite=False, threshold=0.5)
    _search(tmp_path, data, lambdas=(0.0, 0.3), epochs=1, overwrite=False)  # same: resumes
    tuner = _search(tmp_path, data, lambdas=(0.0, 0.3), epochs=1, overwrite=False,
                    threshold=[0.8, 0.8, 0.8, 0.8])
    with pytest.raises(kt.errors.FatalError, match="cascade_threshold"):
        tuning.results_table(tuner)


class Broken(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        raise ValueError("broken callback")


def test_a_failed_trial_fails_the_search(data, tmp_path):
    with pytest.raises(kt.errors.FatalError, match="consistency_weight.*broken callback"):
        _search(tmp_path, data, lambdas=(0.0, 0.3), epochs=1, callbacks=[Broken()])


def test_validation_data_is_required_or_split(data, recorder, tmp_path):
    (x, y), _ = data
    hypermodel = tuning.EGTHyperModel(3, (32, 32, 2), widths=TINY, lambdas=(0.3,))
    tuner = kt.GridSearch(hypermodel, objective=tuning.objective("consistency"),
                          directory=str(tmp_path), project_name="v")
    with pytest.raises(kt.errors.FatalError, match="validation_data"):
        tuner.search(x, y, epochs=1, verbose=0)
    tuner = kt.GridSearch(hypermodel, objective=tuning.objective("consistency"),
                          directory=str(tmp_path), project_name="w")
    tuner.search(x, y, validation_split=0.25, epochs=1, verbose=0, callbacks=[recorder()])
    (row,) = tuning.results_table(tuner)
    assert row["objective"] == row["consistency"]


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


DISTRIBUTED_SCRIPT = textwrap.dedent("""
    import json, os, sys, time
    sys.path.insert(0, {tests!r})
    import keras, keras_tuner as kt
    from kit import blob_task
    from keras_egt import tuning

    me = os.environ["KERASTUNER_TUNER_ID"]
    rendezvous = {rendezvous!r}

    class Rendezvous(keras.callbacks.Callback):
        # Holds each trial until both workers have started one (60 s at most), so
        # that a worker that starts first cannot take every trial.
        def on_train_begin(self, logs=None):
            with open(os.path.join(rendezvous, me), "a") as f:
                f.write(f"{{self.model.consistency_weight}}\\n")
            deadline = time.time() + 60
            while len(os.listdir(rendezvous)) < 2 and time.time() < deadline:
                time.sleep(0.2)

    x, y = blob_task(n=48, size=32)
    hypermodel = tuning.EGTHyperModel(3, (32, 32, 2), widths={widths!r},
                                      lambdas=[0.0, 0.1, 0.2, 0.3])
    tuner = kt.GridSearch(hypermodel, objective=tuning.objective("score"),
                          directory={directory!r}, project_name="dist")
    tuner.search(x[:32], y[:32], validation_data=(x[32:], y[32:]), epochs=1, verbose=0,
                 callbacks=[Rendezvous()])
    if me == "chief":
        print("TABLE" + json.dumps(tuning.results_table(tuner)))
""")


@pytest.mark.slow
def test_distributed_search_with_one_chief_and_two_workers(tmp_path):
    rendezvous = tmp_path / "started"
    rendezvous.mkdir()
    script = tmp_path / "search.py"
    script.write_text(DISTRIBUTED_SCRIPT.format(
        tests=HERE, rendezvous=str(rendezvous), widths=TINY, directory=str(tmp_path / "runs")))
    env = dict(os.environ, KERAS_BACKEND=BACKEND, KERASTUNER_ORACLE_IP="127.0.0.1",
               KERASTUNER_ORACLE_PORT=str(_free_port()), PYTHONUNBUFFERED="1")
    processes = {
        tuner_id: subprocess.Popen([sys.executable, str(script)],
                                   env=dict(env, KERASTUNER_TUNER_ID=tuner_id),
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for tuner_id in ("chief", "tuner0", "tuner1")
    }
    outputs = {}
    try:
        for tuner_id, process in processes.items():
            outputs[tuner_id] = process.communicate(timeout=300)[0]
            assert process.returncode == 0, outputs[tuner_id][-3000:]
    finally:
        for process in processes.values():
            process.kill()
    ran = {w: sorted(float(v) for v in (rendezvous / w).read_text().split())
           for w in ("tuner0", "tuner1")}
    assert ran["tuner0"] and ran["tuner1"], ran
    assert sorted(ran["tuner0"] + ran["tuner1"]) == [0.0, 0.1, 0.2, 0.3]
    assert not (rendezvous / "chief").exists()  # the chief serves, it trains nothing
    table = json.loads(outputs["chief"].split("TABLE", 1)[1].splitlines()[0])
    assert sorted(r["consistency_weight"] for r in table) == [0.0, 0.1, 0.2, 0.3]
    for r in table:  # the harmonic mean, written out
        a, c = r["cascade_accuracy"], r["consistency"]
        assert r["score"] == pytest.approx(2 * a * c / (a + c))


DATA_PARALLEL_SCRIPT = textwrap.dedent("""
    import os, sys
    sys.path.insert(0, {tests!r})
    if os.environ["KERAS_BACKEND"] == "tensorflow":
        import tensorflow as tf

        # Before Keras starts TensorFlow: two logical CPUs, like XLA_FLAGS for JAX.
        tf.config.set_logical_device_configuration(
            tf.config.list_physical_devices("CPU")[0],
            [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras, keras_tuner as kt
    from kit import blob_task
    from keras_egt import tuning

    x, y = blob_task(n=48, size=32)
    args = dict(objective=tuning.objective("score"), directory={directory!r},
                project_name="dp")
    distribution = None
    if keras.backend.backend() == "jax":
        devices = keras.distribution.list_devices("cpu")
        distribution = keras.distribution.DataParallel(devices=devices)
    else:
        devices = ["/cpu:0", "/cpu:1"]
        args["distribution_strategy"] = tf.distribute.MirroredStrategy(devices)
    hypermodel = tuning.EGTHyperModel(3, (32, 32, 2), widths={widths!r}, lambdas=[0.3],
                                      distribution=distribution)
    tuner = kt.GridSearch(hypermodel, **args)
    tuner.search(x[:32], y[:32], validation_data=(x[32:], y[32:]), epochs=2, batch_size=16,
                 verbose=0)
    (row,) = tuning.results_table(tuner)
    model = tuner.get_best_models(1)[0]
    kernel = model.trainable_variables[0].value
    if keras.backend.backend() == "jax":
        placed = len(kernel.sharding.device_set)
    else:
        placed = len(kernel.values)  # a MirroredVariable: one copy per device
    print("DEVICES", len(devices), placed, row["score"], row["cascade_accuracy"],
          row["consistency"])
""")


@pytest.mark.slow
@pytest.mark.skipif(BACKEND not in ("jax", "tensorflow"),
                    reason="keras.distribution (JAX) or tf.distribute (TensorFlow)")
def test_data_parallel_trial_on_two_virtual_cpus(tmp_path):
    script = tmp_path / "dp.py"
    script.write_text(DATA_PARALLEL_SCRIPT.format(tests=HERE, widths=TINY,
                                                  directory=str(tmp_path / "runs")))
    env = dict(os.environ, KERAS_BACKEND=BACKEND,
               XLA_FLAGS="--xla_force_host_platform_device_count=2")
    done = subprocess.run([sys.executable, str(script)], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    line = [v for v in done.stdout.splitlines() if v.startswith("DEVICES")][0].split()
    assert line[1] == line[2] == "2"
    score, a, c = (float(v) for v in line[3:6])
    assert score == pytest.approx(2 * a * c / (a + c))


def test_cli_tune_end_to_end(tmp_path, capsys):
    x, y = blob_task(n=40, size=32)
    npz = tmp_path / "tiny.npz"
    np.savez(npz, x_train=x, y_train=y)
    out = tmp_path / "out"
    args = ["tune", "--data", str(npz), "--widths", "4,4,8,8,8", "--lambdas", "0,0.3",
            "--epochs", "1", "--batch-size", "16", "--validation-split", "0.25",
            "--directory", str(tmp_path / "runs"), "--output-dir", str(out), "--verbose", "0"]
    assert cli_main(args) == 0
    printed = capsys.readouterr().out
    assert "| λ | Exit 1 |" in printed and "best.keras" in printed
    assert sorted(os.listdir(out)) == ["best.keras", "pareto.png", "results.json", "results.md"]
    trials = json.load(open(out / "results.json"))["trials"]
    assert sorted(t["consistency_weight"] for t in trials) == [0.0, 0.3]
    assert keras.saving.load_model(out / "best.keras").consistency_weight in (0.0, 0.3)

    assert cli_main(args[:-4] + ["--lambdas", "x", "--output-dir", str(out)]) == 2
    assert "--lambdas must be comma-separated numbers" in capsys.readouterr().err
    assert cli_main(args + ["--epochs", "0"]) == 2
    with pytest.raises(SystemExit) as exited:
        cli_main(args + ["--objective", "nope"])
    assert exited.value.code == 2


def _tune_on_damaged(tmp_path, capsys, files):
    """`keras-egt tune` resuming in a project holding `files`: (exit code, stderr, project)."""
    x, y = blob_task(n=12, size=32)
    data = tmp_path / "tiny.npz"
    np.savez(data, x_train=x, y_train=y, x_test=x[:6], y_test=y[:6])
    project = tmp_path / "runs" / "lambda"
    for name, text in files.items():
        (project / name).parent.mkdir(parents=True, exist_ok=True)
        (project / name).write_text(text)
    code = cli_main(["tune", "--data", str(data), "--widths", "2,2,2,2,2", "--lambdas", "0",
                     "--epochs", "1", "--verbose", "0", "--directory", str(tmp_path / "runs"),
                     "--output-dir", str(tmp_path / "tune")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err, project


def test_tune_names_the_truncated_checkpoint_file(tmp_path, capsys):
    # A search stopped while KerasTuner wrote trial_01's state; tuner0.json is valid JSON.
    err, project = _tune_on_damaged(tmp_path, capsys, {
        "tuner0.json": "{}", "trial_01/trial.json": '{"trial_id": "01", "hyperparameters": {"spa'})
    assert f"{project}: {project / 'trial_01' / 'trial.json'} is damaged (JSONDecodeError: " \
        "Unterminated string" in err, err
    assert "tuner0.json" not in err and "--overwrite" in err


def test_tune_refuses_an_oracle_checkpoint_missing_its_keys_in_one_line(tmp_path, capsys):
    err, project = _tune_on_damaged(tmp_path, capsys, {"tuner0.json": "{}", "oracle.json": "{}"})
    assert f"cannot resume the search in {project}: a tuner checkpoint there is damaged" in err
    assert "RuntimeError" in err and "--overwrite" in err
