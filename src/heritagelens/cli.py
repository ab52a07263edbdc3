"""The `heritagelens` command: one plain function per subcommand, errors as one line and a non-zero exit."""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from . import __version__
from .config import KAGGLE_DATASET, PRESETS, SPLIT_NAMES, ConfigError, check_seed, launched_size
from .errors import HeritageLensError
from .files import writable_file, writable_folder

EXIT_ERROR = 2


class UsageError(HeritageLensError):
    """Bad arguments or missing data, reported as one line."""


DATA_FOLDERS = ("./data/ahe64", "../shared/data/ahe64")
"""Where the data is looked for when neither --data nor $AHE_DATA says."""


def default_data_root() -> Path:
    """$AHE_DATA, else ./data/ahe64, else ../shared/data/ahe64; one clear message when none exists."""
    env = os.environ.get("AHE_DATA")
    if env:
        return Path(env)
    for p in map(Path, DATA_FOLDERS):
        if (p / "train").is_dir():
            return p
    raise UsageError(
        "no AHE64 data found: run 'heritagelens data fetch' (Kaggle: "
        + KAGGLE_DATASET
        + ", or --source URL of an archive) "
        "to get it into ./data/ahe64, or set AHE_DATA=/path/to/ahe64, or pass --data"
    )


def _root(args) -> Path:
    return Path(args.data) if getattr(args, "data", None) else default_data_root()


def _config(args, start: Path | None = None):
    """The recipe the flags choose; `start`, a model to adapt (`train --from`): its model settings, the 'adapt'
    recipe unless --preset names another, and `train.init_from` naming it."""
    from .config import adapting, preset

    flags = {"seed": "train.seed", "epochs": "train.epochs", "minutes": "train.minutes", "device": "train.device"}
    given = [f"{k}={getattr(args, f)}" for f, k in flags.items() if getattr(args, f, None) not in (None, "")]
    if start is not None:
        from .model.checkpoint import config_of, read_checkpoint

        cfg = adapting(config_of(read_checkpoint(start), start).model, str(start.resolve()), args.preset or "adapt")
    else:
        cfg = preset(args.preset or "default")
    cfg = cfg.override(args.set or [])  # a bad recipe is reported before missing data
    root = f"data.root={_root(args).resolve()}"  # absolute, so --resume and evaluate work from any folder
    return cfg.override([root, *given])


def _settings(args, command: str, takes: tuple[str, ...], why: str = "") -> list[str]:
    """The command's `--set` assignments, each checked to name a setting the command uses (`takes`: prefixes such as
    'data.'), so that none is accepted and silently ignored."""
    sets = args.set or []
    wrong = [a for a in sets if not a.startswith(takes)]
    if wrong:
        named = " and ".join(t + "*" if t.endswith(".") else t.rstrip("=") for t in takes)
        raise UsageError(f"{command} --set takes {named} settings only, not '{wrong[0]}'" + (f": {why}" if why else ""))
    return sets


def _model(args) -> Path:
    """The model a command uses: the checkpoint given, else the one bundled with the package, named on stderr."""
    if args.checkpoint:
        return Path(args.checkpoint)
    from .model.card import BUNDLED, describe_model

    print(f"heritagelens: no checkpoint given: the bundled model, {describe_model(BUNDLED)}", file=sys.stderr)
    return BUNDLED


def _beside(args, ckpt: Path) -> Path:
    """Where a command writes unless --out says: beside the checkpoint; the current folder for the bundled model."""
    from .model.card import BUNDLED
    from .model.checkpoint import run_folder

    return Path(args.out) if args.out else Path(".") if ckpt == BUNDLED else run_folder(ckpt)


def seed_number(text: str) -> int:
    """`--seed`: a whole number every random generator takes (0 to 2**63 - 1), else argparse's one-line error."""
    try:
        return check_seed(int(text), "--seed")
    except (ValueError, ConfigError) as e:
        why = str(e) if isinstance(e, ConfigError) else f"not a whole number: {text!r}"
        raise argparse.ArgumentTypeError(why) from None


def _run_dir(args) -> Path:
    return Path(args.out) if args.out else Path("runs") / time.strftime("%Y%m%d-%H%M%S")


# ------------------------------------------------------------------------------------------------- the commands
# Each command is a plain function `cmd_*(args) -> exit code`, registered with its arguments right above it.


@dataclass
class Command:
    help: str
    arguments: list[tuple[tuple, dict]]
    func: Callable[[argparse.Namespace], int]
    interrupted: str = ""
    """What to do after Ctrl-C (commands that keep nothing half-done leave it empty: run them again)."""


COMMANDS: dict[str, Command] = {}
"""Every subcommand by name ('data check' for one inside a group), in the order `--help` lists them."""

GROUPS = {"data": "inspect or fetch a dataset"}

