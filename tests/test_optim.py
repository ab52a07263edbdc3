from __future__ import annotations

import pytest
import torch
from conftest import tiny_config

from heritagelens.config import Config, ConfigError
from heritagelens.jobs.evaluation import evaluate_checkpoint
from heritagelens.model.network import build_model
from heritagelens.train import optim
from heritagelens.train.runs import train_run


@pytest.mark.parametrize("shape", [(32, 27), (64, 576), (256, 2304), (300, 40)])
def test_orthogonalize_brings_every_singular_value_near_one(shape):
    g = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    g[:, 0] *= 50  # one dominant direction, as momentum often has
    s = torch.linalg.svdvals(optim.orthogonalize(g, steps=5))
    assert s.min() > 0.6 and s.max() < 1.25  # the quintic's band (exact U V^T would be all ones)
    assert torch.linalg.svdvals(g).max() / torch.linalg.svdvals(g).min() > 10  # far from orthogonal before


@pytest.mark.parametrize("shape", [(32, 27), (64, 576), (256, 2304), (300, 40)])
def test_three_iterations_lift_every_direction_without_overshooting(shape):
    g = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    g[:, 0] *= 50  # the smallest singular value starts 600 times below the largest in the 32 x 27 case
    before = torch.linalg.svdvals(g / g.norm())
    after = torch.linalg.svdvals(optim.orthogonalize(g))  # the default: 3 iterations, as airbench94_muon
    assert after.max() < 1.25 and after.max() / after.min() < 20
    assert after.min() > 15 * before.min()  # the weakest direction lifted the most


def test_orthogonalized_update_keeps_the_singular_vectors():
    u, _ = torch.linalg.qr(torch.randn(16, 16, generator=torch.Generator().manual_seed(1)))
    v, _ = torch.linalg.qr(torch.randn(40, 16, generator=torch.Generator().manual_seed(2)))
    g = u @ torch.diag(torch.linspace(0.1, 10, 16)) @ v.T
    o = optim.orthogonalize(g)
    # o = U S' V^T: rotating back by U and V leaves a diagonal
    d = u.T @ o @ v
    assert torch.allclose(d, torch.diag(torch.diagonal(d)), atol=1e-4)


def _model():
    torch.manual_seed(0)
    return build_model(Config().override(["model.widths=[8,16]", "model.depths=[1,1]", "model.dropout=0"]).model, 3)


def _step(opt, model, seed):
    x = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(seed)) * 255
    opt.zero_grad()
    model(x).square().mean().backward()
    opt.step()


def test_muon_turns_every_filter_bank_and_holds_its_norm():
    model = _model()
    muon = optim.make_optimizer(model, "muon", 0.05, 0.9, 5e-4, muon_lr=0.2, muon_momentum=0.6)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.ndim == 4}
    for seed in range(3):
        _step(muon, model, seed)
    for n, p in model.named_parameters():
        if p.ndim == 4:
            assert p.norm().item() == pytest.approx(len(p) ** 0.5, rel=1e-4), n
            cos = torch.nn.functional.cosine_similarity(p.flatten(), before[n].flatten(), dim=0)
            assert cos < 0.999, n  # it turned
    assert muon.param_groups[0]["orthogonal"] and muon.param_groups[0]["lr_scale"] == pytest.approx(4.0)


def test_sgd_groups_of_muon_match_torch_sgd():
    model, reference = _model(), _model()
    muon = optim.make_optimizer(model, "muon", 0.05, 0.9, 5e-4, muon_lr=0.2, muon_momentum=0.6)
    sgd = optim.make_optimizer(reference, "sgd", 0.05, 0.9, 5e-4)
    for p in (p for p in model.parameters() if p.ndim == 4):
        p.requires_grad_(False)  # only the SGD-stepped parameters learn: the two must then agree exactly
    for p in (p for p in reference.parameters() if p.ndim == 4):
        p.requires_grad_(False)
    for seed in range(3):
        _step(muon, model, seed)
        _step(sgd, reference, seed)
    for (n, p), q in zip(model.named_parameters(), reference.parameters()):
        assert torch.allclose(p, q, atol=1e-6), n


def test_muon_training_learns_the_synthetic_classes(tiny_data, tmp_path):
    cfg = tiny_config(tiny_data, "train.epochs=6", "train.cutout=0", "train.optimizer=muon")
    train_run(cfg, tmp_path / "run", progress=False)
    assert evaluate_checkpoint(tmp_path / "run" / "last.pt", "val").accuracy >= 0.9


@pytest.mark.parametrize("bad", ["train.optimizer=adam", "train.muon_lr=0", "train.muon_momentum=1"])
def test_bad_optimizer_settings_are_refused(bad):
    with pytest.raises(ConfigError):
        Config().override([bad])
