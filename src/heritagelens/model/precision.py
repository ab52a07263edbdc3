"""Precision and memory layout, chosen by measurement on the machine at hand.

What is fastest depends on the hardware, not on the model code: a CPU with AVX-512 BF16 or AMX runs bfloat16
autocast about twice as fast as float32, while a CPU with only AVX2 emulates bfloat16 at a tenth of float32's speed;
channels-last helps oneDNN's convolutions on some CPUs and not on others. So `train.precision='auto'` (the default)
times a few training steps of the default model in each mode the hardware offers, keeps the fastest, and caches the
choice in `~/.cache/heritagelens/precision.json` keyed by the CPU or GPU model, the thread count and the torch
version: the probe runs once per machine. A mode named explicitly (`--set train.precision=fp32`) is used as it is.

Modes: `fp32`, `fp32-cl` (channels-last), `bf16`, `bf16-cl` (bfloat16 autocast), `fp16`, `fp16-cl` (float16
autocast with loss scaling; meant for GPUs). Every compute path takes its mode from here: training, evaluation and TTA,
calibration, the deconvnet's top-9 scan, class images, judges, `sort`, the web app, the ONNX check, tuning and DDP.
Predictions of a trained model (`for_inference`, whatever mode it was trained in) take only the layout from 'auto'
and stay in float32, so that a model gives the same probabilities, accuracies and sorted folders on every machine:
on a CPU with AVX-512 BF16, bfloat16 autocast moved the bundled model's validation accuracy from its card's 95.33%
to 95.25%, for a speed-up of a second or two.
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..config import PRECISIONS as SETTINGS
from ..errors import HeritageLensError

MODES = SETTINGS[1:]
_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class PrecisionError(HeritageLensError, ValueError):
    """A precision setting that is unknown or that this device cannot run."""


@dataclass(frozen=True)
class Precision:
    """One mode: the autocast dtype (None runs in float32) on a device type, and the memory layout of inputs."""

    device_type: str = "cpu"
    dtype: torch.dtype | None = None
    channels_last: bool = False

    @classmethod
    def named(cls, mode: str, device_type: str = "cpu") -> Precision:
        if mode not in MODES:
            raise PrecisionError(f"train.precision must be one of {', '.join(SETTINGS)}, not '{mode}'")
        dtype_name, _, layout = mode.partition("-")
        return cls(device_type, _DTYPES[dtype_name], layout == "cl")

    @property
    def name(self) -> str:
        dtype = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.dtype]
        return dtype + ("-cl" if self.channels_last else "")

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format

    def autocast(self):
        return torch.autocast(self.device_type, dtype=self.dtype, enabled=self.dtype is not None)

    def scaler(self) -> torch.amp.GradScaler:
        """Loss scaling for float16 (bfloat16 has float32's range and needs none); a pass-through otherwise."""
        return torch.amp.GradScaler(self.device_type, enabled=self.dtype == torch.float16)

    def input(self, x: torch.Tensor) -> torch.Tensor:
        """`x` (B, C, H, W) in this mode's memory layout."""
        return x.contiguous(memory_format=self.memory_format)


FP32 = Precision()


@dataclass(frozen=True)
class Choice:
    """The mode a setting resolved to on one device, and why."""

    precision: Precision
    reason: str
    measured: dict[str, float] = field(default_factory=dict)
    """Training images per second of each mode timed (empty when none was)."""
    device: str = ""

    @property
    def line(self) -> str:
        return f"precision {self.precision.name} on {self.device}: {self.reason}"

    def to_dict(self) -> dict:
        return {"mode": self.precision.name, "reason": self.reason, "measured": self.measured, "device": self.device}


# --------------------------------------------------------------------------------------------- what the hardware has


def cpu_has_native_bf16() -> bool:
    """Whether oneDNN runs bfloat16 natively here (AVX-512 BF16 or AMX); elsewhere it emulates it, ~10x slower."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def gpu_has_bf16(device: torch.device) -> bool:
    """Whether the GPU computes in bfloat16 natively (Ampere, compute capability 8, and later; older ones emulate)."""
    return torch.cuda.get_device_properties(device).major >= 8


def candidates(device: torch.device) -> tuple[list[str], str]:
    """The modes worth timing on `device`, and what was left out and why."""
    if device.type == "cuda":
        half = "bf16-cl" if gpu_has_bf16(device) else "fp16-cl"
        return ["fp32", "fp32-cl", half], "" if half == "bf16-cl" else "bf16 left out: this GPU emulates it"
    if cpu_has_native_bf16():
        return ["fp32", "fp32-cl", "bf16-cl"], ""
    return ["fp32", "fp32-cl"], "bf16 left out: this CPU has no native bfloat16"


def device_name(device: torch.device) -> str:
    """The CPU or GPU model, as the cache keys it."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cache_key(device: torch.device) -> str:
    threads = "" if device.type == "cuda" else f", {torch.get_num_threads()} threads"
    cap = "" if device.type == "cuda" else f" ({torch.backends.cpu.get_cpu_capability()})"
    return f"{device_name(device)}{cap}{threads}, torch {torch.__version__}"


# ------------------------------------------------------------------------------------------------------- the probe


def time_steps(mode: str, device: torch.device, batch: int = 64, steps: int = 3, budget_s: float = 6.0) -> float:
    """Training images per second of the default model in `mode`: one warm-up step, then up to `steps` timed ones
    (fewer when they pass `budget_s`). Runs with gradients on whatever the caller's mode (inference asks too)."""
    from ..config import ModelConfig
    from .network import build_model

    amp = Precision.named(mode, device.type)
    with torch.inference_mode(False), torch.enable_grad():
        torch.manual_seed(0)
        model = build_model(ModelConfig(), 10).to(device=device, memory_format=amp.memory_format).train()
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        x = amp.input(torch.rand(batch, 3, 64, 64, device=device) * 255)
        y = torch.randint(0, 10, (batch,), device=device)

        def step():
            with amp.autocast():
                loss = torch.nn.functional.cross_entropy(model(x).float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if device.type == "cuda":
                torch.cuda.synchronize(device)

        step()
        t0, done = time.perf_counter(), 0
        while done < steps and (done == 0 or time.perf_counter() - t0 < budget_s):
            step()
            done += 1
        return batch * done / (time.perf_counter() - t0)


Probe = Callable[[str, torch.device], float]


def measure(device: torch.device, probe: Probe = time_steps) -> Choice:
    """Time every candidate mode on `device` and choose the fastest."""
    modes, left_out = candidates(device)
    speeds = {m: round(probe(m, device), 1) for m in modes}
    best = max(speeds, key=speeds.get)
    timed = ", ".join(f"{m} {s:g} img/s" for m, s in speeds.items())
    reason = f"fastest of {timed} (training steps timed here)" + (f"; {left_out}" if left_out else "")
    return Choice(Precision.named(best, device.type), reason, speeds, device_name(device))


# ------------------------------------------------------------------------------------------------------- the cache


def cache_file() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "heritagelens" / "precision.json"


def spare_file() -> Path:
    """Where the choice is kept when `cache_file` cannot be written (a read-only home): this user's file in the
    temporary folder, so that the probe still runs once, not at every prediction."""
    uid = os.getuid() if hasattr(os, "getuid") else 0
    return Path(tempfile.gettempdir()) / f"heritagelens-{uid}-precision.json"


def _read_cache(f: Path) -> dict:
    try:
        if f == spare_file() and hasattr(os, "getuid") and f.stat().st_uid != os.getuid():
            return {}  # another user's file in a shared folder says nothing about this user's choice
        d = json.loads(f.read_text(encoding="utf-8"))
        return d if isinstance(d, dict) else {}
    except (OSError, ValueError, RecursionError):
        return {}


def _cached(key: str, device: torch.device) -> Choice | None:
    for f in (cache_file(), spare_file()):
        entry = _read_cache(f).get(key)
        try:
            amp = Precision.named(entry["mode"], device.type)
            measured = {str(k): float(v) for k, v in entry["measured"].items()}
            return Choice(amp, f"{entry['reason']}, cached {entry['date']}", measured, device_name(device))
        except (TypeError, KeyError, AttributeError, ValueError):
            continue  # no entry, or one this version cannot read
    return None  # measure again


def _store(key: str, choice: Choice) -> None:
    from ..files import atomic_write_json

    for f in (cache_file(), spare_file()):
        d = _read_cache(f)
        d[key] = {**choice.to_dict(), "date": time.strftime("%Y-%m-%d")}
        try:
            atomic_write_json(d, f)
            return
        except OSError:
            continue  # an unwritable cache: the spare file, and failing that a probe next time


def resolve(setting: str, device: torch.device, probe: Probe = time_steps) -> Choice:
    """The mode `setting` means on `device`: 'auto' is the cached or measured fastest (the cache file answers every
    later call, in this process and the next); a mode is taken as given."""
    device = torch.device(device)
    if setting != "auto":
        amp = Precision.named(setting, device.type)
        note = ""
        if (
            amp.dtype is not None
            and device.type == "cpu"
            and not (amp.dtype == torch.bfloat16 and cpu_has_native_bf16())
        ):
            note = f" (this CPU emulates {amp.name[:4]}: expect it to run several times slower than fp32)"
        return Choice(amp, f"set by train.precision{note}", {}, device_name(device))
    key = cache_key(device)
    choice = _cached(key, device)
    if choice is None:
        choice = measure(device, probe)
        _store(key, choice)
    return choice


def for_model(model: torch.nn.Module, setting: str = "auto") -> Precision:
    """The mode `setting` resolves to on the device `model`'s weights are on."""
    return resolve(setting, next(model.parameters()).device).precision


def for_inference(model: torch.nn.Module, setting: str = "auto") -> Precision:
    """The mode predictions run in: a named mode as it is; 'auto' in float32, in the layout chosen for the machine."""
    amp = for_model(model, setting)
    return amp if setting != "auto" else Precision(amp.device_type, None, amp.channels_last)
