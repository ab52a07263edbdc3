"""The `heritagelens` command: one plain function per subcommand, errors as one line and a non-zero exit."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from . import __version__
from .config import SPLIT_NAMES

KAGGLE = "ikobzev/architectural-heritage-elements-image64-dataset"
EXIT_ERROR = 2


class UsageError(Exception):
    """Bad arguments or missing data, reported as one line."""


def default_data_root() -> Path:
    """$AHE_DATA, else ./data/ahe64, else ../shared/data/ahe64; one clear message when none exists."""
    env = os.environ.get("AHE_DATA")
    if env:
        return Path(env)
    for p in (Path("data/ahe64"), Path("../shared/data/ahe64")):
        if (p / "train").is_dir():
            return p
    raise UsageError(
        "no AHE64 data found: run 'heritagelens data fetch' (Kaggle: " + KAGGLE + ", or --source URL of an archive) "
        "to get it into ./data/ahe64, or set AHE_DATA=/path/to/ahe64, or pass --data"
    )


def _root(args) -> Path:
    return Path(args.data) if getattr(args, "data", None) else default_data_root()


def _config(args):
    from .config import preset

    cfg = preset(args.preset).override(args.set or [])
    cfg.data.root = str(_root(args).resolve())  # absolute, so --resume and evaluate work from any folder
    if getattr(args, "seed", None) is not None:
        cfg.train.seed = args.seed
    if getattr(args, "epochs", None) is not None:
        cfg = cfg.override([f"train.epochs={args.epochs}"])
    if getattr(args, "minutes", None) is not None:
        cfg = cfg.override([f"train.minutes={args.minutes}"])
    if getattr(args, "device", None):
        cfg.train.device = args.device
    return cfg


def _run_dir(args) -> Path:
    return Path(args.out) if args.out else Path("runs") / time.strftime("%Y%m%d-%H%M%S")


# ----------------------------------------------------------------------------------------------------- commands


def cmd_data_check(args) -> int:
    from .data import check

    r = check(_root(args))
    splits = list(r.counts)
    print(f"data root: {r.root}")
    print(f"{'class':<18}" + "".join(f"{s:>8}" for s in splits))
    for c in sorted({c for counts in r.counts.values() for c in counts}):
        print(f"{c:<18}" + "".join(f"{r.counts[s].get(c, 0):>8}" for s in splits))
    print(f"{'total':<18}" + "".join(f"{sum(r.counts[s].values()):>8}" for s in splits))
    print("sizes: " + ", ".join(f"{k} ({v})" for k, v in r.sizes.most_common(8)))
    print("modes: " + ", ".join(f"{k} ({v})" for k, v in r.modes.most_common()))
    print(f"unreadable files: {len(r.bad)}")
    for f, problem in r.bad:
        print(f"  {f}: {problem}")
    print(f"exact duplicate groups: {len(r.duplicates)} ({len(r.cross_class)} filed under more than one class)")
    for g in r.duplicates:
        print(("  CROSS-CLASS " if g in r.cross_class else "  ") + "  ==  ".join(g))
    for p in r.ignored:
        print(f"ignored: {p}")
    for p in r.problems:
        print(f"problem: {p}")
    if not r.usable:
        print(f"heritagelens: error: {r.root}: layout unusable ({len(r.problems)} problem(s) above)", file=sys.stderr)
        return EXIT_ERROR
    return 0


def cmd_data_fetch(args) -> int:
    """Download the dataset (Kaggle or an archive URL), lay it out as DEST/train and DEST/test, check it."""
    from .fetch import fetch

    root = fetch(args.source, Path(args.dest), args.sha256, progress=not args.quiet, force=args.force)
    print(f"dataset ready in {root}; 'heritagelens data check {root}' says:")
    args.data = str(root)
    status = cmd_data_check(args)
    if status == 0 and root.resolve() != Path("data/ahe64").resolve():
        print(f"use it with --data {root} or AHE_DATA={root}")
    return status


def cmd_train(args) -> int:
    """Train a model; under `torchrun --nproc-per-node N` the N processes train it together (DDP)."""
    from .distributed import close_world, launched_size
    from .io import writable_folder
    from .run import train_run

    main = int(os.environ.get("RANK", "0")) == 0
    if args.resume:
        run = Path(args.resume)
        if not (run / "last.pt").exists():
            raise UsageError(f"{run}: no last.pt to resume from")
    else:
        cfg = _config(args)
        run = _run_dir(args) if args.out or launched_size() == 1 else None
        if run is None:
            raise UsageError("under torchrun, train needs --out (every process must name the same run folder)")
        if (run / "last.pt").exists():
            raise UsageError(f"{run}: already holds a run; use --resume {run} or another --out")
        if main:
            print(cfg.to_json())
    if main:
        writable_folder(run)
    try:
        train_run(None if args.resume else cfg, run, resume=bool(args.resume), progress=not args.quiet)
    except BaseException:
        close_world(ok=False)
        raise
    close_world()
    if main:
        print(f"run folder: {run}")
    return 0


def cmd_evaluate(args) -> int:
    from .checkpoint import run_folder
    from .io import writable_folder
    from .run import evaluate_checkpoint, validation_splits

    ckpt = Path(args.checkpoint)
    out = writable_folder(Path(args.out) if args.out else run_folder(ckpt))
    root = Path(args.data) if args.data else None
    sets = args.set or []
    if any(not a.startswith("data.") for a in sets):
        raise UsageError("evaluate --set takes data.* settings only: the model and its recipe are the checkpoint's")
    splits = validation_splits(ckpt, root, sets) if args.split == "val" else [args.split]  # source beside val
    results = [evaluate_checkpoint(ckpt, s, root=root, tta=args.tta, out_dir=out, data_overrides=sets) for s in splits]
    for r in results:
        print(f"== {r.split} ({SPLIT_NAMES[r.split]})")
        print((out / f"eval-{r.split}.txt").read_text())
        print(f"written: {out / f'eval-{r.split}.json'}, {out / f'confusion-{r.split}.png'}")
    if len(results) > 1:
        print("  ".join(f"accuracy on {r.name}: {r.accuracy:.4f}" for r in results))
    return 0


def cmd_predict(args) -> int:
    """Top-k classes per image, from a checkpoint (PyTorch) or an exported .onnx file (onnxruntime)."""
    import torch

    from .data import DataError, decode

    if args.top < 1:
        raise UsageError(f"--top {args.top}: must be at least 1 (classes to show per image)")

    if str(args.checkpoint).lower().endswith(".onnx"):
        _need_extra(*EXPORT_EXTRA)
        from .export import OnnxClassifier

        if args.tta:
            raise UsageError("--tta does not apply to an .onnx file: export it with 'heritagelens export --tta'")
        onnx_model = OnnxClassifier(args.checkpoint)
        t = onnx_model.temperature  # calibrated probabilities when the exported checkpoint was calibrated
        classes, logits = onnx_model.classes, lambda x: torch.from_numpy(onnx_model.logits(x)) / t
    else:
        from .checkpoint import load_model, temperature
        from .train import predict_logits

        model, classes, ckpt = load_model(args.checkpoint)
        t = temperature(ckpt, args.tta) or 1.0  # calibrated probabilities when the checkpoint has a temperature
        logits = lambda x: predict_logits(model, x, tta=args.tta) / t  # noqa: E731
    failed = 0
    for path in args.images:
        try:
            x = torch.from_numpy(decode(path))[None]
        except DataError as e:
            print(f"heritagelens: error: {e}", file=sys.stderr)
            failed += 1
            continue
        probs = torch.softmax(logits(x), 1)[0]
        top = probs.topk(min(args.top, len(classes)))
        print(
            f"{path}: " + ", ".join(f"{classes[i]} {p:.3f}" for p, i in zip(top.values.tolist(), top.indices.tolist()))
        )
    return EXIT_ERROR if failed else 0


def cmd_calibrate(args) -> int:
    """Fit the checkpoint's temperature on its validation split and store it in the checkpoint."""
    from .checkpoint import checkpoint_file
    from .io import writable_folder
    from .run import calibrate_checkpoint

    writable_folder(checkpoint_file(args.checkpoint).parent)  # the checkpoint is rewritten beside itself
    cals = calibrate_checkpoint(args.checkpoint, Path(args.data) if args.data else None)
    for c in cals.values():
        print(c.line())
    print(f"written into {checkpoint_file(args.checkpoint)}; predict, evaluate and sort use it")
    return 0


