"""The training command on a small subset of the real Fashion-MNIST: a 1-epoch smoke run,
exact resume (bitwise), Ctrl-C, a diverging loss, a crash during a save, bad flags, and the
evaluate / predict commands on the checkpoint it writes."""

from __future__ import annotations

import json
import os
import re
import signal

import numpy as np
import pytest
from PIL import Image

from minimlp import evaluate, predict, train
from minimlp.io.checkpoint import load_checkpoint

# A tiny model on a few hundred images: each epoch takes a moment.
QUICK = [
    "--procs",
    "1",
    "--train-num-samples",
    "320",
    "--eval-num-samples",
    "200",
    "-b",
    "64",
    "--patch-size",
    "7",
    "--embed-dim",
    "16",
    "--depth",
    "2",
    "--log-interval",
    "2",
    "--warmup-epochs",
    "0.5",
]


def quick(tmp_path, name, *extra, data_dir=None):
    argv = [*QUICK, "--output", str(tmp_path / name), *extra]
    return argv + (["--data-dir", str(data_dir)] if data_dir else [])


def test_smoke_one_epoch(tmp_path, fmnist_dir, capsys):
    result = train.run(quick(tmp_path, "run", "--epochs", "1", data_dir=fmnist_dir))
    out = capsys.readouterr()
    assert result.status == "done"
    assert "backend: NumPy on the CPU" in out.out and "epoch 1/1" in out.out
    assert "loss" in out.err and "img/s" in out.err, "the progress bar shows loss and speed"
    run_dir = tmp_path / "run"
    assert {p.name for p in run_dir.iterdir()} == {"args.json", "metrics.jsonl", "last.npz", "best.npz", "curves.png"}
    (record,) = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    for key in ("epoch", "train_loss", "eval_loss", "eval_top1", "eval_top5", "lr", "img_per_s", "elapsed_s"):
        assert key in record, key
    assert record["epoch"] == 1 and 0 <= record["eval_top1"] <= record["eval_top5"] <= 100
    assert record["train_loss"] < np.log(10) + 0.1, "the first epoch already learns something"
    args = json.loads((run_dir / "args.json").read_text())
    assert args["epochs"] == 1 and args["train_num_samples"] == 320
    assert Image.open(run_dir / "curves.png").size == (2 * 560, 420)  # two panels: loss, accuracy
    ckpt = load_checkpoint(run_dir / "last.npz")
    assert ckpt.meta["epoch"] == 1 and ckpt.meta["step"] == 5 and ckpt.meta["classes"][0] == "T-shirt/top"
    assert ckpt.meta["optimizer"]["name"] == "adamw" and set(ckpt.optimizer) == {"exp_avg", "exp_avg_sq"}
    assert ckpt.meta["model"]["embed_dim"] == 16 and "params/" not in "".join(ckpt.params)


def final_params(run_dir):
    return load_checkpoint(run_dir / "last.npz").params