EXAMPLES = {
    "data check": "heritagelens data check data/ahe64",
    "data fetch": "heritagelens data fetch --source https://host/ahe64.zip --sha256 HEX",
    "train": "heritagelens train --preset best --seed 1 --out runs/best-1",
    "evaluate": "heritagelens evaluate runs/best-1 --split outside --outside ~/photos-by-class",
    "predict": "heritagelens predict photos/ --top 5 --csv > predictions.csv",
    "calibrate": "heritagelens calibrate runs/best-1",
    "sort": "heritagelens sort ~/Pictures/survey --out ~/Pictures/survey-sorted --xmp --target-accuracy 0.98",
    "learn": "heritagelens learn ~/Pictures/survey-sorted",
    "export": "heritagelens export runs/best-1 --out model.onnx",
    "layers": "heritagelens layers runs/best-1",
    "deconv": "heritagelens deconv runs/best-1 --top9 --layer conv4_2 --channels 3 17",
    "dream": "heritagelens dream runs/best-1 --class gargoyle --samples 8",
    "dream-score": "heritagelens dream-score runs/best-1/dream-default-gargoyle",
    "tune": "heritagelens tune --trials 20 --storage sqlite:///tune.db",
    "run": "heritagelens run --preset best --seed 1",
    "serve": "heritagelens serve runs/best-1 --port 7860",
    "report": "heritagelens report runs/best-1 --out best-1.html",
}
"""An example of each command, shown at the end of its `--help`."""


def arg(*flags: str, **options) -> tuple[tuple, dict]:
    """One `add_argument` call, to be made when the parser is built."""
    return flags, options


def command(name: str, help: str, *arguments, interrupted: str = ""):
    """Register the decorated `cmd_*` function as subcommand `name` with `arguments` (`arg(...)` or lists of them)."""

    def register(func):
        flat = [a for x in arguments for a in (x if isinstance(x, list) else [x])]
        COMMANDS[name] = Command(help, flat, func, interrupted)
        return func

    return register


def data_flag(default: str = "search", what: str = "") -> tuple[tuple, dict]:
    """--data: where the dataset is; `default` 'search' ($AHE_DATA and the usual folders) or 'model' (the data the
    checkpoint was trained on); `what` says what it is used for."""
    where = "the one the model was trained on" if default == "model" else f"$AHE_DATA, {', '.join(DATA_FOLDERS)}"
    return arg("--data", help=f"dataset root{' for ' + what if what else ''} (default: {where})")


CHECKPOINT = arg("checkpoint", help="checkpoint file or run folder")
MODEL = arg("checkpoint", nargs="?", help="checkpoint file, run folder or model folder (default: the bundled model)")
QUIET = arg("--quiet", action="store_true", help="no progress bar")
DEVICE = arg("--device", help="auto (CUDA when present, the default), cpu, cuda or cuda:K")
OUT_BESIDE = arg("--out", help="output folder (default: beside the checkpoint)")
FORCE = arg("--force", action="store_true", help="replace the figures an earlier run wrote under the same names")
JUDGES_DIR = arg("--judges", help="folder of cached judges (default: judges/ in the data cache)")


def recipe_flags(
    preset: str = f"named recipe ({', '.join(PRESETS)}) or a config .json",
    sets: str = "override a config value",
    seed: str | None = None,
) -> list[tuple[tuple, dict]]:
    """The flags that choose a training recipe and where it runs."""
    return [
        data_flag(),
        arg("--preset", help=preset + " (default: default)"),
        arg("--set", action="append", metavar="SECTION.KEY=VALUE", help=sets + " (repeatable; e.g. train.lr=0.05)"),
        arg("--seed", type=seed_number, help=seed or "random seed of the training (default: the recipe's, 0)"),
        QUIET,
        DEVICE,
    ]


TRAINING = [
    arg("--epochs", type=int, help="epochs to train (default: the recipe's)"),
    arg("--minutes", type=float, help="time budget of the training: as many epochs as fit here"),
    arg("--out", help="run folder (default: runs/<date-time>)"),
]
RESUME_ADVICE = "continue with 'heritagelens train --resume RUN'"


@command("data check", "counts, sizes, modes, unreadable files and duplicates", arg("data", nargs="?", help="root"))
def cmd_data_check(args) -> int:
    from .data.dataset import check
    from .progress import say

    say(f"data check: reading every image under {_root(args)} (and hashing them for duplicates)")
    r = check(_root(args))
    print(r.text())
    if not r.usable:
        print(f"heritagelens: error: {r.root}: layout unusable ({len(r.problems)} problem(s) above)", file=sys.stderr)
        return EXIT_ERROR
    return 0


@command(
    "data fetch",
    "download AHE64 (Kaggle or an archive URL) and lay it out as DEST/train, DEST/test",
    arg("--source", default="kaggle", help="'kaggle' (needs your Kaggle API token), a URL or an archive"),
    arg("--dest", default="data/ahe64", help="dataset folder to create (default: data/ahe64)"),
    arg("--sha256", help="expected SHA-256 of the archive"),
    arg("--force", action="store_true", help="replace the splits already in DEST"),
    QUIET,
)
def cmd_data_fetch(args) -> int:
    """Download the dataset (Kaggle or an archive URL), lay it out as DEST/train and DEST/test, check it."""
    from .data.fetch import fetch

    root = fetch(args.source, Path(args.dest), args.sha256, progress=not args.quiet, force=args.force)
    print(f"dataset ready in {root}; 'heritagelens data check {root}' says:")
    args.data = str(root)
    status = cmd_data_check(args)
    if status == 0 and root.resolve() != Path("data/ahe64").resolve():
        print(f"use it with --data {root} or AHE_DATA={root}")
    return status


