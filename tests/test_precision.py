"""`--precision auto`: bf16 on CPUs that run it natively, fp32 elsewhere, and what bf16 changes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.helpers.vectors import row_cosines
from vlpipe.api import run_and_index as run
from vlpipe.errors import VlpipeError
from vlpipe.models import precision as prec
from vlpipe.models.mini.model import load_mini
from vlpipe.models.precision import resolve_precision
from vlpipe.pipeline.options import RunConfig

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "images"
AMX = ("amx_bf16", "avx512_bf16")


def test_auto_picks_bf16_only_where_the_cpu_has_it():
    assert resolve_precision("cpu", "auto", cpu_bf16=AMX).name == "bf16"
    assert resolve_precision("cpu", "auto", cpu_bf16=("avx512_bf16",)).name == "bf16"
    assert resolve_precision("cpu", "auto", cpu_bf16=()).name == "fp32"
    assert resolve_precision("cuda", "auto", cpu_bf16=()).name == "fp16"
    # hub models' CPU bf16 is not measured: auto keeps them in fp32
    assert resolve_precision("cpu", "auto", cpu_bf16=AMX, bf16_measured=False).name == "fp32"
    assert resolve_precision("cpu", "fp32", cpu_bf16=AMX).name == "fp32"


def test_bf16_asked_for_on_a_cpu_without_it_runs_and_says_it_is_slow():
    chosen = resolve_precision("cpu", "bf16", cpu_bf16=())
    assert chosen.name == "bf16" and "slower than fp32" in chosen.reason
    assert "slower" not in resolve_precision("cpu", "bf16", cpu_bf16=AMX).reason
    with pytest.raises(VlpipeError, match="unknown precision 'int4'"):
        resolve_precision("cpu", "int4")


def test_detection_reads_the_cpu_flags():
    """What this machine reports, cross-checked against /proc/cpuinfo where it exists."""
    flags = prec.native_bf16_flags()
    cpuinfo = set(prec._cpuinfo_flags())
    if cpuinfo:
        assert set(flags) >= cpuinfo & set(prec.NATIVE_BF16_FLAGS)
    assert set(flags) <= set(prec.NATIVE_BF16_FLAGS)


def _batch(model, n: int = 16) -> torch.Tensor:
    paths = sorted(EXAMPLES.glob("*.jpg"))[:n]
    return torch.stack([model.preprocess(Image.open(p).convert("RGB")) for p in paths])


def test_mini_in_bf16_stays_within_the_stated_tolerance_of_fp32():
    """docs/precision.md: image embeddings' mean cosine to fp32 >= 0.999; text embeddings are
    computed in fp32 either way; most captions are identical (the rest differ in a word or two)."""
    fp32, bf16 = (
        load_mini(device="cpu", precision="fp32"),
        load_mini(device="cpu", precision="bf16"),
    )
    assert next(bf16.tower().parameters()).dtype == torch.bfloat16
    assert next(bf16.decoder.parameters()).dtype == torch.bfloat16
    assert next(bf16.heads.parameters()).dtype == torch.float32  # embeddings keep fp32 heads
    pixels = _batch(fp32)
    caps32, emb32 = fp32.caption_and_embed(pixels)
    caps16, emb16 = bf16.caption_and_embed(pixels)
    cos = row_cosines(emb32, emb16)
    assert cos.mean() >= 0.999 and cos.min() >= 0.99
    assert not np.array_equal(emb32, emb16)  # bf16 really ran
    assert sum(a == b for a, b in zip(caps32, caps16, strict=True)) >= 12  # of 16
    texts = ["a dog running on the grass", "two children in a pool"]
    np.testing.assert_allclose(fp32.embed_texts(texts), bf16.embed_texts(texts), atol=1e-6)


def _small_run(tmp_path: Path, **kw) -> dict:
    src = tmp_path / "images"
    src.mkdir(parents=True)
    for p in sorted(EXAMPLES.glob("*.jpg"))[:4]:
        shutil.copy(p, src / p.name)
    out = tmp_path / "out"
    config = RunConfig(str(src), str(out), progress=False, build_index=False, **kw)
    summary = run(config, echo=lambda line: None)
    assert summary.ok and summary.written == 4
    return json.loads((out / "manifest.json").read_text())["options"]


def test_a_run_records_what_auto_chose(tmp_path, monkeypatch):
    expected = "bf16" if prec.native_bf16_flags() else "fp32"
    options = _small_run(tmp_path / "here")
    assert (options["precision"], options["precision_requested"]) == (expected, "auto")
    # a CPU without native bf16, simulated: auto falls back to fp32 and says why
    monkeypatch.setattr(prec, "native_bf16_flags", lambda: ())
    options = _small_run(tmp_path / "older-cpu")
    assert options["precision"] == "fp32"
    assert options["precision_reason"] == "auto: this CPU has no native bf16"
