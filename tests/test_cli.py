"""The ``sk-mann`` command line: help, demo (offline), errors, train, evaluate."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import omniglot_home, requires_omniglot
from sklearn.datasets import load_digits

from sk_mann import MANNOneShotClassifier, cli
from sk_mann._demo import digits_as_omniglot
from sk_mann.model import build_network
from sk_mann.pretrained import save_weights

TINY = {
    "controller": "lstm",
    "controller_size": 8,
    "n_slots": 8,
    "slot_size": 4,
    "n_reads": 1,
    "gamma": 0.95,
    "read_feedback": True,
    "write_content": "key",
    "read_after_write": True,
}
TINY_ARCH = [
    "--controller-size",
    "8",
    "--n-slots",
    "8",
    "--slot-size",
    "4",
    "--n-reads",
    "1",
]


def _write_model(path, n_inputs=400):
    torch.manual_seed(0)
    module = build_network("mann", n_inputs, 5, 5, **TINY)
    config = {
        "network": "mann",
        "n_inputs": n_inputs,
        "labels": "onehot",
        "n_way": 5,
        "kwargs": TINY,
    }
    return save_weights(path, module, config)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return _write_model(tmp_path_factory.mktemp("model") / "tiny.pt")


def _error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("sk-mann: error: ")
    return lines[0]


# ---------------------------------------------------------------------------
# help and version
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "command, words",
    [
        ([], ["one-shot", "demo", "train", "evaluate", "benchmark"]),
        (["demo"], ["one-shot", "--dataset", "digits", "examples:"]),
        (["train"], ["Meta-train", "--checkpoint-dir", "examples:"]),
        (["evaluate"], ["held-out", "--no-baselines", "examples:"]),
        (["benchmark"], ["benchmark", "source", "examples:"]),
    ],
)
def test_help(capsys, command, words):
    assert cli.main([*command, "--help"]) == 0
    out = capsys.readouterr().out
    for word in words:
        assert word in out


def test_version(capsys):
    from sk_mann import __version__

    assert cli.main(["--version"]) == 0
    assert __version__ in capsys.readouterr().out


def test_no_command_prints_help(capsys):
    assert cli.main([]) == 2
    assert "demo" in capsys.readouterr().err


def test_bad_option_is_a_usage_error(capsys):
    assert cli.main(["demo", "--episodes", "0"]) == 2
    assert "--episodes" in capsys.readouterr().err
    assert cli.main(["demo", "--dataset", "mnist"]) == 2


# ---------------------------------------------------------------------------
# digits
# ---------------------------------------------------------------------------


def test_digits_as_omniglot():
    images = digits_as_omniglot(load_digits().images)
    assert images.shape == (1797, 20, 20)
    assert images.dtype == np.float32
    assert images.min() >= 0.0 and images.max() <= 1.0
    np.testing.assert_allclose(images.reshape(1797, -1).max(axis=1), 1.0)
    ink = images > 0.5
    assert 0.03 < ink.mean() < 0.3  # strokes are a minority, as in Omniglot
    # Centred, with an empty margin like the Omniglot characters.
    assert images[:, 0, :].max() == 0 and images[:, :, -1].max() == 0
    rows, cols = np.indices((20, 20))
    mass = images.sum(axis=(1, 2))
    centre_r = (images * rows).sum(axis=(1, 2)) / mass
    centre_c = (images * cols).sum(axis=(1, 2)) / mass
    assert abs(centre_r.mean() - 9.5) < 1.0 and abs(centre_c.mean() - 9.5) < 1.0


def test_digits_as_omniglot_rejects_bad_input():
    with pytest.raises(ValueError):
        digits_as_omniglot(np.zeros((8, 8)))
    with pytest.raises(ValueError):
        digits_as_omniglot(-np.ones((1, 8, 8)))


# ---------------------------------------------------------------------------
# demo
# ---------------------------------------------------------------------------


def test_demo_digits_offline(tmp_path, tiny_model, capsys):
    plot, out_json = tmp_path / "x.png", tmp_path / "x.json"
    argv = ["demo", "--dataset", "digits", "--model", str(tiny_model)]
    argv += ["--episodes", "5", "--plot", str(plot), "--json", str(out_json)]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "digits" in out and "2nd" in out and "Done in" in out
    assert plot.stat().st_size > 1000
    payload = json.loads(out_json.read_text())
    for key in ("dataset", "model", "protocol", "results", "plot", "elapsed_seconds"):
        assert key in payload
    assert payload["dataset"]["name"] == "digits"
    assert payload["protocol"]["n_way"] == 5
    assert set(payload["results"]) == {
        "MANN",
        "kNN, k=1 (scikit-learn)",
        "kNN, k=1 (River)",
    }
    for res in payload["results"].values():
        assert res["instances"] == list(range(1, 11))
        assert res["n_episodes"] == 5
        assert all(0.0 <= a <= 1.0 for a in res["accuracy"])
    # Exact 1-NN in both libraries on the same episodes: the same answers.
    knn = payload["results"]
    assert (
        knn["kNN, k=1 (scikit-learn)"]["accuracy"]
        == knn["kNN, k=1 (River)"]["accuracy"]
    )


def test_demo_auto_falls_back_to_digits(tmp_path, tiny_model, capsys):
    argv = ["demo", "--model", str(tiny_model), "--data-home", str(tmp_path)]
    argv += ["--episodes", "2", "--river-episodes", "1", "--no-plot"]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "Omniglot not found" in out and "digits" in out
    assert "first 1 of the episodes" in out


def test_demo_missing_omniglot(tmp_path, tiny_model, capsys):
    argv = ["demo", "--dataset", "omniglot", "--data-home", str(tmp_path)]
    argv += ["--model", str(tiny_model), "--no-plot"]
    assert cli.main(argv) == 2
    line = _error_line(capsys)
    assert "SK_MANN_DATA" in line and "images_evaluation.zip" in line


def test_corrupt_model(tmp_path, capsys):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a torch file at all")
    assert cli.main(["demo", "--model", str(bad), "--dataset", "digits"]) == 2
    assert "corrupt" in _error_line(capsys)
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(3)}, other)
    assert cli.main(["demo", "--model", str(other), "--dataset", "digits"]) == 2
    assert "not an sk_mann weights file" in _error_line(capsys)


def test_missing_model(tmp_path, capsys):
    missing = str(tmp_path / "nope.pt")
    assert cli.main(["demo", "--model", missing, "--dataset", "digits"]) == 2
    assert "nope.pt" in _error_line(capsys)


def test_model_of_other_input_size(tmp_path, capsys):
    path = _write_model(tmp_path / "small.pt", n_inputs=64)
    assert cli.main(["demo", "--model", str(path), "--dataset", "digits"]) == 2
    line = _error_line(capsys)
    assert "64" in line and "400" in line


def test_unwritable_plot(tmp_path, tiny_model, capsys):
    plot = tmp_path / "no" / "such" / "dir.png"
    argv = ["demo", "--model", str(tiny_model), "--plot", str(plot)]
    assert cli.main(argv) == 2
    assert "does not exist" in _error_line(capsys)


# ---------------------------------------------------------------------------
# benchmark
# ---------------------------------------------------------------------------


def test_benchmark_runs_script_with_args(tmp_path, monkeypatch, capsys):
    folder = tmp_path / "benchmarks"
    folder.mkdir()
    record = tmp_path / "argv.json"
    (folder / "fake.py").write_text(
        "import json, sys\n"
        f"open({str(record)!r}, 'w').write(json.dumps(sys.argv[1:]))\n"
        "sys.exit(3)\n"
    )
    (folder / "_helper.py").write_text("")
    monkeypatch.setattr(cli, "_benchmarks_dir", lambda: folder)
    assert cli.main(["benchmark"]) == 0
    listing = capsys.readouterr().out
    assert "fake" in listing and "_helper" not in listing
    assert cli.main(["benchmark", "fake", "evaluate", "--episodes", "3"]) == 3
    assert json.loads(record.read_text()) == ["evaluate", "--episodes", "3"]
    assert cli.main(["benchmark", "missing"]) == 2
    assert "fake" in _error_line(capsys)


def test_benchmark_outside_source_checkout(monkeypatch, capsys):
    monkeypatch.setattr(cli, "_benchmarks_dir", lambda: None)
    assert cli.main(["benchmark", "table1"]) == 2
    assert "source repository" in _error_line(capsys)


# ---------------------------------------------------------------------------
# train and evaluate (need the Omniglot zips)
# ---------------------------------------------------------------------------


@requires_omniglot
def test_train_resume_and_evaluate(tmp_path, capsys):
    home = str(omniglot_home())
    out, ckpt = tmp_path / "m.pt", tmp_path / "ckpt"
    argv = ["train", "--data-home", home, "--out", str(out), *TINY_ARCH]
    argv += ["--batch-size", "2", "--batches-per-epoch", "2", "--eval-episodes", "4"]
    argv += ["--checkpoint-dir", str(ckpt), "--no-progress", "--threads", "1"]
    assert cli.main([*argv, "--episodes", "4"]) == 0
    manifest = json.loads((tmp_path / "m.json").read_text())
    assert manifest["training"]["episodes"] == 4
    assert manifest["training"]["complete"] is True
    assert set(manifest["heldout_accuracy"]) == {str(k) for k in range(1, 11)}
    assert "date" in manifest and manifest["options"]["episodes"] == 4

    # The same directory with more episodes resumes instead of restarting.
    assert cli.main([*argv, "--episodes", "8"]) == 0
    assert "Resuming" in capsys.readouterr().out
    manifest = json.loads((tmp_path / "m.json").read_text())
    assert manifest["training"]["episodes"] == 8

    # ... and refuses a different architecture.
    other = [
        a if a != "8" else "16" for a in argv
    ]  # --controller-size 16 (n_slots too)
    assert cli.main([*other, "--episodes", "8"]) == 2
    assert "other settings" in _error_line(capsys)

    result = tmp_path / "eval.json"
    argv = ["evaluate", str(out), "--data-home", home, "--episodes", "4"]
    argv += ["--river-episodes", "2", "--json", str(result)]
    assert cli.main(argv) == 0
    payload = json.loads(result.read_text())
    assert payload["results"]["MANN"]["n_episodes"] == 4
    assert payload["results"]["kNN, k=1 (River)"]["n_episodes"] == 2
    assert "meta-trained on 8 Omniglot episodes" in capsys.readouterr().out


def _spy_meta_train(monkeypatch, key: str, **override) -> list:
    """Record ``meta_train``'s ``key`` argument per call (``override`` applied)."""
    import sk_mann.training

    seen = []
    real = sk_mann.training.meta_train

    def spy(*args, **kwargs):
        seen.append(kwargs[key])
        return real(*args, **{**kwargs, **override})

    monkeypatch.setattr(sk_mann.training, "meta_train", spy)
    return seen


