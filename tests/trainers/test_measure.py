"""Parameters, MACs and latency: numbers computed by hand, provenance recorded."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from trainers.measure import (
    count_macs,
    count_params,
    describe_device,
    measure_latency,
    sample_batches,
)


def test_count_params_matches_the_hand_sum() -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    assert count_params(model) == 3 * 4 + 4 + 4 * 2 + 2 == 26


def test_count_params_counts_a_shared_parameter_once() -> None:
    shared = nn.Linear(5, 5, bias=False)
    assert count_params(nn.Sequential(shared, shared)) == 25


def test_macs_of_linear_and_conv_match_the_hand_count() -> None:
    assert count_macs(nn.Linear(8, 16), (8,)) == 8 * 16 == 128
    padded = nn.Conv2d(3, 4, kernel_size=3, padding=1)
    assert count_macs(padded, (3, 5, 5)) == 3 * 4 * 3 * 3 * (5 * 5) == 2700
    strided = nn.Conv2d(2, 6, kernel_size=3, stride=2)  # 9x9 -> 4x4
    assert count_macs(strided, (2, 9, 9)) == 2 * 6 * 3 * 3 * (4 * 4) == 1728
    grouped = nn.Conv2d(4, 4, kernel_size=3, padding=1, groups=4)  # depthwise
    assert count_macs(grouped, (4, 6, 6)) == 4 * 3 * 3 * (6 * 6) == 1296


class Attention(nn.Module):
    """Two heads; 5 queries attend to 7 learned memory tokens; Dqk = 4, Dv = 3 per head."""

    def __init__(self, fused: bool) -> None:
        super().__init__()
        self.fused = fused
        self.q, self.k, self.v = nn.Linear(6, 8), nn.Linear(6, 8), nn.Linear(6, 6)
        self.memory = nn.Parameter(torch.randn(7, 6))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, _ = x.shape
        q = self.q(x).view(batch, length, 2, 4).transpose(1, 2)
        k = self.k(self.memory).view(1, 7, 2, 4).transpose(1, 2).expand(batch, -1, -1, -1)
        v = self.v(self.memory).view(1, 7, 2, 3).transpose(1, 2).expand(batch, -1, -1, -1)
        if self.fused:
            return F.scaled_dot_product_attention(q, k, v)
        attn = (q @ k.transpose(-2, -1) * 0.5).softmax(dim=-1)
        return attn @ v


def test_fused_attention_is_counted_like_the_unfused_reference() -> None:
    projections = 5 * 6 * 8 + 7 * 6 * 8 + 7 * 6 * 6
    attention = 1 * 2 * 5 * 7 * 4 + 1 * 2 * 5 * 7 * 3  # B*H*Lq*Lk*Dqk + B*H*Lq*Lk*Dv
    unfused = count_macs(Attention(fused=False), (5, 6))
    fused = count_macs(Attention(fused=True), (5, 6))
    assert unfused == projections + attention == 1318
    assert fused == unfused


class _Broadcast(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("m", torch.ones(10, 5))

    def forward(self, x):
        return self.m @ x  # (10, 5) @ (B, 4, 5, 5): every one of the 4 maps multiplied


def test_matrix_products_count_the_batch_dims_of_either_operand() -> None:
    assert count_macs(_Broadcast(), (4, 5, 5)) == 4 * 10 * 5 * 5  # 1,000 (fvcore says 250)
    assert count_macs(Matmul(), (4, 5, 5)) == 4 * 5 * 5 * 5


class Matmul(nn.Module):
    def forward(self, x):
        return x @ x


def test_count_macs_restores_the_training_mode() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5)).train()
    count_macs(model, (4,))
    assert model.training


def test_latency_is_sane_restores_threads_and_records_provenance() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(48, 32), nn.ReLU(), nn.Linear(32, 10)).train()
    before = torch.get_num_threads()
    threads = 2 if before == 1 else 1
    latency = measure_latency(model, input_shape=(3, 4, 4), batch_size=8, threads=threads,
                              dtype=torch.float64, warmup=2, repeats=5, rounds=3)  # fmt: skip
    assert torch.get_num_threads() == before
    assert 0 < latency.median_ms <= latency.p90_ms and latency.mean_ms > 0
    assert latency.spread >= 0
    assert latency.images_per_s == pytest.approx(8 * 1000 / latency.median_ms)
    provenance = latency.provenance
    for key in ("device", "torch", "batch_size", "threads", "dtype", "warmup", "repeats"):
        assert key in provenance
    assert (provenance["batch_size"], provenance["threads"]) == (8, threads)
    assert (provenance["dtype"], provenance["repeats"]) == ("float64", 5)
    assert provenance["torch"] == torch.__version__
    as_dict = latency.to_dict()
    assert as_dict["median_ms"] == latency.median_ms and "images_per_s" in as_dict
    assert model.training and next(model.parameters()).dtype == torch.float32  # a copy ran


class CheapFirst(nn.Module):
    """Costs little on an image whose first pixel is 0 and ~100x more (milliseconds, well
    above a busy machine's scheduling noise) on any other: the cost of a data-dependent
    model differs per image."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(100, 100) / 10)

    def forward(self, x):
        h = x.flatten(1).expand(256, -1)
        rounds = 1 if float(x.flatten()[0]) == 0.0 else 100
        for _ in range(rounds):
            h = torch.tanh(h @ self.w)
        return h


def test_data_dependent_latency_is_the_mean_over_images_not_the_first() -> None:
    images = torch.ones(16, 1, 10, 10)
    images[0] = 0.0  # only the first image is cheap
    model = CheapFirst()
    first = measure_latency(model, input_shape=(1, 10, 10), batch_size=1, warmup=2,
                            repeats=5, rounds=3, inputs=images[:1])
    sampled = measure_latency(model, input_shape=(1, 10, 10), batch_size=1, warmup=2,
                              repeats=5, rounds=3, inputs=images)
    heavy = measure_latency(model, input_shape=(1, 10, 10), batch_size=1, warmup=2,
                            repeats=5, rounds=3, inputs=images[1:2])
    assert sampled.statistic == "mean" and sampled.provenance["images"] == 16
    assert sampled.ms == sampled.mean_ms == sampled.metrics()["latency_ms"]
    assert sampled.ms > 10 * first.ms  # the first image alone would say ~100x faster
    assert 0.5 * heavy.ms < sampled.ms < 2 * heavy.ms  # 15 of 16 images are heavy
    assert sampled.median_ms <= sampled.p90_ms  # p90 over batches
    assert sampled.images_per_s == pytest.approx(1000 / sampled.mean_ms)


def test_sample_batches_cover_every_image_in_full_batches() -> None:
    images = torch.arange(10.0).view(10, 1)
    batches = sample_batches(images, 4)
    assert [b.flatten().tolist() for b in batches] == [[0, 1, 2, 3], [4, 5, 6, 7],
                                                        [8, 9, 0, 1]]
    assert len(sample_batches(images, 16)) == 1 and len(sample_batches(images, 16)[0]) == 16


def test_latency_rejects_nonsense_counts() -> None:
    with pytest.raises(ValueError, match="`repeats`"):
        measure_latency(nn.Linear(2, 2), input_shape=(2,), repeats=0)


def test_describe_device_names_the_cpu() -> None:
    name = describe_device("cpu")
    assert isinstance(name, str) and name.strip() and name != "cpu"