@command(
    "train",
    "train a model into a run folder",
    recipe_flags(),
    TRAINING,
    arg("--resume", metavar="RUN", help="continue the interrupted run in this folder"),
    arg(
        "--from",
        dest="start",
        metavar="MODEL",
        help="adapt this model to the data's classes: 'bundled', a checkpoint, run folder or model folder (its "
        "features kept, a head row for each class; the 'adapt' recipe unless --preset names another)",
    ),
    interrupted=RESUME_ADVICE,
)
def cmd_train(args) -> int:
    """Train a model; under `torchrun --nproc-per-node N` the N processes train it together (DDP)."""
    from .distributed import close_world
    from .train.runs import train_run

    main = int(os.environ.get("RANK", "0")) == 0
    if args.resume:
        run = Path(args.resume)
        if not (run / "last.pt").exists():
            raise UsageError(f"{run}: no last.pt to resume from")
        if args.start:
            raise UsageError("--resume continues a run as it was started: give --resume or --from, not both")
    else:
        cfg = _config(args, _start(args.start) if args.start else None)
        run = _run_dir(args) if args.out or launched_size() == 1 else None
        if run is None:
            raise UsageError("under torchrun, train needs --out (every process must name the same run folder)")
        if (run / "last.pt").exists():
            raise UsageError(f"{run}: already holds a run; use --resume {run} or another --out")
        if main and run.is_dir() and any(run.iterdir()):  # under torchrun the other processes are writing into it
            raise UsageError(f"{run}: already holds files (not a run to resume); give an empty or new --out")
        if main and run.exists() and not run.is_dir():
            raise UsageError(f"{run}: exists and is not a folder; give an empty or new --out")
        if main:
            print(cfg.to_json())
    if main:
        writable_folder(run)
    try:
        model = train_run(None if args.resume else cfg, run, resume=bool(args.resume), progress=not args.quiet)
    except BaseException:
        close_world(ok=False)
        raise
    close_world()
    if main and model.ckpt.get("adapted_from"):
        from .jobs.evaluation import adapted_text

        print(adapted_text(model))
    if main:
        print(f"run folder: {run}")
    return 0


def _start(name: str) -> Path:
    """The model `train --from` names: 'bundled' is the package's own."""
    from .model.card import BUNDLED

    return BUNDLED if name == "bundled" else Path(name)


@command(
    "evaluate",
    "metrics of a checkpoint on a split",
    MODEL,
    arg(
        "--split",
        choices=["val", "source", "test", "outside"],
        default="val",
        help="val (the default) also evaluates the source-held-out split and the outside photos when they exist",
    ),
    arg(
        "--outside",
        metavar="DIR",
        help="the outside photos: a folder of class folders of photos from other sources "
        "than the training's (default: <data root>-outside or ../shared/data/ahe64-outside when either exists)",
    ),
    data_flag("model"),
    arg("--tta", action=argparse.BooleanOptionalAction, default=None, help="test-time augmentation"),
    arg("--out", help="folder for eval JSON and PNG (default: beside the checkpoint)"),
    arg("--set", action="append", metavar="data.KEY=VALUE", help="a data.* setting (data.on_bad_file=stop)"),
)
def cmd_evaluate(args) -> int:
    from .jobs.evaluation import evaluate, evaluation_splits
    from .model.card import BUNDLED
    from .model.trained import Trained

    ckpt = _model(args)
    out = writable_folder(_beside(args, ckpt))
    root = Path(args.data) if args.data else default_data_root() if ckpt == BUNDLED else None
    sets = _settings(args, "evaluate", ("data.",), "the model and its recipe are the checkpoint's")
    sets += [f"data.outside={Path(args.outside).resolve()}"] if args.outside else []
    model = Trained.load(ckpt, root, sets)  # one model and one split preparation for every split evaluated
    splits = evaluation_splits(model) if args.split == "val" else [args.split]  # the others beside val
    results = [evaluate(model, s, tta=args.tta, out_dir=out) for s in splits]
    for r in results:
        print(f"== {r.split} ({SPLIT_NAMES[r.split]})")
        print(r.report() + "\n")
        print(f"written: {out / f'eval-{r.split}.json'}, {out / f'confusion-{r.split}.png'}")
    if len(results) > 1:
        from .model.metrics import accuracy_lines

        print(accuracy_lines(results))
    return 0


