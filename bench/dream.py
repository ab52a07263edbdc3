"""Class-image quality and speed: every preset on every given model, scored by the judges, beside the real-image
ceiling; and the time of the ten-class gallery (4 samples each).

    python bench/dream.py --model runs/A --model runs/B --presets naive fourier maco default --samples 8
    python bench/dream.py --model runs/B --time-only

Judges are read from the cache (trained first if missing, not timed). Prints one table per model and writes
everything to --out (default bench-dream.json).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from heritagelens.config import Config
from heritagelens.data.split import prepare
from heritagelens.dream import class_images, dream_preset, image_stats
from heritagelens.figures import gallery
from heritagelens.judging.judges import score_sets
from heritagelens.judging.scores import HEADLINE_JUDGE, per_class_table, score_table
from heritagelens.model.checkpoint import load_model


def gallery_seconds(model, stats, preset: str, classes: int = 10, samples: int = 4, repeats: int = 2) -> list[float]:
    times = []
    for r in range(repeats):
        t = time.perf_counter()
        class_images(model, list(range(classes)), samples, dream_preset(preset), stats, seed=r)
        times.append(time.perf_counter() - t)
    return times


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", action="append", required=True, help="checkpoint or run folder (repeatable)")
    ap.add_argument("--presets", nargs="+", default=["naive", "fourier", "maco", "default"])
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--set", action="append", default=[], help="dream.* overrides applied to every preset but naive")
    ap.add_argument("--judges", help="judges folder (default: the data cache)")
    ap.add_argument("--time-only", action="store_true")
    ap.add_argument("--out", default="bench-dream.json")
    ap.add_argument("--figures", help="folder for each model's and preset's gallery (PNG)")
    args = ap.parse_args()
    torch.manual_seed(0)
    results = {}
    for path in args.model:
        model, classes, ckpt = load_model(path)
        cfg = Config.from_dict(ckpt["config"])
        prep = prepare(cfg)
        stats = image_stats(prep.split.images[prep.train_idx])
        times = gallery_seconds(model, stats, "default")
        print(f"\n== {path}: ten-class gallery, 4 samples, preset default: {', '.join(f'{t:.1f}' for t in times)} s")
        results[path] = {"gallery_seconds": times, "sets": {}}
        if args.time_only:
            continue
        targets = torch.arange(len(classes)).repeat_interleave(args.samples)
        made, seconds = {}, {}
        for name in args.presets:
            dcfg = dream_preset(name)
            if name != "naive" and args.set:
                dcfg = Config(dream=dcfg).override(args.set).dream
            t = time.perf_counter()
            made[name] = (
                class_images(model, list(range(len(classes))), args.samples, dcfg, stats, args.seed).images,
                targets,
            )
            seconds[name] = time.perf_counter() - t
            print(f"{name}: {seconds[name]:.1f} s")
        sets, _ = score_sets(made, cfg.data, classes, args.samples, args.seed, args.judges)
        for name, (images, _) in made.items():
            sets[name]["seconds"] = seconds[name]
            if args.figures:
                verdict = sets[name]["judges"][HEADLINE_JUDGE]["per_class"]
                rec = [f"{c}: {verdict[c]['recognised']:.0%}" for c in classes]
                fig = gallery(images, rec, args.samples, title=f"{path}, preset {name} {' '.join(args.set)}")
                out = Path(args.figures) / f"{Path(path).name}-{name}.png"
                out.parent.mkdir(parents=True, exist_ok=True)
                fig.save(out)
        print(score_table(sets))
        for name in args.presets:
            print(f"\n{name} per class:\n{per_class_table(sets[name], classes)}")
        results[path]["sets"] = sets
    with open(args.out, "w") as f:
        json.dump({"args": vars(args), "results": results}, f, indent=1)
    print(f"\nwritten: {args.out}")


if __name__ == "__main__":
    main()
