"""Deconvnet speed: top-9 projections for every channel of a layer over the whole train split, and one image's view.

    AHE_DATA=../shared/data/ahe64 python bench/deconv.py CHECKPOINT [--layer conv4_2]

Prints the seconds for: the top-9 scan of every channel, projecting all of them, and one image at every layer with
its 9 strongest channels (median of 5).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from heritagelens.data import dataset
from heritagelens.explain.deconvnet import project_top, top_activations
from heritagelens.explain.views import image_view
from heritagelens.model.checkpoint import load_model
from heritagelens.model.network import conv_layer_names


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint")
    p.add_argument("--layer", default=None, help="default: the deepest conv layer")
    a = p.parse_args()
    model, _, _ = load_model(a.checkpoint)
    layer = a.layer or conv_layer_names(model)[-1]
    split = dataset.load_split(os.environ.get("AHE_DATA", "data/ahe64"), "train")
    print(f"{len(split.images)} images, layer {layer}, {torch.get_num_threads()} threads")

    t0 = time.perf_counter()
    top = top_activations(model, split.images, layer, k=9)
    t1 = time.perf_counter()
    proj = project_top(model, split.images, top, list(range(top.values.shape[0])))
    t2 = time.perf_counter()
    print(
        f"top-9 scan of {top.values.shape[0]} channels: {t1 - t0:.1f} s; projecting all {proj.shape[0] * 9}: "
        f"{t2 - t1:.1f} s; total {t2 - t0:.1f} s"
    )

    layers = conv_layer_names(model)
    times = []
    for i in range(5):
        t = time.perf_counter()
        image_view(model, split.images[i * 101], layers)
        times.append(time.perf_counter() - t)
    print(
        f"one image, {len(layers)} layers x 9 strongest channels, figure included: "
        f"median {statistics.median(times):.2f} s"
    )


if __name__ == "__main__":
    main()