def cmd_sort(args) -> int:
    """Classify every photo under a folder and copy (or hard-link) it into OUT/<class>/ or OUT/_uncertain/."""
    from .sort import CSV_NAME, UNCERTAIN, sort_photos

    s = sort_photos(args.checkpoint, args.photos, args.out, args.min_confidence, args.link, args.view,
                    progress=not args.quiet)  # fmt: skip
    print(f"sorted {s.sorted} photo(s) in {s.seconds:.1f} s ({s.images_per_s:.0f} images/s) into {args.out}")
    for name, n in sorted(s.per_class.items(), key=lambda kv: (kv[0] == UNCERTAIN, kv[0])):
        note = f" (top-class probability below {args.min_confidence})" if name == UNCERTAIN else ""
        print(f"  {name:<18}{n:>7}{note}")
    if s.skipped:
        print(f"skipped {s.skipped} photo(s) sorted by an earlier run")
    if s.moved:
        print(f"moved {s.moved} earlier copies to the folders --min-confidence {args.min_confidence} gives them")
    if s.unreadable:
        print(f"{s.unreadable} file(s) could not be read: listed with the reason in {Path(args.out) / CSV_NAME}")
    print(f"every photo, its class, probability and top 3: {Path(args.out) / CSV_NAME}")
    if not s.calibrated:
        print(f"note: {args.checkpoint} is not calibrated; 'heritagelens calibrate' makes its probabilities, and so "
              "--min-confidence, mean what they say")  # fmt: skip
    if s.sorted == 0 and s.skipped == 0:
        raise UsageError(f"{args.photos}: none of the {s.unreadable} file(s) is an image that could be read")
    return 0


