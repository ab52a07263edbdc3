"""Training: batch augmentation as tensor functions, the learning-rate schedule, and the loop, written out in `fit`.

The whole split lives in memory as one uint8 tensor; every epoch is a fresh permutation of it, and every random
choice of epoch `e` comes from generators seeded by (seed, e), so a resumed run repeats an uninterrupted one.
"""

from __future__ import annotations

import io
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from ..config import Config, TrainConfig
from ..data.images import gaussian_blur
from ..distributed import all_sum, share, world
from ..model.inference import accuracy
from ..model.precision import FP32, Precision, resolve
from . import optim

# ---------------------------------------------------------------------------------------------------- augmentation


def batch_translate(x: torch.Tensor, pad: int, g: torch.Generator) -> torch.Tensor:
    """Shift each image by up to `pad` px in x and y, filling from a reflection. x: (B, C, H, W) float."""
    if pad == 0:
        return x
    B, _, H, W = x.shape
    padded = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    dy = torch.randint(0, 2 * pad + 1, (B,), generator=g)
    dx = torch.randint(0, 2 * pad + 1, (B,), generator=g)
    iy = (torch.arange(H)[None] + dy[:, None])[:, :, None]  # (B, H, 1)
    ix = (torch.arange(W)[None] + dx[:, None])[:, None, :]  # (B, 1, W)
    out = padded.permute(0, 2, 3, 1)[torch.arange(B)[:, None, None], iy, ix]  # (B, H, W, C)
    return out.permute(0, 3, 1, 2)