@command(
    "predict",
    "top-k classes of images of any size and format",
    arg(
        "paths",
        nargs="+",
        metavar="[MODEL] IMAGE",
        help="a checkpoint, run folder, model folder or exported .onnx file (default: the bundled model), then "
        "images and folders of images (every image in them, sorted); options may come anywhere",
    ),
    arg("--top", type=int, default=3, help="classes to show per image (default: 3)"),
    arg("--tta", action="store_true", help="average the test-time views (mirror, 2 px shifts): slower, under PyTorch"),
    arg("--csv", action="store_true", help="print CSV (file, class, probability, top, error) instead of lines"),
    arg("--json", action="store_true", help="print one JSON list, an object per image, instead of lines"),
)
def cmd_predict(args) -> int:
    """Top-k classes per image: an exported .onnx file or a model folder with its graph (the bundled model among them)
    under onnxruntime, without loading PyTorch; a checkpoint, or any model with --tta, under PyTorch. Probabilities
    are the calibrated ones `sort` and the web app give."""
    from .data.images import DataError, decode

    if args.top < 1:
        raise UsageError(f"--top {args.top}: must be at least 1 (classes to show per image)")
    if args.csv and args.json:
        raise UsageError("--csv and --json: give one of them")
    args.checkpoint, images = _model_and_images(args.paths)
    probabilities, classes = _predictor(Path(_model(args)), args.tta)
    rows = []
    for path in images:
        try:
            probs = probabilities(decode(path)[None])[0]
        except DataError as e:
            rows.append({"file": str(path), "error": str(e).removeprefix(f"{path}: ")})
            if not (args.csv or args.json):
                print(f"heritagelens: error: {e}", file=sys.stderr)
            continue
        top = sorted(range(len(classes)), key=lambda i: -probs[i])[: args.top]
        rows.append({"file": str(path), "top": [(classes[i], round(float(probs[i]), 4)) for i in top]})
        if not (args.csv or args.json):
            print(f"{path}: " + ", ".join(f"{classes[i]} {probs[i]:.3f}" for i in top))
    if args.csv or args.json:
        _print_predictions(rows, as_json=args.json)
    return EXIT_ERROR if any("error" in r for r in rows) else 0


def _model_and_images(paths: list[str]) -> tuple[Path | None, list[Path]]:
    """`predict`'s paths: the model when the first names one (a .pt, .pth or .onnx file, a model or run folder), and
    the images: files as given, folders as every image file under them, sorted."""
    from .data.images import IMAGE_SUFFIXES, image_files
    from .model.card import is_model_folder

    first = Path(paths[0])
    is_model = first.suffix.lower() in (".pt", ".pth", ".onnx") or is_model_folder(first)
    is_model = is_model or (first.is_dir() and any((first / n).is_file() for n in ("last.pt", "best.pt")))
    model, given = (first, paths[1:]) if is_model else (None, paths)
    if not given:
        raise UsageError(f"predict {first}: no image given after the model")
    images: list[Path] = []
    for p in map(Path, given):
        if p.is_dir():
            found = image_files(p)
            if not found:
                raise UsageError(f"{p}: no image files in this folder ({', '.join(sorted(IMAGE_SUFFIXES))})")
            images += found
        else:
            images.append(p)
    return model, images


def _print_predictions(rows: list[dict], as_json: bool) -> None:
    """`predict --csv` (file, class, probability, top as 'class p; ...', error) or `--json` on stdout."""
    import csv
    import json

    if as_json:
        out = [
            {"file": r["file"], "error": r["error"]}
            if "error" in r
            else {
                "file": r["file"],
                "class": r["top"][0][0],
                "probability": r["top"][0][1],
                "top": [{"class": c, "probability": p} for c, p in r["top"]],
            }
            for r in rows
        ]
        print(json.dumps(out, indent=1, ensure_ascii=False))
        return
    w = csv.writer(sys.stdout, lineterminator="\n")
    w.writerow(["file", "class", "probability", "top", "error"])
    for r in rows:
        if "error" in r:
            w.writerow([r["file"], "", "", "", r["error"]])
        else:
            top = "; ".join(f"{c} {p:.4f}" for c, p in r["top"])
            w.writerow([r["file"], r["top"][0][0], f"{r['top'][0][1]:.4f}", top, ""])


def _predictor(model: Path, tta: bool) -> tuple[Callable, list[str]]:
    """(uint8 images (N, 3, 64, 64) -> calibrated probabilities (N, classes), class names) for a model path."""
    from .model.card import is_model_folder
    from .model.onnx_runner import OnnxClassifier, folder_classifier

    if model.suffix.lower() == ".onnx":
        if tta:
            raise UsageError("--tta does not apply to an .onnx file: export it with 'heritagelens export --tta'")
        graph = OnnxClassifier(model)  # its temperature travels in the file
        return graph.probabilities, graph.classes
    if not tta and is_model_folder(model) and (graph := folder_classifier(model)):
        return graph.probabilities, graph.classes
    import torch

    from .model.checkpoint import load_model, temperature
    from .model.inference import probabilities

    net, classes, ckpt = load_model(model)
    t = temperature(ckpt, tta)  # calibrated probabilities when the checkpoint has a temperature
    return lambda x: probabilities(net, torch.from_numpy(x), t, tta=tta).numpy(), classes


@command(
    "calibrate",
    "fit the temperature of a checkpoint's probabilities (Guo et al. 2017)",
    arg("checkpoint", help="checkpoint file or run folder (its last.pt)"),
    data_flag("model"),
)
def cmd_calibrate(args) -> int:
    """Fit the checkpoint's temperature on its validation split and store it in the checkpoint."""
    from .jobs.evaluation import calibrate_checkpoint
    from .model.checkpoint import checkpoint_file

    writable_folder(checkpoint_file(args.checkpoint).parent)  # the checkpoint is rewritten beside itself
    cals = calibrate_checkpoint(args.checkpoint, Path(args.data) if args.data else None)
    for c in cals.values():
        print(c.line())
    print(f"written into {checkpoint_file(args.checkpoint)}; predict, evaluate and sort use it")
    return 0


