"""Training past one process: DDP under torchrun keeps replicas identical and computes one process's gradient of the
global batch; only rank 0 writes; device and mixed-precision choices, exercised on the CPU."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import SETS, assert_one_line_error, cli, metrics, tiny_config

from heritagelens import distributed
from heritagelens.config import Config, ConfigError
from heritagelens.model.checkpoint import read_checkpoint
from heritagelens.model.precision import Precision, resolve
from heritagelens.train.loop import augment, fit

sys.path.insert(0, str(Path(__file__).parent))
import ddp_worker  # noqa: E402

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]


@pytest.fixture(scope="module")
def ddp_results(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    p = subprocess.run([*TORCHRUN, Path(ddp_worker.__file__), out], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    return [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(2)]


def test_two_processes_keep_identical_replicas(ddp_results):
    r0, r1 = ddp_results
    assert r0["size"] == r1["size"] == 2
    for run in ("four_steps", "robust"):
        params = [k for k in r0[run] if "running" not in k and "num_batches" not in k]
        for k in params:  # weights and the last step's gradients, bit for bit
            assert torch.equal(r0[run][k], r1[run][k]), (run, k)
    start = ddp_worker.model(Config().override(ddp_worker.OVERRIDES)).state_dict()
    assert not torch.equal(start["features.conv1_1.weight"], r0["four_steps"]["features.conv1_1.weight"])  # trained
    assert not torch.equal(r0["robust"]["features.conv1_1.weight"], r0["four_steps"]["features.conv1_1.weight"])


def test_two_processes_compute_the_gradient_of_the_global_batch(ddp_results):
    """One process's gradient of the mean loss over the same 15 augmented images, batch norm taken per share as each
    process does (ghost batch norm: 8 and 7 images), equals what both processes hold after their all-reduced step."""
    cfg = Config().override(ddp_worker.OVERRIDES)
    tc = cfg.train
    images, labels = ddp_worker.data()
    fmt = Precision.named(tc.precision).memory_format
    model = ddp_worker.model(cfg).to(memory_format=fmt).train()
    g = torch.Generator().manual_seed(tc.seed * 100_003)  # as fit draws the first batch of epoch 0
    idx = torch.randperm(15, generator=g)
    x, y = augment(images[idx], tc, g).contiguous(memory_format=fmt), labels[idx]
    criterion = torch.nn.CrossEntropyLoss(label_smoothing=tc.label_smoothing)
    loss = sum(criterion(model(x[h]), y[h]) * len(y[h]) / 15 for h in (slice(0, 8), slice(8, 15)))
    loss.backward()
    ref = torch.cat([p.grad.flatten() for p in model.parameters()])
    for r in ddp_results:
        got = torch.cat([r["one_step"][f"grad.{n}"].flatten() for n, _ in model.named_parameters()])
        assert (got - ref).norm() / ref.norm() < 1e-5  # float32 rounding: the sums run in another order
    # what the reference models matters: an unweighted average of the two shares' means is another gradient ...
    unweighted = ddp_worker.model(cfg).to(memory_format=fmt).train()
    sum(criterion(unweighted(x[h]), y[h]) / 2 for h in (slice(0, 8), slice(8, 15))).backward()
    other = torch.cat([p.grad.flatten() for p in unweighted.parameters()])
    assert (other - ref).norm() / ref.norm() > 1e-3
    # ... and so is one batch norm over all 15 images
    whole = ddp_worker.model(cfg).train()
    criterion(whole(x), y).backward()
    full = torch.cat([p.grad.flatten() for p in whole.parameters()])
    assert (full - ref).norm() / ref.norm() > 1e-2


def test_share_splits_a_global_batch_into_near_equal_contiguous_parts():
    for n in (1, 7, 16, 61):
        for size in (1, 2, 3):
            parts = [distributed.share(n, distributed.World(r, size)) for r in range(size)]
            sizes = [s.stop - s.start for s in parts]
            assert parts[0].start == 0 and parts[-1].stop == n and max(sizes) - min(sizes) <= 1
            assert all(a.stop == b.start for a, b in zip(parts, parts[1:]))


@pytest.mark.slow  # two processes training under torchrun
def test_torchrun_train_writes_only_from_rank_0_and_learns_like_one_process(trained, tmp_path):
    root, single = trained
    run = tmp_path / "ddp"
    args = ["train", "--data", root, "--epochs", "2", "--out", run, "--quiet", *SETS]
    p = subprocess.run([*TORCHRUN, "-m", "heritagelens", *map(str, args)], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    assert p.stdout.count("run folder:") == 1 and p.stdout.count('"data": {') == 1
    log = (run / "train.log").read_text()
    assert log.count(" epoch 1 ") == 1 and log.count(" epoch 2 ") == 1 and log.count(" config ") == 1
    assert not list(run.glob(".*.tmp"))
    ddp_acc, one_acc = (float(metrics(r)[-1]["val_acc"]) for r in (run, single))
    assert one_acc > 0.6 and abs(ddp_acc - one_acc) <= 0.2, (ddp_acc, one_acc)
    assert read_checkpoint(run)["epoch"] == 2  # what it wrote is an ordinary run


def test_under_torchrun_other_commands_and_a_missing_out_are_refused(trained):
    root, run = trained
    env = {"WORLD_SIZE": "2", "RANK": "0"}
    assert_one_line_error(cli("evaluate", run, env=env), "only 'train' runs under torchrun")
    assert_one_line_error(cli("train", "--data", root, *SETS, env=env), "needs --out")


def test_device_choice_on_a_machine_without_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert distributed.pick_device("auto") == torch.device("cpu")
    with pytest.raises(ConfigError, match="no CUDA GPU"):
        distributed.pick_device("cuda")
    with pytest.raises(ConfigError, match="must be"):
        distributed.pick_device("tpu")


def test_device_choice_with_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="its own GPU"):
        distributed.pick_device("cuda:0")
    monkeypatch.delenv("WORLD_SIZE")
    assert distributed.pick_device("auto", local_rank=3) == torch.device("cuda:1")
    assert distributed.pick_device("cuda:0", local_rank=1) == torch.device("cuda:0")


def test_train_device_cuda_here_is_one_clear_line(trained):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    root, _ = trained
    assert_one_line_error(cli("train", "--data", root, "--device", "cuda", *SETS), "no CUDA GPU")


def test_float16_with_loss_scaling_trains(tiny_data):
    """The GPU's float16 path (autocast + GradScaler), run on the CPU."""
    cfg = tiny_config(tiny_data, "train.precision=fp16-cl", "train.epochs=3", "train.lr=0.05")
    amp = resolve(cfg.train.precision, torch.device("cpu")).precision
    assert amp.dtype == torch.float16 and amp.scaler().is_enabled()
    from heritagelens.data.split import prepare
    from heritagelens.train.runs import initial_state

    prep = prepare(cfg)
    s = prep.split
    losses = []
    state = initial_state(cfg, prep)
    fit(
        cfg,
        state,
        s.images[prep.train_idx],
        s.labels[prep.train_idx],
        s.images[prep.val_idx],
        s.labels[prep.val_idx],
        on_epoch=lambda st, r: losses.append(r.train_loss),
        progress=False,
    )
    assert all(torch.isfinite(p).all() for p in state.model.parameters())
    assert losses[-1] < losses[0]
