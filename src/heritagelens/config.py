"""Every setting of a run in one typed object: printed at start, saved in the run folder and in every checkpoint."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from dataclasses import dataclass, field
from typing import Any

from .errors import HeritageLensError

IMAGE_SIZE = 64
"""Side (px) every image is decoded to and every model takes."""

KAGGLE_DATASET = "ikobzev/architectural-heritage-elements-image64-dataset"
"""Where AHE64 is published (`heritagelens data fetch`)."""

PRECISIONS = ("auto", "fp32", "fp32-cl", "bf16", "bf16-cl", "fp16", "fp16-cl")
"""Values of `train.precision` (see `heritagelens.model.precision`)."""

SPLIT_NAMES = {
    "val": "group-aware validation from train/",
    "source": "source-held-out validation from train/: photos of sources kept out of training",
    "test": "official test split",
    "outside": "photos from other sources than the train split, never trained on",
}
"""What each split name an accuracy is printed with means."""


class ConfigError(HeritageLensError, ValueError):
    """A setting is out of range or unknown."""


@dataclass
class DataConfig:
    """Where the images are and how validation is carved out of `train/`."""

    root: str = "data/ahe64"
    """Dataset root holding `train/<class>/*` and optionally `test/<class>/*`."""
    classes: tuple[str, ...] = ()
    """The classes in order, when `train/` holds photos of only some of them (learning from a person's review of a
    sort: the model keeps every class it knows); empty: the class folders of `train/`, sorted."""
    val_folds: int = 7
    """Validation is one fold of a stratified group k-fold over `train/`: 7 folds hold out about 14%."""
    val_fold: int = 0
    """Which fold is validation (0 .. val_folds-1)."""
    split_seed: int = 0
    """Seed of the fold assignment; kept apart from the training seed so seeds compare on one split."""
    near_dup_corr: float = 0.93
    """Pearson correlation of 16x16 RGB thumbnails at or above which two images are one group."""
    flickr_id_window: int = 100_000
    """Flickr photos whose numeric ids differ by at most this are taken as one burst (same photographer, same day)."""
    source_val: str = "flickr-newest"
    """The source-held-out validation, kept out of training beside the group-aware one (see
    `heritagelens.data.dataset.source_holdout`): 'flickr-newest' (each class's latest Flickr uploads), 'flickr-range-K'
    (the K-th range of Flickr ids, for cross-source folds), 'wikimedia' (the non-Flickr files) or 'none'."""
    source_share: float = 0.1
    """Share of each class's Flickr photos in a 'flickr-*' source hold-out."""
    on_bad_file: str = "skip"
    """What loading does with an unreadable file: 'skip' (warn with a count) or 'stop'."""
    cache_dir: str = ""
    """Where decoded tensors are cached; empty means `<root>/.heritagelens-cache` when writable, else ~/.cache."""
    outside: str = ""
    """A folder of class folders of photos from other sources than `train/`, only ever evaluated on (never trained,
    stopped, calibrated or thresholded on); empty means `<root>-outside` beside the root or
    `../shared/data/ahe64-outside`, whichever exists; 'none' evaluates none."""

    def __post_init__(self):
        self.classes = tuple(self.classes)
        if self.val_folds < 2:
            raise ConfigError("data.val_folds must be at least 2")
        check_seed(self.split_seed, "data.split_seed")
        if not 0 <= self.val_fold < self.val_folds:
            raise ConfigError(f"data.val_fold must be in 0..{self.val_folds - 1}")
        if self.on_bad_file not in ("skip", "stop"):
            raise ConfigError("data.on_bad_file must be 'skip' or 'stop'")
        ranges = re.fullmatch(r"flickr-range-(\d+)", self.source_val)
        if self.source_val not in ("none", "flickr-newest", "wikimedia") and not ranges:
            raise ConfigError("data.source_val must be 'flickr-newest', 'flickr-range-K', 'wikimedia' or 'none'")
        if not 0 < self.source_share <= 0.5:
            raise ConfigError("data.source_share must be in (0, 0.5]")
        if ranges and int(ranges[1]) >= self.source_ranges:
            raise ConfigError(
                f"data.source_val: a share of {self.source_share} makes {self.source_ranges} Flickr "
                f"ranges, numbered from 0"
            )

    @property
    def source_ranges(self) -> int:
        """How many equal ranges of each class's Flickr ids a 'flickr-*' hold-out cuts (the last is 'flickr-newest')."""
        return max(1, round(1 / self.source_share))


SEEDS = 2**63
"""Seeds are whole numbers from 0 to 2**63 - 1: what every random generator takes (NumPy, PyTorch)."""


def check_seed(seed: int, what: str) -> int:
    if not (isinstance(seed, int) and 0 <= seed < SEEDS):
        raise ConfigError(f"{what} {seed}: must be a whole number from 0 to 2**63 - 1")
    return seed


@dataclass
class ModelConfig:
    """A CNN of stages, each closed by 2x2 max-pooling, then global pooling, dropout and a linear head. 'plain' stages
    are (conv, batch norm, ReLU) x depth; 'resnet' stages are residual blocks."""

    arch: str = "plain"
    """'plain' (the deconvnet mirrors it) or 'resnet' (residual blocks; used for independent judges)."""
    widths: tuple[int, ...] = (32, 64, 128, 256)
    """Output channels of each stage."""
    depths: tuple[int, ...] = (1, 2, 2, 2)
    """Conv layers in each stage."""
    kernel_size: int = 3
    """Square kernel of every conv (odd, padded to keep the size)."""
    dropout: float = 0.2
    """Dropout before the linear head."""
    head_pool: str = "max"
    """Global pooling before the head: 'max' or 'avg'."""

    def __post_init__(self):
        self.widths, self.depths = tuple(self.widths), tuple(self.depths)
        if len(self.widths) != len(self.depths) or not self.widths:
            raise ConfigError("model.widths and model.depths must be non-empty and of equal length")
        if min(self.widths) < 1 or min(self.depths) < 1:
            raise ConfigError("model.widths and model.depths must be positive")
        if self.kernel_size < 1 or self.kernel_size % 2 != 1:
            raise ConfigError("model.kernel_size must be odd and positive")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError("model.dropout must be in [0, 1)")
        if self.arch not in ("plain", "resnet"):
            raise ConfigError("model.arch must be 'plain' or 'resnet'")
        if self.head_pool not in ("max", "avg"):
            raise ConfigError("model.head_pool must be 'max' or 'avg'")


@dataclass
class TrainConfig:
    """The training recipe. Units are given in each docstring."""

    epochs: int = 16
    """Passes over the training images."""
    batch_size: int = 64
    """Images per optimizer step."""
    lr: float = 0.05
    """Peak learning rate (SGD with Nesterov momentum; with Muon, of the parameters other than conv filters), reached
    after the warm-up."""
    momentum: float = 0.9
    weight_decay: float = 5e-4
    """L2 penalty on conv and linear weights (not on biases or batch norm)."""
    optimizer: str = "muon"
    """'muon': Muon on the conv filters (see `heritagelens.train.optim`), SGD with Nesterov momentum on the rest; or
    'sgd' on everything."""
    muon_lr: float = 0.06
    """With 'muon': the conv filters' peak learning rate (their norm is held fixed, so this is how far they turn)."""
    muon_momentum: float = 0.6
    muon_ns_steps: int = 3
    """With 'muon': Newton-Schulz iterations per step (airbench94_muon's 3; 5 brings the singular values closer to 1
    at two thirds more optimizer cost, see BENCHMARKS.md)."""
    warmup_frac: float = 0.15
    """Fraction of the steps over which the learning rate rises linearly from 0; it then falls linearly to 0."""
    label_smoothing: float = 0.1
    zoom_min_area: float = 1.0
    """Random zoom: crop a box of this fraction of the image area (up to all of it) and resize it back; 1 is off."""
    crop_pad: int = 4
    """Random translation of up to this many pixels (reflect padding), per image."""
    flip: bool = True
    """Random horizontal flips (architecture is left-right symmetric; vertical flips would not be)."""
    flip_alternate: bool = False
    """With `flip`: each image is mirrored on every other epoch (a random half of them first, fixed by the seed)
    instead of by a coin each time, so that every two epochs see every image both ways (as airbench does)."""
    cutout: int = 16
    """Side of a random square zeroed in each image (0 turns it off)."""
    colour_jitter: float = 0.1
    """Per-image brightness and contrast jitter: factors drawn from [1-x, 1+x]."""
    saturation: float = 0.0
    """Per-image saturation jitter: each image moved towards or away from its own grey by a factor drawn from
    [1-x, 1+x] (0 is off, at most 1)."""
    white_balance: float = 0.0
    """Another camera's colour cast: each colour channel of each image scaled by its own factor in [1-x, 1+x]."""
    sharpness: float = 0.0
    """Another lens or processing: each image blurred or sharpened by an amount drawn from [-x, x] (-1 is a Gaussian
    blur of sigma 1 px, +1 an unsharp mask as strong); 0 is off, at most 1."""
    jpeg_quality: int = 0
    """Another upload: a share `jpeg_share` of the images re-compressed as JPEG at a quality drawn from this value to
    95 (Pillow); 0 is off."""
    jpeg_share: float = 0.5
    grayscale: float = 0.0
    """Share of the images turned to grey (ITU-R 601 luma in all three channels), as old or scanned photos are."""
    res_min: int = 32
    """Progressive resizing: the first epochs train on the images downscaled to this side (px, a multiple of 8), an
    epoch there costing about (res_min/64)^2 of a full one; 64 turns it off. Evaluation is always at 64 px."""
    res_ramp: tuple[float, float] = (0.55, 0.8)
    """Fractions of the epochs between which the side grows linearly from `res_min` to 64 px (in steps of 8 px)."""
    adv_eps: float = 0.0
    """Adversarial training radius (L-inf, pixel units 0..255; 4 is 4/255): trains on fast-FGSM examples (0 = off)."""
    adv_alpha: float = 5.0
    """Step of the fast-FGSM attack, pixel units (Wong et al. use 1.25 x eps)."""
    ema_decay: float = 0.0
    """Weights averaged with this decay per step and used for evaluation (0 turns it off)."""
    tta: bool = True
    """Evaluate with test-time augmentation (flip and +-2 px shifts averaged)."""
    precision: str = "auto"
    """Number format and memory layout of every computation with the model: 'auto' times each mode this hardware
    offers once per machine and keeps the fastest (see `heritagelens.model.precision`); or one of 'fp32', 'fp32-cl'
    (channels-last), 'bf16', 'bf16-cl' (bfloat16 autocast), 'fp16', 'fp16-cl' (float16 with loss scaling)."""
    device: str = "auto"
    """'auto' (a CUDA GPU when PyTorch sees one, else the CPU), 'cpu', 'cuda' or 'cuda:K'."""
    compile: bool = False
    """torch.compile the model (slow to start, see BENCHMARKS.md)."""
    threads: int = 0
    """torch threads; 0 keeps torch's default (one per core)."""
    seed: int = 0
    snapshot_epochs: tuple[int, ...] = (1, 2, 5, 10, 20)
    """Extra checkpoints saved at these epochs (for feature-evolution figures)."""
    minutes: float = 0.0
    """Time budget of the training, minutes: the recipe's epochs cut to as many as train within it at the speed
    measured on this machine (0 = no budget: all of `epochs`)."""
    init_from: str = ""
    """A checkpoint or model folder whose (averaged) weights start this run, for fine-tuning or adapting: the same
    model (`model.*`); its classes may differ from the data's (each class both name keeps its row of the linear head,
    the others get new rows: `heritagelens.model.network.with_classes`). The optimizer and the schedule start afresh
    (empty: random initial weights)."""
    min_steps: int = 0
    """At least this many optimizer steps: on a training set too small for `epochs` to make them, the epochs (and
    `probe_epochs`, in proportion) are raised until they do (0: `epochs` as given)."""
    head_fit: bool = False
    """With `init_from`: before training, the linear head fitted to the training photos' features by logistic
    regression, each class weighted alike (`heritagelens.train.loop.fit_head`): a linear probe in one step."""
    balanced: bool = False
    """Weigh the loss so that every class counts alike however many photos it has (few photos of new classes beside
    many of old ones)."""
    probe_epochs: int = 0
    """The first this many epochs train the linear head alone (a linear probe: the feature layers, their batch norm
    statistics included, stay as they are), the rest the whole network; for adapting a model to new classes."""
    frozen_bn: bool = False
    """Batch norm layers keep the statistics they start with, training or not (their scales and shifts still learn):
    a model fine-tuned on a few photos normalizes its features as it learned to on many."""
    limit_train: int = 0
    """Use only the first N training images after shuffling (0 = all); for quick checks."""
    teachers: tuple[str, ...] = ()
    """Knowledge distillation (Hinton et al. 2015): checkpoints or model folders of models of the same classes whose
    softmax of their mean logits at `kd_temperature` the model also learns to match, on every training batch as
    augmented (the teachers see it at 64 px). Empty: no teachers."""
    source_teacher: bool = False
    """With `init_from`: the model it names is a teacher too, of the classes it knows (learning without forgetting,
    Li & Hoiem 2016: a model adapted to new classes keeps matching what it said of the old ones, on every photo)."""
    kd_weight: float = 0.0
    """With `teachers` or `source_teacher`: the share of the loss that is matching them (the rest is the labels'
    cross-entropy)."""
    kd_temperature: float = 3.0
    """With teachers: the softmax temperature of both sides of the match (the loss is scaled by its square)."""

    def __post_init__(self):
        self.snapshot_epochs = tuple(self.snapshot_epochs)
        self.teachers = tuple(self.teachers)
        taught = bool(self.teachers) or self.source_teacher
        if taught != (self.kd_weight > 0) or not 0.0 <= self.kd_weight <= 1.0 or self.kd_temperature <= 0:
            raise ConfigError(
                "train.teachers (or train.source_teacher) and train.kd_weight go together (kd_weight in (0, 1] with "
                "teachers, 0 without), "
                "train.kd_temperature must be positive"
            )
        if not 0.0 <= self.saturation <= 1.0:
            raise ConfigError("train.saturation must be in [0, 1]")
        if self.epochs < 1 or self.batch_size < 1:
            raise ConfigError("train.epochs and train.batch_size must be positive")
        if not 0 <= self.probe_epochs <= self.epochs:
            raise ConfigError("train.probe_epochs must be from 0 to train.epochs")
        if self.threads < 0 or self.limit_train < 0 or self.min_steps < 0:
            raise ConfigError("train.threads, train.limit_train and train.min_steps must be 0 (the default) or more")
        check_seed(self.seed, "train.seed")
        if self.lr <= 0:
            raise ConfigError("train.lr must be positive")
        if self.optimizer not in ("sgd", "muon"):
            raise ConfigError(f"train.optimizer must be 'sgd' or 'muon', not '{self.optimizer}'")
        if self.muon_lr <= 0 or not 0.0 <= self.muon_momentum < 1.0 or self.muon_ns_steps < 1:
            raise ConfigError(
                "train.muon_lr must be positive, train.muon_momentum in [0, 1) and train.muon_ns_steps at least 1"
            )
        if not 0.0 <= self.warmup_frac < 1.0:
            raise ConfigError("train.warmup_frac must be in [0, 1)")
        if self.adv_eps < 0 or self.adv_alpha < 0:
            raise ConfigError("train.adv_eps and train.adv_alpha must not be negative")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ConfigError("train.ema_decay must be in [0, 1)")
        if not 0.0 < self.zoom_min_area <= 1.0:
            raise ConfigError("train.zoom_min_area must be in (0, 1]")
        if not (0.0 <= self.white_balance < 1.0 and 0.0 <= self.sharpness <= 1.0 and 0.0 <= self.grayscale <= 1.0):
            raise ConfigError("train.white_balance must be in [0, 1), train.sharpness and train.grayscale in [0, 1]")
        if not (self.jpeg_quality == 0 or 1 <= self.jpeg_quality <= 95) or not 0.0 <= self.jpeg_share <= 1.0:
            raise ConfigError("train.jpeg_quality must be 0 (off) or a JPEG quality from 1 to 95, jpeg_share in [0, 1]")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ConfigError("train.label_smoothing must be in [0, 1)")
        if not (self.minutes >= 0 and math.isfinite(self.minutes)):
            raise ConfigError("train.minutes must be a finite number of minutes, 0 or more")
        self.res_ramp = tuple(self.res_ramp)
        if not (8 <= self.res_min <= 64 and self.res_min % 8 == 0):
            raise ConfigError("train.res_min must be a multiple of 8 from 8 to 64 (px)")
        if len(self.res_ramp) != 2 or not 0.0 <= self.res_ramp[0] <= self.res_ramp[1] <= 1.0:
            raise ConfigError("train.res_ramp must be two fractions of the epochs, 0 <= start <= end <= 1")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"train.precision must be one of {', '.join(PRECISIONS)}, not '{self.precision}'")