def _tiny_train_argv(tmp_path) -> list[str]:
    argv = ["train", "--data-home", str(omniglot_home()), *TINY_ARCH]
    argv += ["--out", str(tmp_path / "m.pt"), "--batch-size", "2"]
    argv += ["--batches-per-epoch", "1", "--eval-episodes", "2", "--episodes", "2"]
    return [*argv, "--no-progress", "--threads", "1"]


@requires_omniglot
def test_train_compile_flag_reaches_meta_train(tmp_path, monkeypatch):
    seen = _spy_meta_train(monkeypatch, "compile", compile=False)  # no compile time
    argv = _tiny_train_argv(tmp_path)
    assert cli.main(argv) == 0
    assert cli.main([*argv, "--compile"]) == 0
    assert seen == [False, True]


@requires_omniglot
def test_train_cpp_wrapper_flag_reaches_meta_train(tmp_path, monkeypatch, capsys):
    seen = _spy_meta_train(
        monkeypatch, "compile_options", compile=False, compile_options=None
    )
    argv = _tiny_train_argv(tmp_path)
    assert cli.main([*argv, "--compile"]) == 0
    assert cli.main([*argv, "--compile", "--cpp-wrapper"]) == 0
    assert seen == [None, {"cpp_wrapper": True}]
    capsys.readouterr()
    assert cli.main([*argv, "--cpp-wrapper"]) == 2  # not without --compile
    assert "--cpp-wrapper is a setting of --compile" in _error_line(capsys)


