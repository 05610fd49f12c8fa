"""Before/after of the second CPU fix: vlpipe-mini's image tower at inference.

With caption decoding KV-cached, the profile (bench/profile.py) put most of `vlpipe run`'s CPU time
in EfficientNet-Lite0, with `batch_norm` and `pad` among its top functions. The inference tower
now folds every BatchNorm into the conv before it (`fuse_batchnorm`) and lets stride-1 convs pad
inside the conv instead of copying each feature map through `F.pad` (`SameConv`). The baseline is
the tower as it was: BN modules and an explicit pad before every conv, on the same weights and
inputs, checked to give the same grid.

    python -m bench.tower [--batches 4] [--quick]
    python -m bench.tower --smoke   # one batch of 2, nothing published
"""

from __future__ import annotations

import argparse
import copy
import math
import sys
import time

import torch
import torch.nn.functional as F

from bench.common import Figure, Report, result_name
from vlpipe.models.mini.efficientnet import EfficientNetLite, SameConv, fuse_batchnorm

NAME = "tower"
TITLE = "Image tower: folded BatchNorm and in-conv padding (before/after in vlpipe-mini)"


def _pad_always(self: SameConv, x: torch.Tensor) -> torch.Tensor:
    """SameConv.forward as it was: every conv padded by F.pad first (a copy of x)."""
    ih, iw = x.shape[-2:]
    (kh, kw), (sh, sw) = self.kernel_size, self.stride
    ph = max((math.ceil(ih / sh) - 1) * sh + kh - ih, 0)
    pw = max((math.ceil(iw / sw) - 1) * sw + kw - iw, 0)
    if ph or pw:
        x = F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2])
    return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def time_grid(tower, x: torch.Tensor, old_padding: bool) -> tuple[float, torch.Tensor]:
    current = SameConv.forward
    if old_padding:
        SameConv.forward = _pad_always
    try:
        start = time.perf_counter()
        out = tower.grid(x)
        return time.perf_counter() - start, out
    finally:
        SameConv.forward = current


def run(args) -> dict:
    report = Report(result_name(NAME, args.smoke), TITLE)
    before = EfficientNetLite.pretrained().to(memory_format=torch.channels_last)
    after = fuse_batchnorm(copy.deepcopy(before)).to(memory_format=torch.channels_last)
    torch.manual_seed(0)
    x = torch.randn(args.batch_size, 3, 224, 224).contiguous(memory_format=torch.channels_last)
    rows = {}
    for threads in (1, 2):
        torch.set_num_threads(threads)
        spent = {"before": 0.0, "after": 0.0}
        with torch.inference_mode():
            time_grid(before, x, True), time_grid(after, x, False)  # warm-up
            for _ in range(args.batches):  # interleaved, so load changes hit both alike
                t, a = time_grid(before, x, True)
                spent["before"] += t
                t, b = time_grid(after, x, False)
                spent["after"] += t
        diff = float((a - b).abs().max())
        images = args.batches * args.batch_size
        rate = {k: images / v for k, v in spent.items()}
        rows[f"{threads} thread(s)"] = {**{f"{k}_s": round(v, 3) for k, v in spent.items()},
                                        "max_abs_diff": diff}  # fmt: skip
        report.add(
            Figure(
                f"image tower grid, batch {args.batch_size}, {threads} thread(s)", rate["after"],
                rate["before"], "BN modules + F.pad (before)", "images/s",
                note=f"max |grid difference| {diff:.1e}",
            )
        )  # fmt: skip
    report.details = {"batch_size": args.batch_size, "batches": args.batches, "runs": rows}
    return report.finish()


def markdown(result: dict) -> str:
    d = result["details"]
    lines = [
        f"EfficientNet-Lite0 to the (N, 1280, 7, 7) grid on random 224x224 inputs, batches of"
        f" {d['batch_size']}, {d['batches']} timed batches per side, interleaved, channels_last,"
        " fp32. Same weights on both sides; the grids agree to float rounding:",
        "",
        "| setting | before s | after s | max abs grid difference |",
        "|---|---|---|---|",
    ]
    for k, r in d["runs"].items():
        lines.append(
            f"| {k} | {r['before_s']:.2f} | {r['after_s']:.2f} | {r['max_abs_diff']:.1e} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.tower", description=TITLE)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--batches", type=int, default=4)
    parser.add_argument("--quick", action="store_true", help="2 batches")
    parser.add_argument("--smoke", action="store_true", help="one batch of 2")
    args = parser.parse_args(argv)
    if args.quick:
        args.batches = 2
    if args.smoke:
        args.batches, args.batch_size = 1, 2
    from bench.report import run_and_publish

    return run_and_publish(NAME, lambda: run(args), args.smoke)


if __name__ == "__main__":
    sys.exit(main())
