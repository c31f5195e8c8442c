"""Test-wide settings: no model hub, one torch thread per process (two cores, side by side)."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

torch.set_num_threads(1)