def cmd_export(args) -> int:
    """The model as an ONNX file, checked under onnxruntime against PyTorch before it is written."""
    _need_extra(*EXPORT_EXTRA)
    from .checkpoint import load_model, run_folder, temperature
    from .export import ExportError, OnnxClassifier, check_images, max_difference, to_onnx
    from .io import atomic_write_bytes, writable_folder

    ckpt = Path(args.checkpoint)
    model, classes, checkpoint = load_model(ckpt)
    out = Path(args.out) if args.out else run_folder(ckpt) / "model.onnx"
    if out.is_dir():
        raise UsageError(f"{out}: is a folder; give the file to write, such as {out / 'model.onnx'}")
    writable_folder(out.parent)
    blob = to_onnx(model, classes, tta=args.tta, source=str(ckpt), temperature=temperature(checkpoint, args.tta))
    images, what = check_images(checkpoint, args.data)
    diff = max_difference(model, OnnxClassifier(out, blob), images)
    if not diff <= args.tolerance:
        raise ExportError(f"{out}: onnxruntime's logits differ from PyTorch's by {diff:.2e} (limit {args.tolerance})")
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


def cmd_layers(args) -> int:
    from .checkpoint import load_model
    from .models import layer_table

    model, classes, ckpt = load_model(args.checkpoint)
    rows = layer_table(model)
    print(f"{'layer':<22}{'type':<20}{'output shape':<18}{'params':>10}")
    for name, kind, shape, n in rows:
        print(f"{name:<22}{kind:<20}{str(tuple(shape)):<18}{n:>10,}")
    print(f"total parameters: {sum(p.numel() for p in model.parameters()):,}; classes: {', '.join(classes)}")
    return 0


def cmd_deconv(args) -> int:
    """Deconvnet figures: figure-2 grids over the train split (--top9) or the projections of one image (--image)."""
    from .checkpoint import load_model, run_folder
    from .deconvnet import layers_up_to
    from .io import writable_folder
    from .visualize import write_evolution, write_image_view, write_top9

    ckpt = Path(args.checkpoint)
    model, _, _ = load_model(ckpt)
    out = writable_folder(Path(args.out) if args.out else run_folder(ckpt))
    layers = args.layer or []
    for layer in layers:
        layers_up_to(model, layer)  # an unknown name fails now, listing the valid ones
    if sum([args.top9, bool(args.image), args.evolution]) != 1:
        raise UsageError(
            "deconv needs exactly one of --top9 (with --layer), --evolution (with --layer) or --image PATH"
        )
    if args.evolution:
        if len(layers) != 1:
            raise UsageError("deconv --evolution needs one --layer NAME")
        written = [write_evolution(run_folder(ckpt), layers[0], out, args.channels, args.data)]
    elif args.top9:
        if not layers:
            raise UsageError("deconv --top9 needs --layer NAME (see 'heritagelens layers')")
        written = write_top9(ckpt, layers, out, args.channels, args.data)
    else:
        written = write_image_view(ckpt, args.image, out, layers or None, args.channels, args.target)
    for w in written:
        print(f"written: {w} and {w.with_suffix('.json').name}")
    return 0