@command(
    "sort",
    "sort a photo folder into OUT/<class>/ (copies; originals untouched)",
    MODEL,
    arg("photos", help="folder of photos (nested folders, any size, format and orientation)"),
    arg("--out", required=True, help="output folder (new, empty, or one an earlier sort wrote)"),
    arg(
        "--min-confidence",
        type=float,
        metavar="P",
        help="below this top-class probability a photo goes to OUT/_uncertain/ (default 0.5)",
    ),
    arg(
        "--target-accuracy",
        type=float,
        metavar="A",
        help="instead of --min-confidence: the threshold at which the model's measured photos were A right (the "
        "bundled model's outside photos, a run's held-out validation photos)",
    ),
    arg("--link", action="store_true", help="hard-link instead of copying (same file system)"),
    arg(
        "--xmp",
        action="store_true",
        help="write each photo's class beside it in an XMP sidecar (keywords photo managers read; merged)",
    ),
    arg(
        "--view",
        choices=["whole", "centre", "multi"],
        default="whole",
        help="how a photo becomes the 64 px input (default: whole, chosen by measurement)",
    ),
    QUIET,
    interrupted="what was sorted is kept: run the same sort command again to finish it",
)
def cmd_sort(args) -> int:
    """Classify every photo under a folder and copy (or hard-link) it into OUT/<class>/ or OUT/_uncertain/."""
    from .sort.sorter import sort_photos

    args.checkpoint = _model(args)
    s = sort_photos(
        args.checkpoint,
        args.photos,
        args.out,
        args.min_confidence,
        args.link,
        args.view,
        progress=not args.quiet,
        target_accuracy=args.target_accuracy,
        xmp=args.xmp,
    )
    print(s.text())
    if s.sorted == 0 and s.skipped == 0:
        raise UsageError(f"{args.photos}: none of the {s.unreadable} file(s) is an image that could be read")
    return 0


@command(
    "learn",
    "fine-tune a sort's model on the photos a person filed, and sort the unsure ones again with it",
    arg("sort", help="a folder 'heritagelens sort' wrote, reviewed on the Review tab of 'heritagelens serve'"),
    arg("--model-out", metavar="DIR", help="the new model folder (default: beside the old model, <name>-learned-K)"),
    arg("--min-confidence", type=float, metavar="P", help="threshold of the new sort (default: the sort's own)"),
    arg("--no-resort", action="store_true", help="write the new model only; leave the sort as it is"),
    arg("--set", action="append", metavar="train.KEY=VALUE", help="a train.* setting over the recipe (repeatable)"),
    QUIET,
    interrupted="the sort is as it was before, or as the journal says: run 'heritagelens learn' again",
)
def cmd_learn(args) -> int:
    """Learn from a person's review of a sort (see `heritagelens.jobs.learn`)."""
    from .jobs.learn import learn

    sets = _settings(args, "learn", ("train.",))
    result = learn(args.sort, args.model_out, sets, not args.no_resort, args.min_confidence, not args.quiet)
    print(result.text())
    return 0


@command(
    "export",
    "the model as an ONNX file for onnxruntime, checked against PyTorch",
    MODEL,
    arg("--format", choices=["onnx"], default="onnx", help="file format (default: onnx, read by onnxruntime)"),
    arg("--out", help="output file (default: model.onnx beside the checkpoint)"),
    arg("--tta", action="store_true", help="average the test-time views inside the graph"),
    data_flag("model", "checking the export"),
    arg("--tolerance", type=float, default=1e-4, help="largest logit difference accepted"),
)
def cmd_export(args) -> int:
    """The model as an ONNX file, checked under onnxruntime against PyTorch before it is written."""
    _need_extra(*EXPORT_EXTRA)
    from .files import atomic_write_bytes
    from .model.checkpoint import load_model, temperature
    from .model.export import checked_onnx
    from .progress import say

    ckpt = _model(args)
    model, classes, checkpoint = load_model(ckpt)
    out = Path(args.out) if args.out else _beside(args, ckpt) / "model.onnx"
    if out.is_dir():
        raise UsageError(f"{out}: is a folder; give the file to write, such as {out / 'model.onnx'}")
    writable_folder(out.parent)
    say(f"export: {ckpt} to {out}, then checked against PyTorch on a few hundred images")
    blob, diff, what = checked_onnx(
        model,
        classes,
        checkpoint,
        tta=args.tta,
        temperature=temperature(checkpoint, args.tta),
        source=str(ckpt),
        root=args.data,
        tolerance=args.tolerance,
        name=out,
    )
    atomic_write_bytes(blob, out)
    tta = ", TTA in the graph" if args.tta else ""
    print(f"written: {out} ({len(blob) / 1e6:.1f} MB, {len(classes)} classes{tta})")
    print(f"checked on {what}: largest logit difference from PyTorch {diff:.2e} (limit {args.tolerance})")
    return 0


