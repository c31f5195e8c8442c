"""House rules that a reviewer would otherwise check by hand."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("nas", "search_spaces", "trainers")
RUFF = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")


@pytest.mark.skipif(RUFF is None, reason="ruff is installed with the test extra")
def test_ruff_clean():
    proc = subprocess.run([RUFF, "check", *PACKAGES, "tests", "benchmarks"], cwd=ROOT,
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout[-4000:]


def test_dependency_direction():
    """nas -> trainers -> search_spaces; only nas imports ray or optuna."""
    rules = {"search_spaces": r"(ray|optuna|nas|trainers)\b", "trainers": r"(ray|optuna|nas)\b"}
    for pkg, forbidden in rules.items():
        for path in (ROOT / pkg).rglob("*.py"):
            for line in path.read_text().splitlines():
                assert not re.match(rf"\s*(import|from)\s+{forbidden}", line), (path, line)


def test_no_pickle_or_unsafe_loading():
    for pkg in PACKAGES:
        for path in (ROOT / pkg).rglob("*.py"):
            text = path.read_text()
            assert not re.search(r"^\s*import pickle|yaml\.load\(|torch\.load\(", text, re.M), path


def _policy_models():
    """(token policy, a small ViT of that policy) for every policy of the vit family."""
    import search_spaces

    vit = search_spaces.get("vit")
    for policy in vit.dims["token_policy"].values():
        config = vit.config_cls(img_size=16, patch_size=4, embed_dim=48, depth=2,
                                num_heads=2, token_policy=policy)
        yield policy, vit.build(config, num_classes=3, in_chans=1)


def _adaptive_words() -> set[str]:
    """What generic code must never name: every registered family's budget knobs, its
    adaptive (non-architecture) dimensions, their string choices (policies) and the aux keys
    of its adaptive models' outputs, in training and in evaluation."""
    import torch

    import search_spaces
    from search_spaces.output import ModelOutput

    words: set[str] = set()
    for name in search_spaces.names():
        space = search_spaces.get(name)
        if space.adaptive_fn is None:
            continue
        words |= set(space.budget_knobs)
        arch = set(space.architecture or space.dims) | {"img_size"}
        for dim_name, dim in space.dims.items():
            if dim_name in arch:
                continue
            words.add(dim_name)
            strings = {v for v in dim.values() if isinstance(v, str) and v != "static"}
            if not any("+" in v for v in strings):  # a set-valued dim ("heads+patches")
                words |= strings  # names parts every ViT has: only its own name is banned
    for _, model in _policy_models():  # aux keys: one small model of each token policy
        for mode in (True, False):
            out = model.train(mode)(torch.randn(2, 1, 16, 16))
            if isinstance(out, ModelOutput):
                words |= set(out.aux)
    return words


def test_generic_code_never_names_an_adaptive_family():
    """nas/ and trainers/ ask the space (search_spaces/adaptive.py); only the pure loss
    functions of trainers/losses.py may name what they compute."""
    words = _adaptive_words()
    assert {"halt_eps", "token_policy", "halting", "tokens_per_block", "rho"} <= words
    pattern = re.compile(r"\b(" + "|".join(map(re.escape, sorted(words))) + r")\b", re.I)
    for pkg in ("nas", "trainers"):
        for path in (ROOT / pkg).rglob("*.py"):
            if path == ROOT / "trainers" / "losses.py":
                continue
            for number, line in enumerate(path.read_text().splitlines(), start=1):
                found = pattern.search(line)
                assert not found, f"{path.relative_to(ROOT)}:{number} names {found.group(0)!r}"


def _family_class_names() -> set[str]:
    """The classes a family owns: its config, its models and its structure (and those of the
    token policies, which build models of their own)."""
    import search_spaces
    from search_spaces import policies

    names: set[str] = set()
    for name in search_spaces.names():
        space = search_spaces.get(name)
        names |= {space.config_cls.__name__, space.structure_cls.__name__}
        names |= {m.__name__ for m in space.structure_cls.models}
    for name, model in _policy_models():
        names.add(type(model).__name__)
        if name in policies.names():  # "static" is no policy
            policy = policies.get(name)
            names |= {policy.fields.__name__, policy.adaptive.__name__}
    return names


def test_generic_code_never_names_a_family_class():
    """nas/ and trainers/ ask the space (structure and adaptive contracts) and never name a
    family's config, model or structure class in code (docstrings and comments may)."""
    import io
    import tokenize

    banned = _family_class_names()
    assert {"ViTConfig", "VisionTransformer", "EfficientViT", "CascadeViT"} <= banned
    for pkg in ("nas", "trainers"):
        for path in (ROOT / pkg).rglob("*.py"):
            tokens = tokenize.generate_tokens(io.StringIO(path.read_text()).readline)
            named = {t.string for t in tokens if t.type == tokenize.NAME} & banned
            assert not named, (path, sorted(named))