def cmd_dream(args) -> int:
    """Images by activation maximization: of one class (--class) or all of them (--all), scored by the judges; or of
    channels of a layer (--channel LAYER:C[,C...], --unit for the centre neuron)."""
    from .checkpoint import run_folder
    from .config import Config
    from .dream import dream_preset
    from .visualize import write_dream, write_feature_dream

    if sum(map(bool, (args.class_name, args.all, args.channel))) != 1:
        raise UsageError("dream needs exactly one of --class NAME, --all or --channel LAYER:C")
    ckpt = Path(args.checkpoint)
    out = Path(args.out) if args.out else run_folder(ckpt)
    cfg = Config(dream=dream_preset(args.preset)).override(args.set or [])
    if args.channel:
        layer, _, cs = args.channel.partition(":")
        try:
            channels = [int(c) for c in cs.split(",")]
        except ValueError:
            raise UsageError(f"--channel wants LAYER:C[,C...] such as conv4_2:3,17, not '{args.channel}'") from None
        written = write_feature_dream(
            ckpt, layer, channels, out, cfg.dream, args.preset, args.samples, args.seed, args.data,
            centre_unit=args.unit, init_image=args.start,
        )  # fmt: skip
        print(f"written: {written} and {written.with_suffix('.json').name}")
        return 0
    names = [args.class_name] if args.class_name else None
    written = write_dream(
        ckpt, names, out, cfg.dream, args.preset, args.samples, args.seed, args.data, score=args.score,
        judges_dir=args.judges, judge_extra=cfg.gallery.judge_overrides, init_image=args.start, progress=not args.quiet,
    )  # fmt: skip
    if args.score:
        print(written.with_suffix(".txt").read_text())
    print(f"written: {written}, {written.with_suffix('.json').name} and the images in {written.with_suffix('')}")
    return 0


def cmd_dream_score(args) -> int:
    """Recognisability, naturalness and diversity of a folder of images, beside real validation images."""
    from .config import Config
    from .io import atomic_write_json
    from .visualize import score_folder

    cfg = Config().override(args.set or [])
    cfg.data.root = str(_root(args).resolve())
    report = score_folder(args.folder, cfg.data, args.judges, args.seed, cfg.gallery.judge_overrides)
    print(report.pop("text"))
    if args.json:
        atomic_write_json(report, args.json)
        print(f"written: {args.json}")
    return 0


def cmd_tune(args) -> int:
    """An Optuna study over the recipe and the architecture family (--show: its best trials and plots)."""
    from .tune import default_storage, open_study, summary, tune, write_study

    if not args.show and not args.trials:
        raise UsageError("tune needs --trials N (the study's total of finished trials) or --show")
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
        cfg, args.set or [], storage, args.study, args.trials, args.timeout, args.objective, not args.quiet,
        args.trial_minutes, not args.no_base,
    )  # fmt: skip
    print(summary(study))
    return 0


def cmd_run(args) -> int:
    """The main job: train with the chosen recipe, evaluate on validation (and test when present), write the run."""
    from .io import writable_folder
    from .run import main_job

    cfg = _config(args)
    run = writable_folder(_run_dir(args))
    print(f"data: {cfg.data.root}\nrun folder: {run}")
    summary = main_job(cfg, run, progress=not args.quiet)
    for split in summary["splits"]:
        print(f"\n== {split} ({SPLIT_NAMES[split]})")
        print((run / f"eval-{split}.txt").read_text())
    print(f"\ndeconvnet figure 2 grids: {', '.join(summary['figures'])}")
    g = summary["gallery"]
    made_by = f"a robust model (val accuracy {g['robust_val_accuracy']:.1%})" if g["model"] == "robust" else "the model"
    print(f"\nclass images: {g['figure']}, made by {made_by}")
    if (run / "dream-gallery.txt").exists():
        print((run / "dream-gallery.txt").read_text())
    print(f"training took {summary['train_minutes']:.1f} min; run folder: {run}")
    print(f"report: {summary['report'] or 'not written (see the warning above)'}")
    return 0