EXPORT_EXTRA = ("export", "ONNX export and .onnx files", ["onnx", "onnxruntime", "onnxscript"])


def _need_extra(extra: str, what: str, modules: list[str]) -> None:
    """One line naming the pip extra when `what` needs modules that are not installed."""
    import importlib.util

    if any(importlib.util.find_spec(m) is None for m in modules):
        raise UsageError(f"{what} needs the {extra} extra: pip install 'heritagelens[{extra}]'")


@command("layers", "each layer's name, output shape and parameter count", MODEL)
def cmd_layers(args) -> int:
    from .model.checkpoint import load_model
    from .model.network import conv_layer_names, layer_table

    model, classes, ckpt = load_model(_model(args))
    rows = layer_table(model)
    print(f"{'layer':<22}{'type':<20}{'output shape':<18}{'params':>10}")
    for name, kind, shape, n in rows:
        print(f"{name:<22}{kind:<20}{str(tuple(shape)):<18}{n:>10,}")
    print(f"total parameters: {sum(p.numel() for p in model.parameters()):,}; classes: {', '.join(classes)}")
    print(f"conv layers (what deconv --layer takes): {', '.join(conv_layer_names(model))}")
    return 0


@command(
    "deconv",
    "deconvnet projections (Zeiler & Fergus 2014)",
    MODEL,
    arg("--layer", action="append", help="conv layer name (repeatable; default with --image: all)"),
    arg("--channels", type=int, nargs="+", help="channels to show (default: the strongest)"),
    arg("--image", help="project the strongest channels of this image (a folder: of every image under it)"),
    arg("--target", help="class for the comparison maps with --image (default: the predicted one)"),
    arg("--top9", action="store_true", help="figure 2: top-9 train images per channel, projected"),
    arg("--evolution", action="store_true", help="figure 4: a run's snapshots, strongest projections"),
    data_flag("model", "--top9"),
    OUT_BESIDE,
    FORCE,
)
def cmd_deconv(args) -> int:
    """Deconvnet figures: figure-2 grids over the train split (--top9) or the projections of one image (--image)."""
    from .explain.deconvnet import check_channels, layers_up_to
    from .files import refuse_existing
    from .jobs.deconv import (
        INDEX,
        image_view_paths,
        top9_path,
        write_evolution,
        write_image_view,
        write_image_views,
        write_top9,
    )
    from .model.checkpoint import load_model, run_folder
    from .model.network import conv_layer_names

    ckpt = _model(args)
    model, _, _ = load_model(ckpt)
    out = writable_folder(_beside(args, ckpt))
    layers = args.layer or []
    for layer in layers or conv_layer_names(model):
        layers_up_to(model, layer)  # an unknown name fails now, listing the valid ones
        if args.channels:  # and a channel the layer lacks, before the scan over the dataset
            check_channels(args.channels, getattr(model.features, layer).out_channels, layer)
    if sum([args.top9, bool(args.image), args.evolution]) != 1:
        raise UsageError(
            "deconv needs exactly one of --top9 (with --layer), --evolution (with --layer) or --image PATH"
        )
    if args.evolution:
        if len(layers) != 1:
            raise UsageError("deconv --evolution needs one --layer NAME")
        refuse_existing([out / f"deconv-evolution-{layers[0]}.png"], args.force)
        written = [write_evolution(run_folder(ckpt), layers[0], out, args.channels, args.data)]
    elif args.top9:
        if not layers:
            raise UsageError("deconv --top9 needs --layer NAME (see 'heritagelens layers')")
        refuse_existing([top9_path(out, layer, args.channels) for layer in layers], args.force)
        written = write_top9(ckpt, layers, out, args.channels, args.data)
    elif Path(args.image).is_dir():
        from .data.images import IMAGE_SUFFIXES, image_files

        photos = image_files(args.image)
        if not photos:
            raise UsageError(f"{args.image}: no image files in this folder ({', '.join(sorted(IMAGE_SUFFIXES))})")
        refuse_existing([p for f in photos for p in image_view_paths(out, f)] + [out / INDEX], args.force)
        index = write_image_views(ckpt, photos, out, layers or None, args.channels, args.target)
        print(f"written: {index} (one row per photo: its class, probability and figures)")
        return 0
    else:
        refuse_existing(image_view_paths(out, args.image), args.force)
        written = write_image_view(ckpt, args.image, out, layers or None, args.channels, args.target)
    for w in written:
        print(f"written: {w} and {w.with_suffix('.json').name}")
    return 0