@dataclass
class DreamConfig:
    """One recipe for class images. Pixel units are 0..255; sizes are in pixels of the 64 px input."""

    param: str = "phase-colour"
    """'pixel', 'fourier' (1/f scaled, decorrelated colour), 'phase' (MACO: the data's magnitude spectrum) or
    'phase-colour' (MACO on the data's decorrelated colour components)."""
    steps: int = 256
    lr: float = 0.05
    jitter: int = 4
    scales: tuple[float, ...] = (0.9, 0.95, 1.0, 1.05, 1.1)
    degrees: tuple[float, ...] = (-8.0, -4.0, 0.0, 4.0, 8.0)
    tv: float = 0.0
    """Weight of the total-variation penalty (per image, 0..1 pixel units)."""
    l2: float = 0.0
    """Weight of the L2 penalty towards mid-grey."""
    blur_every: int = 0
    blur_sigma: float = 0.0
    diversity: float = 3.0
    """Weight of the diversity term among the samples of one class (0 turns it off)."""
    diversity_layer: str = ""
    """Conv layer the diversity term compares (empty: the model's second-deepest)."""

    def __post_init__(self):
        self.scales, self.degrees = tuple(self.scales), tuple(self.degrees)
        if self.param not in ("pixel", "fourier", "phase", "phase-colour"):
            raise ConfigError(f"dream.param must be 'pixel', 'fourier', 'phase' or 'phase-colour', not '{self.param}'")
        values = [self.lr, self.tv, self.l2, self.blur_sigma, self.diversity, *self.scales, *self.degrees]
        if not all(math.isfinite(v) for v in values):
            raise ConfigError("dream.* settings must be finite numbers")
        if self.steps < 1 or self.lr <= 0 or self.jitter < 0 or min(self.scales) <= 0:
            raise ConfigError("dream.steps must be at least 1, lr and scales positive, jitter not negative")
        if min(self.tv, self.l2, self.blur_every, self.blur_sigma, self.diversity) < 0:
            raise ConfigError("dream weights must not be negative")