def cmd_serve(args) -> int:
    """The explorer web app for a checkpoint, on 127.0.0.1 unless --host says otherwise."""
    _need_extra("web", "the web app", ["gradio"])
    from .webapp import address_problem, serve

    problem = address_problem(args.host, args.port)
    if problem:
        raise UsageError(problem)
    serve(args.checkpoint, args.data, args.host, args.port)
    return 0


def cmd_report(args) -> int:
    """One self-contained HTML page for a run folder; what the folder lacks is listed on it."""
    from .report import write_report

    run = Path(args.run)
    out, missing = write_report(run, args.out, args.data)
    for m in missing:
        print(f"heritagelens: warning: {run}: {m}", file=sys.stderr)
    print(f"report: {out}" + (f" ({len(missing)} missing piece(s) listed in it)" if missing else ""))
    return 0


# ------------------------------------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="heritagelens", description="Recognise architectural heritage elements.")
    p.add_argument("--version", action="version", version=f"heritagelens {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    def recipe(sp):
        sp.add_argument("--data", help="dataset root (default: $AHE_DATA, ./data/ahe64, ../shared/data/ahe64)")
        sp.add_argument("--preset", default="default", help="named recipe (see heritagelens.config.PRESETS)")
        sp.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE", help="override a config value")
        sp.add_argument("--seed", type=int)
        sp.add_argument("--epochs", type=int)
        sp.add_argument("--minutes", type=float, help="time budget of the training: as many epochs as fit here")
        sp.add_argument("--out", help="run folder (default: runs/<date-time>)")
        sp.add_argument("--quiet", action="store_true", help="no progress bar")
        sp.add_argument("--device", help="auto (CUDA when present, the default), cpu, cuda or cuda:K")

    d = sub.add_parser("data", help="inspect a dataset").add_subparsers(dest="data_command", required=True)
    c = d.add_parser("check", help="counts, sizes, modes, unreadable files and duplicates")
    c.add_argument("data", nargs="?", help="dataset root")
    c.set_defaults(func=cmd_data_check)
    f = d.add_parser("fetch", help="download AHE64 (Kaggle or an archive URL) and lay it out as DEST/train, DEST/test")
    f.add_argument("--source", default="kaggle", help="'kaggle' (needs your Kaggle API token), a URL or an archive")
    f.add_argument("--dest", default="data/ahe64", help="dataset folder to create (default: data/ahe64)")
    f.add_argument("--sha256", help="expected SHA-256 of the archive")
    f.add_argument("--force", action="store_true", help="replace the splits already in DEST")
    f.add_argument("--quiet", action="store_true", help="no progress bar")
    f.set_defaults(func=cmd_data_fetch)

    t = sub.add_parser("train", help="train a model into a run folder")
    recipe(t)
    t.add_argument("--resume", metavar="RUN", help="continue the interrupted run in this folder")
    t.set_defaults(func=cmd_train)

    tu = sub.add_parser("tune", help="hyperparameter and architecture search (Optuna)")
    tu.add_argument("--data", help="dataset root (default: $AHE_DATA, ./data/ahe64, ../shared/data/ahe64)")
    tu.add_argument("--preset", default="default", help="the recipe the search starts from")
    tu.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE", help="fix a value (it is not searched)")
    tu.add_argument("--seed", type=int, help="training seed of every trial")
    tu.add_argument("--quiet", action="store_true", help="no progress bar")
    tu.add_argument("--device", help="auto (CUDA when present, the default), cpu, cuda or cuda:K")
    tu.add_argument("--trials", type=int, help="finished trials the study should hold (a resumed study runs the rest)")
    tu.add_argument("--storage", help="SQLAlchemy URL of the study database (default: sqlite:///runs/tune.db)")
    tu.add_argument("--study", default="heritagelens", help="study name (workers with the same name share it)")
    tu.add_argument("--timeout", type=float, help="stop starting trials after this many seconds")
    tu.add_argument(
        "--trial-minutes", type=float, metavar="M", help="prune, before it starts, a trial estimated to train longer"
    )
    tu.add_argument("--objective", choices=["accuracy", "accuracy-per-minute"], default="accuracy")
    tu.add_argument("--runs", default="runs", help="folder for the default database and the --show figures")
    tu.add_argument("--no-base", action="store_true", help="do not start a new study with the base recipe itself")
    tu.add_argument("--show", action="store_true", help="best trials, importances, plots and the best config")
    tu.set_defaults(func=cmd_tune)

    r = sub.add_parser("run", help="the main job: train, evaluate and write the run folder")
    recipe(r)
    r.set_defaults(func=cmd_run)

    e = sub.add_parser("evaluate", help="metrics of a checkpoint on a split")
    e.add_argument("checkpoint", help="checkpoint file or run folder")
    e.add_argument("--split", choices=["val", "source", "test"], default="val")
    e.add_argument("--data", help="dataset root (default: the one the model was trained on)")
    e.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None, help="test-time augmentation")
    e.add_argument("--out", help="folder for eval JSON and PNG (default: beside the checkpoint)")
    e.add_argument("--set", action="append", metavar="data.KEY=VALUE", help="a data.* setting (data.on_bad_file=stop)")
    e.set_defaults(func=cmd_evaluate)

    pr = sub.add_parser("predict", help="top-k classes of images of any size and format")
    pr.add_argument("checkpoint", help="checkpoint, run folder, or an exported .onnx file")
    pr.add_argument("images", nargs="+")
    pr.add_argument("--top", type=int, default=3)
    pr.add_argument("--tta", action="store_true")
    pr.set_defaults(func=cmd_predict)

    dc = sub.add_parser("deconv", help="deconvnet projections (Zeiler & Fergus 2014)")
    dc.add_argument("checkpoint")
    dc.add_argument("--layer", action="append", help="conv layer name (repeatable; default with --image: all)")
    dc.add_argument("--channels", type=int, nargs="+", help="channels to show (default: the strongest)")
    dc.add_argument("--image", help="project the strongest channels of this image")
    dc.add_argument("--target", help="class for the comparison maps with --image (default: the predicted one)")
    dc.add_argument("--top9", action="store_true", help="figure 2: top-9 train images per channel, projected")
    dc.add_argument("--evolution", action="store_true", help="figure 4: a run's snapshots, strongest projections")
    dc.add_argument("--data", help="dataset root for --top9 (default: the one the model was trained on)")
    dc.add_argument("--out", help="output folder (default: beside the checkpoint)")
    dc.set_defaults(func=cmd_deconv)

    dr = sub.add_parser("dream", help="generate images of a class from the model (activation maximization)")
    dr.add_argument("checkpoint")
    dr.add_argument("--class", dest="class_name", help="class name (see 'heritagelens layers')")
    dr.add_argument("--all", action="store_true", help="every class: the gallery")
    dr.add_argument("--channel", help="LAYER:C[,C...]: maximize these channels of a conv layer instead of a class")
    dr.add_argument("--unit", action="store_true", help="with --channel: the one neuron at the map's centre")
    dr.add_argument("--from", dest="start", metavar="IMAGE", help="start from this image instead of noise")
    dr.add_argument("--preset", default="default", help="default, naive, fourier or maco (heritagelens.dream)")
    dr.add_argument(
        "--set", action="append", metavar="SECTION.KEY=VALUE", help="a dream.* knob, or gallery.judge_overrides"
    )
    dr.add_argument("--samples", type=int, default=4)
    dr.add_argument("--seed", type=int, default=0)
    dr.add_argument("--data", help="dataset root for image statistics and scores (default: the model's)")
    dr.add_argument("--out", help="output folder (default: beside the checkpoint)")
    dr.add_argument("--judges", help="folder of cached judges (default: judges/ in the data cache)")
    dr.add_argument("--score", action=argparse.BooleanOptionalAction, default=True, help="score with the judges")
    dr.add_argument("--quiet", action="store_true", help="no progress bar while judges train")
    dr.set_defaults(func=cmd_dream)

    ds = sub.add_parser("dream-score", help="score a folder of class images (<class>/*.png or <class>-N.png)")
    ds.add_argument("folder")
    ds.add_argument("--data", help="dataset root (default: $AHE_DATA, ./data/ahe64, ../shared/data/ahe64)")
    ds.add_argument("--judges", help="folder of cached judges (default: judges/ in the data cache)")
    ds.add_argument("--seed", type=int, default=0, help="which real validation images form the ceiling")
    ds.add_argument("--json", help="also write the scores to this JSON file")
    ds.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE", help="data.* or gallery.judge_overrides")
    ds.set_defaults(func=cmd_dream_score)

    sv = sub.add_parser("serve", help="the explorer web app for a model (Gradio)")
    sv.add_argument("checkpoint", help="checkpoint file or run folder")
    sv.add_argument("--port", type=int, default=7860)
    sv.add_argument("--host", default="127.0.0.1", help="address to bind (default: this machine only)")
    sv.add_argument("--data", help="dataset root for top-9 images and class images (default: the model's)")
    sv.set_defaults(func=cmd_serve)

    rp = sub.add_parser("report", help="write a run folder's self-contained HTML report")
    rp.add_argument("run", help="run folder")
    rp.add_argument("--out", help="HTML file (default: RUN/report.html)")
    rp.add_argument("--data", help="dataset root for mistake thumbnails (default: the one the run was trained on)")
    rp.set_defaults(func=cmd_report)

    so = sub.add_parser("sort", help="sort a photo folder into OUT/<class>/ (copies; originals untouched)")
    so.add_argument("checkpoint", help="checkpoint file or run folder")
    so.add_argument("photos", help="folder of photos (nested folders, any size, format and orientation)")
    so.add_argument("--out", required=True, help="output folder (new, empty, or one an earlier sort wrote)")
    so.add_argument("--min-confidence", type=float, default=0.5, metavar="P",
                    help="below this top-class probability a photo goes to OUT/_uncertain/ (default 0.5)")  # fmt: skip
    so.add_argument("--link", action="store_true", help="hard-link instead of copying (same file system)")
    so.add_argument("--view", choices=["whole", "centre", "multi"], default="whole",
                    help="how a photo becomes the 64 px input (default: whole, chosen by measurement)")  # fmt: skip
    so.add_argument("--quiet", action="store_true", help="no progress bar")
    so.set_defaults(func=cmd_sort)

    ca = sub.add_parser("calibrate", help="fit the temperature of a checkpoint's probabilities (Guo et al. 2017)")
    ca.add_argument("checkpoint", help="checkpoint file or run folder (its last.pt)")
    ca.add_argument("--data", help="dataset root (default: the one the model was trained on)")
    ca.set_defaults(func=cmd_calibrate)

    ex = sub.add_parser("export", help="the model as an ONNX file for onnxruntime, checked against PyTorch")
    ex.add_argument("checkpoint", help="checkpoint file or run folder")
    ex.add_argument("--format", choices=["onnx"], default="onnx")
    ex.add_argument("--out", help="output file (default: model.onnx beside the checkpoint)")
    ex.add_argument("--tta", action="store_true", help="average the test-time views inside the graph")
    ex.add_argument("--data", help="dataset root whose images check the export (default: the model's)")
    ex.add_argument("--tolerance", type=float, default=1e-4, help="largest logit difference accepted")
    ex.set_defaults(func=cmd_export)

    ly = sub.add_parser("layers", help="each layer's name, output shape and parameter count")
    ly.add_argument("checkpoint")
    ly.set_defaults(func=cmd_layers)
    return p