@requires_omniglot
def test_train_recipe_flags_reach_the_network_and_the_schedule(tmp_path, monkeypatch):
    """--write-content, --key-strength and --lr-schedule: the time trials' recipe."""
    from sk_mann.pretrained import load_weights

    seen = _spy_meta_train(monkeypatch, "lr_schedule")
    argv = _tiny_train_argv(tmp_path)
    assert cli.main(argv) == 0
    config, _ = load_weights(tmp_path / "m.pt")
    assert config["kwargs"]["write_content"] == "key"
    assert config["kwargs"]["key_strength"] is False
    recipe = ["--write-content", "add", "--key-strength", "--lr-schedule", "cosine"]
    assert cli.main([*argv, *recipe]) == 0
    assert seen == ["constant", "cosine"]
    config, state = load_weights(tmp_path / "m.pt")
    assert config["kwargs"]["write_content"] == "add"
    assert config["kwargs"]["key_strength"] is True
    manifest = json.loads((tmp_path / "m.json").read_text())
    assert manifest["training"]["lr_schedule"] == "cosine"
    # The file loads as a key-strength network into the estimator.
    X = np.random.default_rng(0).random((10, 400))
    arch = {k: TINY[k] for k in ("controller_size", "n_slots", "slot_size", "n_reads")}
    clf = MANNOneShotClassifier(
        pretrained=str(tmp_path / "m.pt"),
        write_content="add",
        key_strength=True,
        **arch,
    )
    clf.fit(X, np.arange(10) % 5)
    assert clf.module_.key_strength is True
    assert clf.predict(X).shape == (10,)


