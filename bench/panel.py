"""Build, or check, the judges' panel shipped in `heritagelens/panel/` for the AHE64 train split.

    AHE_DATA=../shared/data/ahe64 python bench/panel.py          # train the panel (or take it from the cache), ship it
    AHE_DATA=../shared/data/ahe64 python bench/panel.py --check  # the shipped panel: keys and accuracies reproduce

Building trains each judge of `heritagelens.judging.judges.JUDGES` with its recipe on the default group-aware split (or
reads it from the judges' cache when already trained there), measures its accuracy on the validation split, and
writes the weights as safetensors with `panel.json`, the card recording this command, the CPU, each judge's content
key and accuracy. Checking recomputes the content keys from the data and the accuracies from the shipped weights
and fails when either differs from the card.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

from heritagelens.config import DataConfig
from heritagelens.data.split import prepare
from heritagelens.judging import judges
from heritagelens.model.inference import accuracy
from heritagelens.model.precision import cache_key


def val_accuracy(judge: judges.Judge, data_cfg: DataConfig) -> float:
    prep = prepare(judges.judge_config(judge.name, data_cfg))
    s = prep.split
    return accuracy(judge.model, s.images[prep.val_idx], s.labels[prep.val_idx], precision="fp32")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true", help="check the shipped panel instead of building it")
    p.add_argument("--judges", default=None, help="judges' cache folder (default: beside the data)")
    p.add_argument("--out", default=str(judges.PANEL_DIR))
    a = p.parse_args()
    data_cfg = DataConfig(root=os.environ.get("AHE_DATA", "data/ahe64"))
    keys = {n: judges.judge_key(n, data_cfg) for n in judges.JUDGES}
    if a.check:
        card = judges.panel_card(a.out)
        bad = 0
        for name in judges.JUDGES:
            judge = judges.shipped_judge(name, keys[name], a.out)
            if judge is None:
                print(f"{name}: the card has no judge for this data's key {keys[name]}")
                bad += 1
                continue
            acc, recorded = val_accuracy(judge, data_cfg), card["judges"][name]["val_accuracy"]
            print(f"{name}: key {keys[name]} matches; validation accuracy {acc:.4f} (card: {recorded:.4f})")
            bad += abs(acc - recorded) > 1e-4
        sys.exit(1 if bad else 0)
    panel = judges.ensure_judges(data_cfg, a.judges)
    accuracies = {name: val_accuracy(judge, data_cfg) for name, judge in panel.items()}
    command = "AHE_DATA=<AHE64 root> python bench/panel.py"
    card = judges.write_panel(panel, accuracies, keys, a.out, command, cache_key(torch.device("cpu")))
    for name, acc in accuracies.items():
        print(f"{name}: validation accuracy {acc:.4f}, key {keys[name]}")
    print(f"shipped: {card}")


if __name__ == "__main__":
    main()