def main(argv: list[str] | None = None) -> int:
    from .checkpoint import CheckpointError
    from .config import ConfigError
    from .data import DataError
    from .deconvnet import DeconvError
    from .distributed import launched_size
    from .dream import DreamError
    from .export import ExportError
    from .fetch import FetchError
    from .io import WriteError
    from .judges import JudgeError
    from .report import ReportError
    from .sort import SortError
    from .tune import TuneError

    args = build_parser().parse_args(argv)
    try:
        if launched_size() > 1 and args.func is not cmd_train:
            raise UsageError("only 'train' runs under torchrun; tune in parallel by starting workers on one --storage")
        return args.func(args)
    except (
        UsageError,
        DataError,
        CheckpointError,
        ConfigError,
        DeconvError,
        DreamError,
        JudgeError,
        ReportError,
        ExportError,
        FetchError,
        SortError,
        TuneError,
        WriteError,
    ) as e:
        print(f"heritagelens: error: {e}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print(f"heritagelens: interrupted{INTERRUPTED.get(args.func.__name__, '')}", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader (`| head`) has gone: stop quietly, as `ls | head` does
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nothing left to flush at exit
        return 141


INTERRUPTED = {
    "cmd_train": "; continue with 'heritagelens train --resume RUN'",
    "cmd_run": "; its training continues with 'heritagelens train --resume RUN' (the later stages need a new run)",
    "cmd_sort": "; what was sorted is kept: run the same sort command again to finish it",
    "cmd_tune": "; finished trials are kept in the study: run the same command again to add more",
}
"""What to do after Ctrl-C, by command (other commands keep nothing half-done: run them again)."""


if __name__ == "__main__":
    sys.exit(main())