def test_resume_is_bitwise_identical(tmp_path, fmnist_dir):
    args = ("--epochs", "2", "--drop-path", "0.1", "--drop", "0.05")  # the dropout RNG must resume too
    straight = train.run(quick(tmp_path, "straight", *args, data_dir=fmnist_dir))
    assert straight.status == "done"
    first = train.run(quick(tmp_path, "split", *args, data_dir=fmnist_dir), on_epoch_end=lambda record: True)
    assert first.status == "interrupted" and first.state.epoch == 1
    resumed = train.run(["--resume", str(tmp_path / "split"), "--procs", "1"])  # the run's own args
    assert resumed.status == "done" and resumed.state.step == straight.state.step
    a, b = final_params(tmp_path / "straight"), final_params(tmp_path / "split")
    assert a.keys() == b.keys()
    for name in a:
        assert np.array_equal(a[name], b[name]), name
    metrics = [json.loads(line) for line in (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics] == [1, 2]
    assert metrics[1]["eval_top1"] == straight.metrics[1]["eval_top1"]


def test_ctrl_c_saves_a_resumable_checkpoint(tmp_path, fmnist_dir):
    """A real SIGINT in mid-epoch: the step finishes, last.npz is written, and the resumed
    run ends where an uninterrupted one does (exactly, without augmentation)."""
    args = ("--epochs", "2", "--no-aug")
    train.run(quick(tmp_path, "straight", *args, data_dir=fmnist_dir))

    def interrupt(state):
        if state.step == 7:  # epoch 2, batch 2 of 5
            os.kill(os.getpid(), signal.SIGINT)

    stopped = train.run(quick(tmp_path, "split", *args, data_dir=fmnist_dir), on_step=interrupt)
    assert stopped.status == "interrupted"
    ckpt = load_checkpoint(tmp_path / "split" / "last.npz")
    assert ckpt.meta["step"] == 7 and ckpt.meta["run"]["batch_in_epoch"] == 2 and ckpt.meta["epoch"] == 1
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler, "the handler is restored"
    assert train.main(["--resume", str(tmp_path / "split"), "--procs", "1"]) == 0
    a, b = final_params(tmp_path / "straight"), final_params(tmp_path / "split")
    assert all(np.array_equal(a[k], b[k]) for k in a)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # overflow on the way to inf
def test_diverging_loss_stops_and_keeps_the_last_checkpoint(tmp_path, fmnist_dir, capsys):
    run_dir = tmp_path / "run"
    train.run(quick(tmp_path, "run", "--epochs", "1", data_dir=fmnist_dir))
    before = (run_dir / "last.npz").read_bytes()
    code = train.main(
        ["--resume", str(run_dir), "--procs", "1", "--epochs", "2", "--lr", "1e9", "--warmup-epochs", "0"]
    )
    err = capsys.readouterr().err
    assert code == train.EXIT_FAILED
    # Step 6 (the first of epoch 2) takes the huge step; the loss that follows is not finite.
    assert re.search(r"the loss became (nan|inf) at step \d+ \(epoch 2, batch \d/5, learning rate", err), err
    assert "learning rate is most likely too high" in err
    assert str(run_dir / "last.npz") in err
    assert (run_dir / "last.npz").read_bytes() == before


def test_crash_during_save_keeps_the_previous_checkpoint(tmp_path, fmnist_dir, monkeypatch):
    run_dir = tmp_path / "run"
    train.run(quick(tmp_path, "run", "--epochs", "1", data_dir=fmnist_dir))
    before = (run_dir / "last.npz").read_bytes()
    real_savez = np.savez

    def dies_mid_write(file, **arrays):
        real_savez(file, **arrays)
        file.seek(len(before) // 3)
        file.truncate()  # half a file on disk ...
        raise OSError("No space left on device")  # ... and then the failure

    monkeypatch.setattr(np, "savez", dies_mid_write)
    with pytest.raises(train.RunDirError, match=f"cannot write {run_dir / 'last.npz'}: No space left"):
        train.run(["--resume", str(run_dir), "--procs", "1", "--epochs", "2"])
    assert (run_dir / "last.npz").read_bytes() == before
    assert sorted(p.name for p in run_dir.iterdir() if p.name.startswith(".")) == [], "no temporary file is left"
    assert load_checkpoint(run_dir / "last.npz").meta["epoch"] == 1


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--lr", "-0.1"], "argument --lr: -0.1 must be >= 0.0"),
        (["--opt", "adam"], "argument --opt: invalid choice: 'adam'"),
        (["--epochs", "0"], "argument --epochs: 0 must be >= 1"),
        (["-b", "many"], "argument -b/--batch-size: 'many' is not an integer"),
        (["--smoothing", "1.5"], "argument --smoothing: 1.5 must be < 1.0"),
        (["--lr", "nan"], "argument --lr: 'nan' is not a finite number"),
        (["--device", "tpu"], "unknown device 'tpu'"),
        (["--sched", "linear"], "argument --sched: invalid choice"),
        (["--eval-only"], "--eval-only needs a checkpoint"),
    ],
)
def test_bad_arguments_are_rejected(argv, message, capsys):
    with pytest.raises(SystemExit) as info:
        train.parse_args(argv)
    assert info.value.code == 2 and message in capsys.readouterr().err


