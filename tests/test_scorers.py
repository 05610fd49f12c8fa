"""--score: heads over embeddings against a hand computation, a tiny random classifier, and
every bad spec as one line (vlpipe.models.scorers)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from bench.hf_tiny import CLASSIFIER_LABELS, build_tiny_classifier
from vlpipe.errors import VlpipeError
from vlpipe.models.scorers import describe_scores, load_scorers, parse_score, parse_scores

DIM = 24


def laion_layout(dim: int) -> torch.nn.Module:
    """LAION's improved aesthetic predictor, narrowed: Linear/Dropout alternating, no activation."""
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(dim, 32), torch.nn.Dropout(0.2), torch.nn.Linear(32, 16),
        torch.nn.Dropout(0.2), torch.nn.Linear(16, 8), torch.nn.Dropout(0.1),
        torch.nn.Linear(8, 4), torch.nn.Linear(4, 1),
    ).eval()  # fmt: skip


class Predictor(torch.nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.layers = laion_layout(dim)


def embeddings(n: int = 5) -> np.ndarray:
    x = np.random.default_rng(1).standard_normal((n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_head_matches_hand_computation(tmp_path, suffix):
    model = Predictor(DIM)
    path = str(tmp_path / f"aesthetic{suffix}")
    if suffix == ".pth":
        torch.save(model.state_dict(), path)
    else:
        save_file(model.state_dict(), path)
    spec = parse_score(f"aesthetic={path}")
    assert spec.kind == "head"
    described = describe_scores([spec], DIM)["aesthetic"]
    assert described["layers"] == [[32, DIM], [16, 32], [8, 16], [4, 8], [1, 4]]
    assert len(described["fingerprint"]) == 16
    (scorer,) = load_scorers([spec])
    x = embeddings()
    got = scorer.score(None, x)
    # by hand: each Linear in order, no activation (Dropout is identity at inference)
    h = x
    for layer in model.layers:
        if isinstance(layer, torch.nn.Linear):
            h = h @ layer.weight.detach().numpy().T + layer.bias.detach().numpy()
    np.testing.assert_allclose(got, h[:, 0], rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        np.testing.assert_allclose(got, model.layers(torch.from_numpy(x))[:, 0].numpy(), rtol=1e-5)


def test_plain_linear_head_with_activation(tmp_path):
    w1, b1 = np.ones((3, DIM), np.float32), np.array([-1.0, 0.0, 1.0], np.float32)
    w2 = np.array([[1.0, 2.0, 3.0]], np.float32)
    path = str(tmp_path / "mlp.safetensors")
    tensors = {"0.weight": torch.from_numpy(w1), "0.bias": torch.from_numpy(b1),
               "2.weight": torch.from_numpy(w2)}  # fmt: skip
    save_file(tensors, path, metadata={"activation": "relu"})
    (scorer,) = load_scorers([parse_score(f"q={path}")])
    x = embeddings()
    expected = np.maximum(x @ w1.T + b1, 0) @ w2.T
    np.testing.assert_allclose(scorer.score(None, x), expected[:, 0], rtol=1e-5)


def test_tiny_classifier_keeps_its_label(tmp_path):
    model_dir = build_tiny_classifier(tmp_path / "clf")
    spec = parse_score(f"nsfw={model_dir}:nsfw")
    assert (spec.kind, spec.label) == ("classifier", "nsfw")
    described = describe_scores([spec], 0)["nsfw"]
    assert described["label_index"] == CLASSIFIER_LABELS.index("nsfw")
    (scorer,) = load_scorers([spec], device="cpu")
    images = [Image.new("RGB", (80, 60), c) for c in ("red", "navy", "white")]
    pixels = torch.stack([scorer.preprocess(im) for im in images])
    got = scorer.score(pixels, None)
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    processor = AutoImageProcessor.from_pretrained(model_dir)
    model = AutoModelForImageClassification.from_pretrained(model_dir).eval()
    with torch.no_grad():
        logits = model(**processor(images=images, return_tensors="pt")).logits
    expected = torch.softmax(logits, -1)[:, 1].numpy()
    np.testing.assert_allclose(got, expected, atol=2e-3)
    assert got.std() > 0  # different images, different probabilities


@pytest.mark.parametrize(
    "text, message",
    [
        ("aesthetic", "expected NAME=SPEC"),
        ("9x=head.pth", "plain column name"),
        ("nsfw=org/model", "needs the label"),
        ("caption=head.pth", "vlpipe's own columns"),
    ],
)
def test_bad_spec_text(text, message):
    with pytest.raises(VlpipeError, match=message):
        parse_scores([text], frozenset({"caption"}))


def test_bad_heads_and_labels(tmp_path):
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a pickle at all")
    with pytest.raises(VlpipeError, match="not a plain state dict"):
        describe_scores([parse_score(f"a={junk}")], DIM)
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{}")
    with pytest.raises(VlpipeError, match="not a readable safetensors"):
        describe_scores([parse_score(f"a={broken}")], DIM)
    wide = tmp_path / "wide.safetensors"
    save_file(Predictor(DIM + 1).state_dict(), str(wide))
    with pytest.raises(
        VlpipeError, match=f"takes {DIM + 1}-wide embeddings but the embedder gives"
    ):
        describe_scores([parse_score(f"a={wide}")], DIM)
    gap = tmp_path / "gap.safetensors"
    save_file({"0.weight": torch.ones(4, DIM), "1.weight": torch.ones(1, 5)}, str(gap))
    with pytest.raises(VlpipeError, match="not a chain of linear layers"):
        describe_scores([parse_score(f"a={gap}")], DIM)
    many = tmp_path / "many.safetensors"
    save_file({"weight": torch.ones(3, DIM)}, str(many))
    with pytest.raises(VlpipeError, match="ends in one"):
        describe_scores([parse_score(f"a={many}")], DIM)
    with pytest.raises(VlpipeError, match="no such head file"):
        describe_scores([parse_score(f"a={tmp_path / 'missing.pth'}")], DIM)
    model_dir = build_tiny_classifier(tmp_path / "clf")
    with pytest.raises(VlpipeError, match="has no label 'porn'.*nsfw, safe, watermark"):
        describe_scores([parse_score(f"x={model_dir}:porn")], 0)


class NotWeights:
    pass


def test_pth_with_objects_is_refused_not_unpickled(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"layers.0.weight": torch.ones(1, DIM), "x": NotWeights()}, str(path))
    with pytest.raises(VlpipeError, match="not a plain state dict"):
        describe_scores([parse_score(f"a={path}")], DIM)