@requires_omniglot
def test_train_resumes_a_checkpoint_recorded_before_the_recipe_flags(tmp_path, capsys):
    """Records written before --lr-schedule / --key-strength existed lack them."""
    argv = [*_tiny_train_argv(tmp_path), "--checkpoint-dir", str(tmp_path / "ckpt")]
    assert cli.main(argv) == 0
    record = tmp_path / "ckpt" / "sk_mann_train.json"
    old = json.loads(record.read_text())
    del old["lr_schedule"], old["kwargs"]["key_strength"]
    record.write_text(json.dumps(old))
    more = [*argv, "--episodes", "4"]  # the last --episodes counts
    assert cli.main(more) == 0
    assert "Resuming" in capsys.readouterr().out
    # ... but not with another schedule or network.
    assert cli.main([*more, "--lr-schedule", "cosine"]) == 2
    assert "lr_schedule: checkpoint='constant', now='cosine'" in _error_line(capsys)
    assert cli.main([*more, "--key-strength"]) == 2
    assert "key_strength: checkpoint=False, now=True" in _error_line(capsys)


@requires_omniglot
def test_train_workers_share_the_batches(tmp_path, monkeypatch):
    seen = _spy_meta_train(monkeypatch, "workers")
    assert cli.main([*_tiny_train_argv(tmp_path), "--workers", "2"]) == 0
    assert seen == [2]
    assert (tmp_path / "m.pt").exists()


@requires_omniglot
def test_train_workers_that_cannot_share_the_batch_is_a_one_line_error(
    tmp_path, capsys
):
    argv = ["train", "--data-home", str(omniglot_home()), *TINY_ARCH]
    argv += ["--out", str(tmp_path / "m.pt"), "--batch-size", "3"]
    argv += ["--batches-per-epoch", "1", "--eval-episodes", "2", "--episodes", "3"]
    argv += ["--no-progress", "--workers", "2"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("sk-mann: error: --batch-size 3 is not a multiple")
    assert not (tmp_path / "m.pt").exists()


@requires_omniglot
def test_train_workers_without_fork_is_a_one_line_error(tmp_path, capsys, monkeypatch):
    """Windows has no fork: say so before loading data, not in a traceback."""
    from sk_mann import _parallel

    monkeypatch.setattr(_parallel, "fork_available", lambda: False)
    argv = [*_tiny_train_argv(tmp_path), "--workers", "2"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("sk-mann: error: --workers 2: worker processes are")
    assert "--workers 1" in err[-1]
    assert not (tmp_path / "m.pt").exists()


@requires_omniglot
def test_evaluate_no_baselines(tiny_model, capsys):
    argv = ["evaluate", str(tiny_model), "--data-home", str(omniglot_home())]
    assert cli.main([*argv, "--episodes", "3", "--no-baselines"]) == 0
    out = capsys.readouterr().out
    assert "MANN" in out and "kNN" not in out.split("-----")[-1]