def test_help_documents_every_flag(capsys):
    with pytest.raises(SystemExit):
        train.main(["--help"])
    text = capsys.readouterr().out
    for flag in (
        "--model",
        "--img-size",
        "--patch-size",
        "--in-chans",
        "--embed-dim",
        "--depth",
        "--num-classes",
        "--dataset",
        "--data-dir",
        "--batch-size",
        "--epochs",
        "--opt",
        "--lr",
        "--momentum",
        "--nesterov",
        "--weight-decay",
        "--sched",
        "--warmup-epochs",
        "--warmup-lr",
        "--min-lr",
        "--smoothing",
        "--drop",
        "--drop-path",
        "--clip-grad",
        "--seed",
        "--gpu",
        "--device",
        "--output",
        "--resume",
        "--eval-only",
        "--train-num-samples",
        "--log-interval",
        "--workers",
        "--scale-lr",
        "--download",
        "--procs",
        "--subset",
        "--class-seed",
        "--per-class",
        "--crop-pct",
        "--train-crop",
        "--aa",
        "--reprob",
        "--mixup",
        "--cutmix",
        "--mixup-prob",
        "--mixup-switch-prob",
        "--repeated-aug",
        "--recipe",
        "--pretrained",
        "--eval-num-samples",
        "--no-aug",
        "--momentum",
        "--decay-epochs",
        "--decay-rate",
    ):
        assert flag in text, flag
    parser = train.build_parser()
    undocumented = [a.option_strings for a in parser._actions if not a.help]
    assert undocumented == []
    missing = [a.option_strings[-1] for a in parser._actions if a.option_strings and a.option_strings[-1] not in text]
    assert missing == []


def test_missing_data_is_a_clear_error(tmp_path, monkeypatch, capsys):
    from minimlp.data import fmnist

    monkeypatch.setattr(fmnist, "SYSTEM_DIR", tmp_path / "none")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("MINIMLP_DATA", raising=False)
    assert train.main(["--output", str(tmp_path / "run"), "--procs", "1"]) == train.EXIT_USAGE
    assert "apt-get install dataset-fashion-mnist" in capsys.readouterr().err


def test_evaluate_and_predict_commands(tmp_path, fmnist_dir, capsys):
    train.run(quick(tmp_path, "run", "--epochs", "1", data_dir=fmnist_dir))
    capsys.readouterr()
    assert evaluate.main(["--checkpoint", str(tmp_path / "run" / "best.npz")]) == 0
    out = capsys.readouterr().out
    assert "top-1" in out and "top-5" in out and "Ankle boot" in out and "10000 images" in out
    # Two test images as PNG files: one grayscale 28x28, one RGB at another size.
    from minimlp.data.fmnist import FashionMNIST

    test = FashionMNIST("test", fmnist_dir)
    Image.fromarray(test.images[0, 0]).save(tmp_path / "a.png")
    Image.fromarray(test.images[1, 0]).convert("RGB").resize((56, 56)).save(tmp_path / "b.jpg")
    assert (
        predict.main(
            ["--checkpoint", str(tmp_path / "run" / "best.npz"), str(tmp_path / "a.png"), str(tmp_path / "b.jpg")]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert out.count("%") == 10 and "a.png" in out and "b.jpg" in out
    (tmp_path / "broken.png").write_bytes(b"not an image")
    assert predict.main(["--checkpoint", str(tmp_path / "run" / "best.npz"), str(tmp_path / "broken.png")]) == 2
    assert "broken.png" in capsys.readouterr().err
    (tmp_path / "cut.npz").write_bytes((tmp_path / "run" / "best.npz").read_bytes()[:1000])
    assert evaluate.main(["--checkpoint", str(tmp_path / "cut.npz")]) == 2
    assert "cut.npz" in capsys.readouterr().err