@dataclass
class GalleryConfig:
    """The class-image gallery the main job makes, and how it is scored."""

    model: str = "robust"
    """Which model the gallery is made from: 'robust' (a robust model trained beside the standard one with the
    'robust' preset, whose class images people recognise) or 'self' (the standard model itself)."""
    robust_epochs: int = 4
    """Epochs of the robust model trained beside the standard one when `model` is 'robust' (chosen from the
    fine-tuning curve in BENCHMARKS.md)."""
    robust_from: str = "standard"
    """How the robust model starts: 'standard' (adversarial fine-tuning of the run's trained standard model, at
    `robust_lr`) or 'scratch' (random weights)."""
    robust_lr: float = 0.05
    """Peak learning rate of the adversarial fine-tuning (SGD). Muon leaves the deep filters at larger norms than SGD
    does, and behind batch norm a step turns a filter by lr / |w|^2: 0.05 here did what 0.02 did for an SGD-trained
    model (BENCHMARKS.md)."""
    samples: int = 8
    """Images per class."""
    floor_samples: int = 2
    """Images per class of each naive-ascent floor the gallery is scored beside (made with as many steps per image
    as the gallery; fewer images than the gallery's keep the stage short: a floor is a reference, not a result)."""
    seed: int = 0
    judges: bool = True
    """Score the gallery with the judges (trained once per dataset and cached; see `heritagelens.judging.judges`)."""
    judges_dir: str = ""
    """Where judges are cached; empty means `judges/` in the data cache folder."""
    judge_overrides: tuple[str, ...] = ()
    """Extra `section.key=value` overrides of every judge's recipe (quick checks; part of the judges' cache key)."""

    def __post_init__(self):
        self.judge_overrides = tuple(self.judge_overrides)
        if self.robust_from not in ("scratch", "standard"):
            raise ConfigError("gallery.robust_from must be 'scratch' or 'standard'")
        if not self.robust_lr > 0:
            raise ConfigError("gallery.robust_lr must be positive")
        if self.model not in ("robust", "self"):
            raise ConfigError("gallery.model must be 'robust' or 'self'")
        if min(self.samples, self.floor_samples, self.robust_epochs) < 1:
            raise ConfigError("gallery.samples, gallery.floor_samples and gallery.robust_epochs must be at least 1")
        check_seed(self.seed, "gallery.seed")


