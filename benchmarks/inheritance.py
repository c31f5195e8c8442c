"""Search by inheritance: candidates cut from a trained parent against from-scratch ones.

Writes results/benchmarks/inheritance.md. Two parents, each trained once and written as an
export folder: the ViT parent of benchmarks/adaptive.py (96 wide, 6 blocks, 3 heads, patch 4)
and an EfficientViT parent sized for 28x28 (EfficientViT-M0's stages, 64/128/192 wide, depths
1/2/3, 4 heads each, stem stride 4: 7x7, 4x4 and 2x2 tokens; window 7; 10 epochs on the same
53,000 Fashion-MNIST training images, lr 2e-3, batch 128).

    python benchmarks/inheritance.py parent [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from adaptive import DATA  # noqa: E402  (the ViT parent's data: the same splits)
from parents import train_parent  # noqa: E402

from search_spaces.efficientvit import EfficientViTConfig  # noqa: E402
from trainers.data import load_data  # noqa: E402
from trainers.loop import FitSettings  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
WORK = Path(os.environ.get("VITNAS_BENCH_WORK", ROOT / "results")) / "inheritance"
EVIT_PARENT_DIR = WORK / "efficientvit-parent"
EVIT_PARENT = EfficientViTConfig(img_size=28, stem_stride=4, embed_dims=(64, 128, 192),
                                 depths=(1, 2, 3), num_heads=(4, 4, 4), window_size=7)
EVIT_TRAIN = FitSettings(epochs=10, batch_size=128, lr=2e-3, warmup_epochs=1,
                         clip_grad=5.0, label_smoothing=0.1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("phase", choices=("parent",))
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = load_data(DATA)
    if not (EVIT_PARENT_DIR / "config.json").is_file():
        train_parent(EVIT_PARENT, EVIT_PARENT_DIR, data, EVIT_TRAIN, benchmark="inheritance")


if __name__ == "__main__":
    main()