@command(
    "dream",
    "generate images of a class from the model (activation maximization)",
    MODEL,
    arg("--class", dest="class_name", help="class name (see 'heritagelens layers')"),
    arg("--all", action="store_true", help="every class: the gallery"),
    arg("--channel", help="LAYER:C[,C...]: maximize these channels of a conv layer instead of a class"),
    arg("--unit", action="store_true", help="with --channel: the one neuron at the map's centre"),
    arg("--from", dest="start", metavar="IMAGE", help="start from this image instead of noise"),
    arg("--preset", default="default", help="default, naive, fourier or maco (heritagelens.dream)"),
    arg("--set", action="append", metavar="SECTION.KEY=VALUE", help="a dream.* knob, or gallery.judge_overrides"),
    arg("--samples", type=int, default=4, help="images per class or channel (default: 4)"),
    arg("--seed", type=seed_number, default=0, help="seed of the starting noise and transforms (default: 0)"),
    data_flag("model", "image statistics and scores"),
    OUT_BESIDE,
    FORCE,
    JUDGES_DIR,
    arg("--score", action=argparse.BooleanOptionalAction, default=True, help="score with the judges"),
    arg("--quiet", action="store_true", help="no progress bar while judges train"),
)
def cmd_dream(args) -> int:
    """Images by activation maximization: of one class (--class) or all of them (--all), scored by the judges; or of
    channels of a layer (--channel LAYER:C[,C...], --unit for the centre neuron)."""
    from .config import Config
    from .dream import dream_preset
    from .files import refuse_existing
    from .jobs.gallery import dream_stem, feature_dream_path, write_dream, write_feature_dream

    if sum(map(bool, (args.class_name, args.all, args.channel))) != 1:
        raise UsageError("dream needs exactly one of --class NAME, --all or --channel LAYER:C")
    ckpt = _model(args)
    out = writable_folder(_beside(args, ckpt))
    names = [args.class_name] if args.class_name else None
    sets = _settings(args, "dream", ("dream.", "gallery.judge_overrides="))
    cfg = Config(dream=dream_preset(args.preset)).override(sets)
    shared = (out, cfg.dream, args.preset, args.samples, args.seed, args.data)  # where, how, how many, on what
    if args.channel:
        layer, _, cs = args.channel.partition(":")
        try:
            channels = [int(c) for c in cs.split(",")]
        except ValueError:
            raise UsageError(f"--channel wants LAYER:C[,C...] such as conv4_2:3,17, not '{args.channel}'") from None
        refuse_existing([feature_dream_path(out, args.preset, layer, channels, args.unit)], args.force)
        written = write_feature_dream(ckpt, layer, channels, *shared, centre_unit=args.unit, init_image=args.start)
        print(f"written: {written} and {written.with_suffix('.json').name}")
        return 0
    stem = dream_stem(out, args.preset, names)
    refuse_existing([stem.with_name(stem.name + e) for e in (".png", ".json")], args.force)
    made = write_dream(
        ckpt,
        names,
        *shared,
        score=args.score,
        judges_dir=args.judges,
        judge_extra=cfg.gallery.judge_overrides,
        init_image=args.start,
        progress=not args.quiet,
    )
    if made.text:
        print(made.text + "\n")
    png = made.png
    print(f"written: {png}, {png.with_suffix('.json').name} and the images in {png.with_suffix('')}")
    return 0


@command(
    "dream-score",
    "score a folder of class images (<class>/*.png or <class>-N.png)",
    arg("folder", help="folder of images: <class>/*.png or <class>-N.png"),
    data_flag(),
    JUDGES_DIR,
    arg("--seed", type=seed_number, default=0, help="which real validation images form the ceiling"),
    arg("--json", help="also write the scores to this JSON file"),
    arg("--set", action="append", metavar="SECTION.KEY=VALUE", help="data.* or gallery.judge_overrides"),
)
def cmd_dream_score(args) -> int:
    """Recognisability, naturalness and diversity of a folder of images, beside real validation images."""
    from .config import Config
    from .files import atomic_write_json
    from .jobs.gallery import score_folder

    if args.json:
        writable_file(Path(args.json))
    sets = _settings(args, "dream-score", ("data.", "gallery.judge_overrides="))
    cfg = Config().override([*sets, f"data.root={_root(args).resolve()}"])
    report = score_folder(args.folder, cfg.data, args.judges, args.seed, cfg.gallery.judge_overrides)
    print(report.pop("text"))
    if args.json:
        atomic_write_json(report, args.json)
        print(f"written: {args.json}")
    return 0


@command(
    "tune",
    "hyperparameter and architecture search (Optuna)",
    recipe_flags("the recipe the search starts from", "fix a value (not searched)", "training seed of every trial"),
    arg("--trials", type=int, help="finished trials the study should hold (a resumed study runs the rest)"),
    arg("--storage", help="SQLAlchemy URL of the study database (default: sqlite:///runs/tune.db)"),
    arg("--study", default="heritagelens", help="study name (workers with the same name share it)"),
    arg("--timeout", type=float, help="stop starting trials after this many seconds"),
    arg("--trial-minutes", type=float, metavar="M", help="prune, before it starts, a trial estimated to train longer"),
    arg(
        "--objective",
        choices=["accuracy", "accuracy-per-minute"],
        default="accuracy",
        help="what each trial maximizes on the validation split (default: accuracy)",
    ),
    arg("--runs", default="runs", help="folder for the default database and the --show figures"),
    arg("--no-base", action="store_true", help="do not start a new study with the base recipe itself"),
    arg("--show", action="store_true", help="best trials, importances, plots and the best config"),
    interrupted="finished trials are kept in the study: run the same command again to add more",
)
def cmd_tune(args) -> int:
    """An Optuna study over the recipe and the architecture family (--show: its best trials and plots)."""
    from .jobs.tune import default_storage, open_study, summary, tune, write_study

    if not args.show and not args.trials:
        raise UsageError("tune needs --trials N (the study's total of finished trials) or --show")
    if not args.storage or args.show:  # the default database and the --show figures go there
        runs = Path(args.runs)
        if runs.exists() and not runs.is_dir():
            raise UsageError(f"{runs}: --runs names a file, not a folder")
        writable_folder(runs)
    storage = args.storage or default_storage(args.runs)
    if args.show:
        study = open_study(storage, args.study, create=False)
        print(summary(study))
        for f in write_study(study, Path(args.runs)):
            print(f"written: {f}")
        return 0
    cfg = _config(args)
    print(f"study '{args.study}' in {storage}; data: {cfg.data.root}", flush=True)
    study = tune(
        cfg,
        args.set or [],
        storage,
        args.study,
        args.trials,
        args.timeout,
        args.objective,
        not args.quiet,
        args.trial_minutes,
        not args.no_base,
    )
    print(summary(study))
    return 0