@dataclass
class Config:
    """A whole run."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    dream: DreamConfig = field(default_factory=DreamConfig)
    gallery: GalleryConfig = field(default_factory=GalleryConfig)

    def __post_init__(self):
        if self.train.res_min < 2 ** len(self.model.widths):
            raise ConfigError(
                f"train.res_min={self.train.res_min} is too small for {len(self.model.widths)} pooling stages: "
                f"at least {2 ** len(self.model.widths)} px"
            )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Config:
        if not isinstance(d, dict) or not all(isinstance(v, dict) for v in d.values()):
            raise ConfigError("a config is a table of sections (data, model, train...), each a table of settings")
        d = _upgrade(d)
        try:
            return cls(
                data=DataConfig(**d.get("data", {})),
                model=ModelConfig(**d.get("model", {})),
                train=TrainConfig(**d.get("train", {})),
                dream=DreamConfig(**d.get("dream", {})),
                gallery=GalleryConfig(**d.get("gallery", {})),
            )
        except TypeError as e:
            raise ConfigError(f"unknown setting: {e}") from None

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def override(self, assignments: list[str]) -> Config:
        """Apply `section.key=value` assignments (value parsed as JSON, else taken as a string)."""
        d = self.to_dict()
        for a in assignments:
            key, sep, raw = a.partition("=")
            section, _, name = key.partition(".")
            if section in d and name in _REPLACED.get(section, ()):
                raise ConfigError(
                    f"bad setting '{a}': {section}.{name} was replaced by train.precision (fp32, bf16...)"
                )
            if not sep or section not in d or name not in d[section]:
                raise ConfigError(f"bad setting '{a}': expected section.key=value with a known key")
            d[section][name] = _typed(a, raw, d[section][name])
        return Config.from_dict(d)


def _typed(assignment: str, raw: str, current: Any) -> Any:
    """`raw` parsed as JSON into the type of the setting's `current` value (text settings take it as it is), or
    `ConfigError` naming the assignment and what the setting takes."""
    if isinstance(current, str):
        return raw
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    kind = _kind(current)
    if isinstance(current, bool):
        ok = isinstance(value, bool)
    elif isinstance(current, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(current, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    elif isinstance(current, (list, tuple)):
        ok = isinstance(value, list) and (not current or all(_same_kind(v, current[0]) for v in value))
    else:
        ok = True
    if not ok:
        raise ConfigError(f"bad setting '{assignment}': takes {kind}, not {raw!r}")
    return float(value) if isinstance(current, float) else value


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "true or false"
    if isinstance(value, int):
        return "a whole number"
    if isinstance(value, float):
        return "a finite number"
    if isinstance(value, (list, tuple)):
        return f"a list like {json.dumps(list(value))}"
    return "a value"


def _same_kind(v: Any, example: Any) -> bool:
    if isinstance(example, bool) or isinstance(v, bool):
        return isinstance(v, bool) and isinstance(example, bool)
    if isinstance(example, (int, float)):
        return isinstance(v, (int, float)) and math.isfinite(v) and (isinstance(v, int) or isinstance(example, float))
    return isinstance(v, type(example))


_REPLACED = {"train": ("bf16", "fp16", "channels_last"), "dream": ("bf16",)}
"""Settings of earlier versions that `train.precision` replaced."""


def _upgrade(d: dict[str, Any]) -> dict[str, Any]:
    """A config of an earlier version (a checkpoint's, a run's config.json) in today's terms: its bf16, fp16 and
    channels_last flags become `train.precision` (the old default, bf16, becomes 'auto'); a whole data section
    saved before the source-held-out validation existed keeps the split it trained on (`data.source_val='none'`);
    Muon saved before its iterations were a setting ran 5."""
    d = {k: dict(v) if isinstance(v, dict) else v for k, v in d.items()}
    train, dream, data = d.get("train"), d.get("dream"), d.get("data")
    if isinstance(data, dict) and "val_folds" in data and "source_val" not in data:
        data["source_val"] = "none"
    if isinstance(train, dict) and "muon_lr" in train:
        train.setdefault("muon_ns_steps", 5)
    if isinstance(train, dict) and any(k in train for k in _REPLACED["train"]):
        bf16, fp16, cl = train.pop("bf16", True), train.pop("fp16", False), train.pop("channels_last", True)
        layout = "-cl" if cl else ""
        old = ("fp16" + layout) if bf16 and fp16 else "auto" if bf16 else "fp32" + layout
        train.setdefault("precision", old)
    if isinstance(dream, dict):
        dream.pop("bf16", None)
    return d


ROBUST = [
    "train.adv_eps=4",
    "train.adv_alpha=5",
    "train.cutout=0",
    "train.colour_jitter=0",
    "train.batch_size=128",
    "train.lr=0.08",
    "train.res_min=64",
]
"""What makes a recipe adversarially robust (fast FGSM, L-inf 4/255, without the augmentations it replaces), at
the batch, learning rate and full resolution the robust models and the judges were measured with. They were all
trained with SGD: whoever applies this list pins `SGD` too (kept apart because the judges' content keys, made
before Muon became the default, name this list alone)."""

SGD = ["train.optimizer=sgd"]

CLASSIC = [*SGD, "train.epochs=28", "train.batch_size=128", "train.lr=0.08", "train.res_min=64"]
"""The default recipe before it was cut to a third of its compute: 28 epochs of SGD at 64 px."""

COLOUR = ["train.saturation=0.3", "train.colour_jitter=0.2"]
"""The default recipe's colour augmentation: per-image saturation jitter and stronger brightness/contrast jitter,
chosen over `TrainConfig`'s own (no saturation jitter, colour jitter 0.1) on photos from other sources than the
training's (3 seeds, paired: BENCHMARKS.md). A preset rather than a `TrainConfig` default, so that a checkpoint
saved before it reads back as it was trained."""

BEST = [*COLOUR, "model.widths=[48,96,192,384]", "train.epochs=20", "train.minutes=60"]
"""The most accurate recipe for whoever has an hour: the default recipe (its colour augmentation included) 1.5
times as wide, over 20 epochs, held within 60 minutes by the time budget on a slower machine (its accuracy and time
in BENCHMARKS.md)."""

ADAPT = [
    *COLOUR,
    "train.epochs=12",
    "train.head_fit=true",
    "train.balanced=true",
    "train.source_teacher=true",
    "train.kd_weight=0.5",
    "train.kd_temperature=2",
    "train.min_steps=200",
    "train.muon_lr=0.05",
    "train.res_min=64",
    "train.snapshot_epochs=[]",
]
"""Adapting a trained model to other classes (`heritagelens train --from`): the head fitted to the photos' features
first (a linear probe in one step, every class weighted alike), then the whole network, every class counting alike
in the loss, the model it started from teaching the classes it knows (half the loss: learning without forgetting),
at full resolution, for at least 200 steps however few the photos. Chosen by `bench/adapt.py` over a
gradient-trained probe, a lower rate, frozen batch norm statistics and an unweighted loss (BENCHMARKS.md)."""

PRESETS: dict[str, list[str]] = {
    "default": COLOUR,
    "adapt": ADAPT,
    "quick": ["train.epochs=3", "model.widths=[16,32,64,64]"],
    "best": BEST,
    "classic": CLASSIC,
    "robust": [*ROBUST, *SGD, "train.epochs=16"],
    "tuned": [  # the best trial of the 2-hour Optuna study in BENCHMARKS.md (#12), over the classic recipe
        *CLASSIC,
        "model.depths=[1,1,1,1]",
        "model.kernel_size=5",
        "model.dropout=0.063",
        "train.lr=0.086",
        "train.weight_decay=1.2e-5",
        "train.label_smoothing=0.096",
        "train.crop_pad=1",
        "train.colour_jitter=0.123",
    ],
}
"""Named recipes, as overrides of the defaults."""


DREAM_PRESETS: dict[str, list[str]] = {
    "default": [],  # MACO in decorrelated colour with the diversity term: chosen by measurement (BENCHMARKS.md)
    "naive": ["dream.param=pixel", "dream.jitter=0", "dream.scales=[1.0]", "dream.degrees=[0.0]", "dream.diversity=0"],
    "fourier": ["dream.param=fourier", "dream.tv=0.5", "dream.diversity=0"],
    "maco": ["dream.param=phase", "dream.diversity=0"],
}
"""Named class-image recipes, as overrides of `DreamConfig`'s defaults (`dream --preset`; `heritagelens.dream`'s
`dream_preset`). 'naive' is plain gradient ascent on pixels (Simonyan et al.), the floor every gallery is scored
against; 'fourier' and 'maco' are the measured alternatives."""


def preset(name: str) -> Config:
    """A named recipe, or a config saved as JSON (a run's config.json, a study's best-config.json)."""
    if name.endswith(".json"):
        import json
        from pathlib import Path

        try:
            return Config.from_dict(json.loads(Path(name).read_text(encoding="utf-8")))
        except (OSError, ValueError, AttributeError, RecursionError) as e:
            raise ConfigError(f"{name}: not a readable config file ({type(e).__name__}: {e})") from None
    if name not in PRESETS:
        raise ConfigError(f"unknown preset '{name}'; known: {', '.join(sorted(PRESETS))} or a config .json file")
    return Config().override(PRESETS[name])


def launched_size() -> int:
    """How many processes torchrun started (1 when run directly): read from its environment, without PyTorch, so
    that the command line can refuse what does not run under torchrun before importing anything heavy."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def adapting(model: ModelConfig, start: str, name: str = "adapt") -> Config:
    """Recipe `name` (the 'adapt' recipe by default) starting from the model at `start`, whose settings are `model`:
    what `train --from` and `learn` train with, before their own settings."""
    cfg = preset(name)
    cfg.model = model
    cfg.train.init_from = start
    return cfg