def batch_zoom(x: torch.Tensor, min_area: float, g: torch.Generator) -> torch.Tensor:
    """Crop a random box of `min_area`..1 of the image (aspect 3:4..4:3) and resize it back, per image (bilinear)."""
    if min_area >= 1.0:
        return x
    B = x.shape[0]
    area = min_area + (1 - min_area) * torch.rand(B, generator=g)
    aspect = torch.exp((torch.rand(B, generator=g) * 2 - 1) * math.log(4 / 3))
    w = (area * aspect).sqrt().clamp(max=1.0)  # box size as a fraction of the image
    h = (area / aspect).sqrt().clamp(max=1.0)
    cx = (torch.rand(B, generator=g) * 2 - 1) * (1 - w)  # box centre in [-1, 1] coordinates
    cy = (torch.rand(B, generator=g) * 2 - 1) * (1 - h)
    theta = torch.zeros(B, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = w, cx, h, cy
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def batch_flip(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Mirror a random half of the images left to right."""
    mask = torch.rand(x.shape[0], generator=g) < 0.5
    return torch.where(mask[:, None, None, None], x.flip(3), x)


def batch_cutout(x: torch.Tensor, size: int, g: torch.Generator) -> torch.Tensor:
    """Set one random `size` x `size` square per image (possibly clipped at the border) to the image's mean."""
    if size == 0:
        return x
    B, _, H, W = x.shape
    cy = torch.randint(0, H, (B,), generator=g)[:, None, None]
    cx = torch.randint(0, W, (B,), generator=g)[:, None, None]
    ys, xs = torch.arange(H)[None, :, None], torch.arange(W)[None, None, :]
    hole = ((ys - cy).abs() <= size // 2) & ((xs - cx).abs() <= size // 2)  # (B, H, W)
    return torch.where(hole[:, None], x.mean(dim=(1, 2, 3), keepdim=True), x)


def batch_colour(x: torch.Tensor, strength: float, g: torch.Generator) -> torch.Tensor:
    """Random brightness and contrast per image, factors in [1 - strength, 1 + strength]; pixels stay in 0..255."""
    if strength == 0:
        return x
    B = x.shape[0]
    b = 1 + (torch.rand(B, 1, 1, 1, generator=g) * 2 - 1) * strength
    c = 1 + (torch.rand(B, 1, 1, 1, generator=g) * 2 - 1) * strength
    m = x.mean(dim=(1, 2, 3), keepdim=True)
    return ((x - m) * c + m * b).clamp(0, 255)


def luma(x: torch.Tensor) -> torch.Tensor:
    """The grey of each pixel, ITU-R 601 luma. x: (B, 3, H, W) -> (B, 1, H, W)."""
    return (x * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)


def batch_saturation(x: torch.Tensor, strength: float, g: torch.Generator) -> torch.Tensor:
    """Random saturation per image: a blend of the image and its grey (`luma`), factor in [1 - strength,
    1 + strength] (0 is grey, 1 the image, above 1 more colourful); 0..255 kept."""
    if strength == 0:
        return x
    s = 1 + (torch.rand(x.shape[0], 1, 1, 1, generator=g) * 2 - 1) * strength
    grey = luma(x)
    return (grey + s * (x - grey)).clamp(0, 255)


def batch_white_balance(x: torch.Tensor, strength: float, g: torch.Generator) -> torch.Tensor:
    """Scale each colour channel of each image by its own factor in [1 - strength, 1 + strength]; 0..255 kept."""
    if strength == 0:
        return x
    gains = 1 + (torch.rand(x.shape[0], x.shape[1], 1, 1, generator=g) * 2 - 1) * strength
    return (x * gains).clamp(0, 255)


def batch_sharpness(x: torch.Tensor, strength: float, g: torch.Generator) -> torch.Tensor:
    """Blur or sharpen each image: x + a (x - blur(x)) with a drawn from [-strength, strength] per image, so a = -1
    is the blur itself and a > 0 an unsharp mask; 0..255 kept."""
    if strength == 0:
        return x
    a = (torch.rand(x.shape[0], 1, 1, 1, generator=g) * 2 - 1) * strength
    return (x + a * (x - gaussian_blur(x, 1.0))).clamp(0, 255)


def batch_jpeg(x: torch.Tensor, min_quality: int, share: float, g: torch.Generator) -> torch.Tensor:
    """Re-compress a random `share` of the images as JPEG at a quality drawn from `min_quality`..95 (Pillow, 4:2:0
    chroma as cameras write it). x: (B, 3, H, W) uint8, returned as uint8."""
    if min_quality == 0:
        return x
    B = x.shape[0]
    chosen = torch.rand(B, generator=g) < share
    quality = torch.randint(min_quality, 96, (B,), generator=g)
    if not chosen.any():
        return x
    out = x.clone()
    for i in chosen.nonzero().flatten().tolist():
        buf = io.BytesIO()
        Image.fromarray(x[i].permute(1, 2, 0).numpy()).save(buf, format="JPEG", quality=int(quality[i]))
        out[i] = torch.from_numpy(np.array(Image.open(buf).convert("RGB"))).permute(2, 0, 1)
    return out


def batch_grayscale(x: torch.Tensor, share: float, g: torch.Generator) -> torch.Tensor:
    """Turn a random `share` of the images grey: ITU-R 601 luma in all three channels."""
    if share == 0:
        return x
    chosen = torch.rand(x.shape[0], generator=g) < share
    return torch.where(chosen[:, None, None, None], luma(x).expand_as(x), x)


def epoch_side(epoch: int, epochs: int, cfg: TrainConfig, full: int = 64) -> int:
    """Side (px) of the training images in epoch `epoch` (0-based) of `epochs` under progressive resizing:
    `cfg.res_min` until the fraction `cfg.res_ramp[0]` of the epochs, `full` from `cfg.res_ramp[1]`, growing
    linearly between them in steps of 8 px. The last epoch is at `full`, the side the model is evaluated at, however
    short the schedule (a time budget's few epochs, the `quick` preset), unless the ramp ends at 1: all at `res_min`."""
    start, end = cfg.res_ramp
    if cfg.res_min >= full or (epoch >= epochs - 1 and end < 1):
        return full
    t = epoch / epochs
    grown = 1.0 if t >= end else 0.0 if t < start else (t - start) / (end - start)
    return min(full, cfg.res_min + 8 * round((full - cfg.res_min) * grown / 8))


def batch_resize(x: torch.Tensor, side: int) -> torch.Tensor:
    """Images downscaled to `side` x `side` (bilinear with antialiasing); unchanged at their own size."""
    if side == x.shape[-1]:
        return x
    return F.interpolate(x, size=(side, side), mode="bilinear", antialias=True, align_corners=False)


def augment(x: torch.Tensor, cfg: TrainConfig, g: torch.Generator, flips: torch.Tensor | None = None) -> torch.Tensor:
    """The training augmentation of one batch. x: (B, 3, 64, 64) uint8 -> float 0..255. `flips` (B,) bool, when
    given, says which images are mirrored instead of a coin (`alternate_flips`)."""
    x = batch_jpeg(x, cfg.jpeg_quality, cfg.jpeg_share, g).float()
    x = batch_zoom(x, cfg.zoom_min_area, g)
    x = batch_translate(x, cfg.crop_pad, g)
    if cfg.flip:
        x = batch_flip(x, g) if flips is None else torch.where(flips[:, None, None, None], x.flip(3), x)
    x = batch_colour(x, cfg.colour_jitter, g)
    x = batch_saturation(x, cfg.saturation, g)
    x = batch_white_balance(x, cfg.white_balance, g)
    x = batch_sharpness(x, cfg.sharpness, g)
    x = batch_grayscale(x, cfg.grayscale, g)
    return batch_cutout(x, cfg.cutout, g)


def alternate_flips(n: int, seed: int) -> torch.Tensor:
    """(n,) 0 or 1 per image, fixed by `seed`: image i is mirrored in epoch e when (base[i] + e) is odd."""
    return torch.randint(0, 2, (n,), generator=torch.Generator().manual_seed(seed + 7_919))


def fgsm_example(
    forward,
    criterion,
    x: torch.Tensor,
    y: torch.Tensor,
    cfg: TrainConfig,
    g: torch.Generator | None = None,
    amp: Precision | None = None,
    start: torch.Tensor | None = None,
) -> torch.Tensor:
    """Fast FGSM with a random start (Wong et al. 2020): one signed-gradient step of `cfg.adv_alpha` from a uniform
    start in the L-inf ball of radius `cfg.adv_eps` (pixel units, 0..255), kept in the ball and in 0..255. The start
    is drawn from `g`, or given as `start`, uniform numbers in [0, 1) of x's shape. `amp` is the precision of the
    forward pass (float32 when not given)."""
    eps, amp = cfg.adv_eps, amp or FP32
    start = torch.rand(x.shape, generator=g) if start is None else start
    delta = ((start * 2 - 1) * eps).to(x).requires_grad_(True)
    with amp.autocast():
        loss = criterion(forward((x + delta).clamp(0, 255)).float(), y)
    (grad,) = torch.autograd.grad(loss, delta)
    delta = (delta.detach() + cfg.adv_alpha * grad.sign()).clamp(-eps, eps)
    return amp.input((x + delta).clamp(0, 255))


# -------------------------------------------------------------------------------------------------------- schedule


def get_lr(step: int, total_steps: int, cfg: TrainConfig) -> float:
    """Triangular schedule: linear rise to `cfg.lr` over the warm-up, then linear fall to zero at the last step."""
    warmup = max(1, round(cfg.warmup_frac * total_steps))
    if step < warmup:
        return cfg.lr * (step + 1) / warmup
    return cfg.lr * max(0.0, (total_steps - step) / max(1, total_steps - warmup))


def distillation_loss(logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL divergence of the model's softmax at `temperature` from the teacher's, times the temperature squared (so its
    gradients keep their size as the temperature changes; Hinton et al. 2015), averaged over the batch."""
    t = temperature
    target = torch.softmax(teacher_logits / t, 1)
    return F.kl_div(torch.log_softmax(logits / t, 1), target, reduction="batchmean") * t * t


@dataclass
class Teacher:
    """Models whose mean logits a student learns to match (`distillation_loss`) on the classes they share with it:
    the logits at `rows[k]` of model k, the student's at `columns` (all its classes, or the old ones of a model
    adapted to new classes)."""

    models: list[nn.Module]
    rows: list[list[int]]
    columns: list[int]

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([m(x)[:, r] for m, r in zip(self.models, self.rows)]).mean(0)

    def loss(self, logits: torch.Tensor, x: torch.Tensor, temperature: float) -> torch.Tensor:
        """The student's `logits` (B, C) of batch `x` matched to the teachers', on the classes they know."""
        taught = self(x).float()
        return distillation_loss(logits.float()[:, self.columns], taught, temperature)


def fit_head(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> list[int]:
    """Set the linear head's rows of the classes among `labels` to a logistic regression on the features the model
    computes for `images` (un-augmented, eval mode), every class weighted alike however many photos it has
    (scikit-learn's L-BFGS, deterministic); a linear probe in one step. The rows of classes without photos are kept.
    Returns the classes fitted."""
    from sklearn.linear_model import LogisticRegression

    from ..model.network import pooled_features

    feats = pooled_features(model, images).double().numpy()
    y = labels.numpy()
    present = sorted(set(y.tolist()))
    if len(present) < 2:
        return []
    probe = LogisticRegression(C=1.0, class_weight="balanced", max_iter=2000).fit(feats, y)
    coef, bias = probe.coef_, probe.intercept_
    if len(present) == 2:  # one row for two classes: the softmax of (-w/2, w/2) is that sigmoid
        coef, bias = np.stack([-coef[0] / 2, coef[0] / 2]), np.array([-bias[0] / 2, bias[0] / 2])
    fc = model.head.fc
    with torch.no_grad():
        for row, c in enumerate(probe.classes_.tolist()):
            fc.weight[c] = torch.from_numpy(coef[row]).to(fc.weight)
            fc.bias[c] = float(bias[row])
    return present


def class_weights(labels: torch.Tensor, n_classes: int) -> torch.Tensor:
    """Loss weights that make every class with photos count alike: n / (classes with photos x its photos)."""
    counts = torch.bincount(labels, minlength=n_classes).float()
    present = counts > 0
    w = torch.ones(n_classes)
    w[present] = len(labels) / (present.sum() * counts[present])
    return w


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    return optim.make_optimizer(
        model,
        cfg.optimizer,
        cfg.lr,
        cfg.momentum,
        cfg.weight_decay,
        cfg.muon_lr,
        cfg.muon_momentum,
        cfg.muon_ns_steps,
    )


def make_ema(model: nn.Module, cfg: TrainConfig) -> AveragedModel | None:
    if cfg.ema_decay == 0:
        return None
    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema_decay), use_buffers=True)


# ------------------------------------------------------------------------------------------------------ the loop


@dataclass
class EpochResult:
    epoch: int
    lr: float
    train_loss: float
    train_acc: float
    val_acc: float
    seconds: float
    images_per_s: float
    side: int = 64
    """Side (px) the epoch trained at (see `epoch_side`)."""


@dataclass
class TrainState:
    """Everything needed to continue a run: the model, its optimizer, its averaged copy, and the epochs done."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    ema: AveragedModel | None
    epoch: int = 0


def chosen_precision(cfg: TrainConfig, device: torch.device) -> Precision:
    """The mode `cfg.precision` resolves to on `device`; under torchrun, the main process's choice for all."""
    from ..distributed import from_main

    w = world()
    return from_main(resolve(cfg.precision, device).precision if w.main else None, w)


def new_state(model: nn.Module, cfg: TrainConfig) -> TrainState:
    """The model on this process's device (see `heritagelens.distributed`), in the memory layout of the chosen
    precision, with a new optimizer."""
    device = world().device
    model = model.to(device=device, memory_format=chosen_precision(cfg, device).memory_format)
    return TrainState(model, make_optimizer(model, cfg), make_ema(model, cfg))


def eval_model(state: TrainState) -> nn.Module:
    """The weights to evaluate: the averaged copy when there is one."""
    return state.ema.module if state.ema is not None else state.model


def fit(
    cfg: Config,
    state: TrainState,
    train_images: torch.Tensor,
    train_labels: torch.Tensor,
    val_images: torch.Tensor,
    val_labels: torch.Tensor,
    on_epoch: Callable[[TrainState, EpochResult], None] = lambda s, r: None,
    progress: bool = True,
    teacher: Teacher | None = None,
) -> TrainState:
    """Train from `state.epoch` to `cfg.train.epochs`, calling `on_epoch` after each (it saves checkpoints). With a
    `teacher` (see `runs.teacher_for`), the loss is also the match of its softmax on the classes it knows
    (`distillation_loss`).

    Images stay uint8 on the CPU and are augmented there, a global batch at a time; under torchrun every process
    augments the same batch and trains on its share (see `heritagelens.distributed`)."""
    tc, w = cfg.train, world()
    steps_per_epoch = math.ceil(len(train_images) / tc.batch_size)
    total = steps_per_epoch * tc.epochs
    model, opt = state.model, state.optimizer
    device = next(model.parameters()).device
    amp = chosen_precision(tc, device)
    scaler = amp.scaler()
    forward = torch.compile(model) if tc.compile else model  # measured slower on CPU here: off by default
    if w.size > 1:
        from torch.nn.parallel import DistributedDataParallel

        forward = DistributedDataParallel(forward, device_ids=[device] if device.type == "cuda" else None)
    weight = class_weights(train_labels, model.head.fc.out_features).to(device) if tc.balanced else None
    criterion = nn.CrossEntropyLoss(weight=weight, label_smoothing=tc.label_smoothing)
    frozen = [p for name, p in model.named_parameters() if not name.startswith("head.")]  # while probing
    bar = _progress(total, state.epoch * steps_per_epoch, progress and w.main)
    lr, full = 0.0, train_images.shape[-1]
    base = alternate_flips(len(train_images), tc.seed) if tc.flip_alternate else None
    for epoch in range(state.epoch, tc.epochs):
        g = torch.Generator().manual_seed(tc.seed * 100_003 + epoch)
        torch.manual_seed(tc.seed * 100_003 + epoch + 1_000_003 * w.rank)  # dropout: each process its own masks
        order = torch.randperm(len(train_images), generator=g)
        side = epoch_side(epoch, tc.epochs, tc, full)
        probing = epoch < tc.probe_epochs
        model.train()
        if probing:  # a linear probe: the features, their batch norm statistics included, stay as they are
            model.features.eval()
        elif tc.frozen_bn:
            for m in model.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.eval()
        t0, loss_sum, correct = time.perf_counter(), 0.0, 0
        for i in range(steps_per_epoch):
            idx = order[i * tc.batch_size : (i + 1) * tc.batch_size]
            flips = (base[idx] + epoch) % 2 == 1 if base is not None else None
            full_x = augment(train_images[idx], tc, g, flips)  # the whole global batch: the same draws everywhere
            x = batch_resize(full_x, side)
            start = torch.rand(x.shape, generator=g) if tc.adv_eps > 0 else None  # FGSM's, for the whole batch too
            y = train_labels[idx]
            if len(idx) < w.size:  # a last batch smaller than the number of processes: skipped by all of them alike
                continue
            part = share(len(idx), w)
            x = amp.input(x[part].to(device, non_blocking=True))
            y = y[part].to(device, non_blocking=True)
            lr = get_lr(epoch * steps_per_epoch + i, total, tc)
            for group in opt.param_groups:
                group["lr"] = lr * group.get("lr_scale", 1.0)
            if tc.adv_eps > 0:
                x = fgsm_example(model, criterion, x, y, tc, amp=amp, start=start[part])
            with amp.autocast():
                logits = forward(x)
                loss = criterion(logits.float(), y)
                if teacher is not None:  # the teachers see the batch at full size, whatever side the model trains at
                    shown = amp.input(full_x[part].to(device, non_blocking=True))
                    soft = teacher.loss(logits, shown, tc.kd_temperature)
                    loss = (1 - tc.kd_weight) * loss + tc.kd_weight * soft
            opt.zero_grad(set_to_none=True)
            # DDP averages the processes' gradients: weighting each share's mean by its size makes that average the
            # gradient of the mean loss over the whole global batch.
            scaler.scale(loss * (len(y) * w.size / len(idx))).backward()
            if probing:  # dropped after the backward pass (not frozen before it), so that DDP sees every parameter
                for p in frozen:
                    p.grad = None
            scaler.step(opt)
            scaler.update()
            if state.ema is not None:
                state.ema.update_parameters(model)
            loss_sum += loss.item() * len(y)
            correct += (logits.argmax(1) == y).sum().item()
            bar.set_description(f"epoch {epoch + 1}/{tc.epochs}" + (f" at {side} px" if side < full else ""))
            seen = min((i + 1) * tc.batch_size, len(train_images)) / w.size
            bar.set_postfix(loss=f"{loss.item():.3f}", acc=f"{correct / seen:.3f}", lr=f"{lr:.4f}")
            bar.update(1)
        seconds = time.perf_counter() - t0
        loss_sum, correct = all_sum([loss_sum, float(correct)], w)
        state.epoch = epoch + 1
        val_acc = accuracy(eval_model(state), val_images, val_labels, precision=amp.name)
        n = len(train_images)
        result = EpochResult(epoch + 1, lr, loss_sum / n, correct / n, val_acc, seconds, n / seconds, side)
        bar.set_postfix(loss=f"{result.train_loss:.3f}", train_acc=f"{result.train_acc:.3f}", val_acc=f"{val_acc:.3f}")
        on_epoch(state, result)
    bar.close()
    return state


def _progress(total: int, initial: int, enabled: bool):
    import sys

    from tqdm.auto import tqdm

    interval = 0.2 if sys.stderr.isatty() else 30.0  # a log file gets a line every 30 s, not one per step
    return tqdm(
        total=total,
        initial=initial,
        unit="step",
        disable=not enabled,
        dynamic_ncols=True,
        leave=True,
        mininterval=interval,
    )
