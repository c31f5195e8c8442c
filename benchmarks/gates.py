"""How a batch whose images take different gate decisions is run: does skipping pay?

Writes results/benchmarks/gates.md. No Ray needed (runs on a GPU machine too).

One gated ViT of the adaptive benchmark's parent architecture (96 wide, 6 blocks, 3 heads,
patch 4: 50 tokens at 28x28) with random gates whose biases are set so that a chosen share
of heads, branches or patch tokens is kept (decisions differ per image), run side by side on
real Fashion-MNIST validation images, one thread, interleaved:

- ``masked``: every head, branch and token computed, then multiplied by its bit (the
  training formulation; what AdaViT's released code runs at inference);
- ``skipping``: the model's eval path (search_spaces/policies/gating/gates.py): packed kept
  tokens, branches run only on the images that keep them, each head only on the images that
  keep it (per-head gathers of the Q/K/V and output projection slices);
- ``by pattern`` (heads only): the alternative design, images grouped by their set of kept
  heads and each group run through one fused attention of those heads.

Columns: executed MACs per image over the full model's (the cost model), and the measured
speedup of each path over ``masked`` at batch 64 and batch 1.

    python benchmarks/gates.py [--repeats 15]
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import SAMPLE, header, interleaved, write_table  # noqa: E402

from search_spaces.layers.attention import (  # noqa: E402  (imports search_spaces._compat first)
    MultiHeadAttention,
    sdpa_mask,
)
from search_spaces.policies.gating import gates  # noqa: E402
from search_spaces.vit import ViTConfig, build  # noqa: E402
from trainers.budget import cost_model  # noqa: E402
from trainers.data import DataSettings, load_data  # noqa: E402

BASE = ViTConfig(img_size=28, patch_size=4, embed_dim=96, depth=6, num_heads=3,
                 mlp_ratio=4.0, token_policy="gating")
KINDS = ("heads", "branches", "patches", "heads+branches+patches")
USAGE = (0.3, 0.5, 0.7, 0.9)


def calibrate(model: torch.nn.Module, x: torch.Tensor, usage: float) -> None:
    """Set each gate's bias so that about ``usage`` of its bits are on, block by block (a
    gate reads what the blocks before it made of the image)."""
    params = model.gating
    g = torch.Generator().manual_seed(0)
    for index, gate in enumerate(model.gates):
        for kind in gates.KINDS:
            layer = getattr(gate, kind)
            if layer is None:
                continue
            layer.weight.data = torch.randn(layer.weight.shape, generator=g) * 0.5
            layer.bias.data.zero_()
        with torch.no_grad():
            tokens, _ = gates.forward_skipping(model.blocks[:index + 1],
                                               model.gates[:index], model.embed(x), params)
            logits = gate.logits(tokens)
        for kind, value in logits.items():
            cut = torch.quantile(value.flatten(), 1 - usage)
            threshold = getattr(params, kind)
            # on when sigmoid(logit / tau) > threshold: logit > tau * logit(threshold)
            getattr(gate, kind).bias.data -= cut - params.tau * math.log(
                threshold / (1 - threshold))


def by_pattern(attn: MultiHeadAttention, x: torch.Tensor, mask: torch.Tensor | None,
               on: torch.Tensor) -> torch.Tensor:
    """Images grouped by their set of kept heads; one fused attention per group."""
    if bool(on.all()):
        return attn.forward(x, mask)
    b, n, _ = x.shape
    qk, v = attn.qk_dim, attn.v_dim
    out = x.new_zeros(b, n, attn.proj.out_features)
    codes = (on.long() * (2 ** torch.arange(on.shape[1]))).sum(1)
    for code in codes.unique().tolist():
        heads = [h for h in range(on.shape[1]) if code >> h & 1]
        if not heads:
            continue
        rows = (codes == code).nonzero().squeeze(1)
        k = len(heads)
        sel = torch.cat([attn.head_rows(h)[:qk] for h in heads]
                        + [attn.head_rows(h)[qk:2 * qk] for h in heads]
                        + [attn.head_rows(h)[2 * qk:] for h in heads])
        part = x[rows]
        q, key, val = F.linear(part, attn.qkv.weight[sel], attn.qkv.bias[sel]).split(
            [k * qk, k * qk, k * v], dim=-1)
        r = rows.numel()
        q, key = (t.view(r, n, k, qk).transpose(1, 2) for t in (q, key))
        val = val.view(r, n, k, v).transpose(1, 2)
        m = None if mask is None else sdpa_mask(mask[rows])
        o = F.scaled_dot_product_attention(q, key, val, attn_mask=m)
        cols = torch.cat([torch.arange(h * v, (h + 1) * v) for h in heads])
        out.index_add_(0, rows, F.linear(o.transpose(1, 2).reshape(r, n, k * v),
                                         attn.proj.weight[:, cols]))
    return out + attn.proj.bias


class Masked(torch.nn.Module):
    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.model
        tokens, _ = gates.forward_masked(m.blocks, m.gates, m.embed(x), m.gating, noisy=False)
        return m.forward_head(tokens)


class ByPattern(torch.nn.Module):
    """The model's skipping path with heads grouped by pattern instead of gathered."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        saved = MultiHeadAttention.forward_heads
        MultiHeadAttention.forward_heads = by_pattern
        try:
            return self.model(x).logits
        finally:
            MultiHeadAttention.forward_heads = saved


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    b1_passes = max(args.repeats // 3, 3)  # a pass at batch 1 is SAMPLE calls
    torch.set_num_threads(1)
    data = load_data(DataSettings(name="fashion-mnist", val_size=1000, train_size=1000,
                                  seed=0))
    images = next(iter(data.val_batches(512)))[0]
    lines = header("Gated ViT: running a batch of mixed gate decisions") + [
        f"Model: ViT {BASE.embed_dim} wide, {BASE.depth} blocks, {BASE.num_heads} heads, "
        "patch 4 (50 tokens), gates on blocks 1-5 with random weights and biases set for "
        "the usage asked (realised usage shown); real Fashion-MNIST validation images; one "
        f"thread; the mean over {SAMPLE} validation images (4 batches of 64, or {SAMPLE} of "
        f"1) of each batch's median over {args.repeats} interleaved passes (batch 1: "
        f"{b1_passes}): the cost of a gated model differs per image.", "",
        "| gates | usage asked | realised | MACs executed / full | b64 masked ms | "
        "b64 skipping | b64 by pattern | b1 masked ms | b1 skipping | b1 by pattern |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for kinds in KINDS:
        for usage in USAGE:
            config = BASE.replace(gate_kinds=kinds)
            torch.manual_seed(0)
            model = build(config, num_classes=10, in_chans=1).eval()
            calibrate(model, images, usage)
            cost = cost_model("vit", config, model, data.input_shape)
            with torch.no_grad():
                aux = model(images).aux
                skip = model(images[:64]).logits
                assert (skip - Masked(model)(images[:64])).abs().max() <= 1e-4
            realised = sum(float(v.mean()) for v in cost.usage(aux).values()) / len(
                cost.usage(aux))
            macs = float(cost.per_image(aux).mean()) / cost.full()
            runs = {"masked": Masked(model), "skipping": lambda x, m=model: m(x).logits}
            if "heads" in kinds:
                runs["pattern"] = ByPattern(model)
            cells = []
            for batch, passes in ((64, args.repeats), (1, b1_passes)):
                t = interleaved(runs, images[:SAMPLE], repeats=passes, batch=batch)
                cells.append(f"{t['masked'] * 1e3:.2f}")
                cells.append(f"{t['masked'] / t['skipping']:.2f}x")
                cells.append(f"{t['masked'] / t['pattern']:.2f}x" if "pattern" in t else "-")
            lines.append(f"| {kinds} | {usage:g} | {realised:.2f} | {macs:.2f} | "
                         + " | ".join(cells) + " |")
            print(lines[-1], flush=True)
    lines += ["", "Speedups are over `masked` (> 1: faster). The full model's reduction is "
              "1 / (MACs executed / full)."]
    write_table("gates", lines)


if __name__ == "__main__":
    main()