@command(
    "run",
    "the main job: train, evaluate and write the run folder",
    recipe_flags(),
    TRAINING,
    interrupted="its training continues with 'heritagelens train --resume RUN' (the later stages need a new run)",
)
def cmd_run(args) -> int:
    """The main job: train with the chosen recipe, evaluate on validation (and test when present), write the run."""
    from .jobs.pipeline import main_job

    cfg = _config(args)
    run = writable_folder(_run_dir(args))
    print(f"data: {cfg.data.root}\nrun folder: {run}")
    print(main_job(cfg, run, progress=not args.quiet).text())
    return 0


@command(
    "serve",
    "the explorer web app for a model (Gradio)",
    MODEL,
    arg("--port", type=int, default=7860, help="port to listen on (default: 7860)"),
    arg("--host", default="127.0.0.1", help="address to bind (default: this machine only)"),
    data_flag("model", "top-9 images and class images"),
)
def cmd_serve(args) -> int:
    """The explorer web app for a checkpoint, on 127.0.0.1 unless --host says otherwise."""
    _need_extra("web", "the web app", ["gradio"])
    from .webapp import address_problem, serve

    problem = address_problem(args.host, args.port)
    if problem:
        raise UsageError(problem)
    from .progress import say

    model = _model(args)
    say(f"serve: loading {model} and its training images, then http://{args.host}:{args.port}")
    serve(model, args.data, args.host, args.port)
    return 0


@command(
    "report",
    "write a run folder's self-contained HTML report",
    arg("run", help="run folder"),
    arg("--out", help="HTML file (default: RUN/report.html)"),
    data_flag("model", "mistake thumbnails"),
)
def cmd_report(args) -> int:
    """One self-contained HTML page for a run folder; what the folder lacks is listed on it."""
    from .jobs.report import write_report
    from .progress import say

    run = Path(args.run)
    say(f"report: {run}, its figures and the photos of its mistakes, into one page")
    out, missing = write_report(run, args.out, args.data)
    for m in missing:
        print(f"heritagelens: warning: {run}: {m}", file=sys.stderr)
    print(f"report: {out}" + (f" ({len(missing)} missing piece(s) listed in it)" if missing else ""))
    return 0


# ------------------------------------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    """The parser of every registered command (`COMMANDS`)."""
    p = argparse.ArgumentParser(prog="heritagelens", description="Recognise architectural heritage elements.")
    p.add_argument("--version", action="version", version=f"heritagelens {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    groups: dict[str, argparse._SubParsersAction] = {}
    for name, c in COMMANDS.items():
        group, _, leaf = name.rpartition(" ")
        if group and group not in groups:
            parent = sub.add_parser(group, help=GROUPS[group])
            groups[group] = parent.add_subparsers(dest=f"{group}_command", required=True)
        sp = (groups[group] if group else sub).add_parser(leaf, help=c.help, epilog=f"example: {EXAMPLES[name]}")
        for flags, options in c.arguments:
            sp.add_argument(*flags, **options)
        sp.set_defaults(command_name=name)
    return p


def parse(argv: list[str] | None) -> argparse.Namespace:
    """The command line, before any heavy import (`--help` loads neither torch nor numpy). A command whose
    positionals are a list (`predict`'s paths) takes options anywhere among them."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        if not isinstance(getattr(args, "paths", None), list) or any(e.startswith("-") for e in extra):
            parser.parse_args(argv)  # argparse's own one-line error
        args.paths += extra
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    from .progress import show

    show(bars=not getattr(args, "quiet", False))  # what each slow step does, on stderr
    try:
        if launched_size() > 1 and args.command_name != "train":
            raise UsageError("only 'train' runs under torchrun; tune in parallel by starting workers on one --storage")
        return COMMANDS[args.command_name].func(args)
    except HeritageLensError as e:
        print(f"heritagelens: error: {e}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        advice = COMMANDS[args.command_name].interrupted
        print(f"heritagelens: interrupted{'; ' + advice if advice else ''}", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader (`| head`) has gone: stop quietly, as `ls | head` does
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nothing left to flush at exit
        return 141


if __name__ == "__main__":
    sys.exit(main())
