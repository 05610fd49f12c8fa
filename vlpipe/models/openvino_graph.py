"""A torch module compiled by OpenVINO, cached on disk by what it computes.

Converting a tower takes seconds (about 12 s for EfficientNet-Lite1 on a busy 2-core machine), so
the converted graph is saved under the cache folder (`VLPIPE_CACHE`, default ~/.cache/vlpipe) and
reused by every later run and worker process; it is never committed. The key names the weights,
the input shape and the OpenVINO version, so new weights or a new runtime give a new graph; a
cached graph that does not load (a torn or stale file) is rebuilt with one line.
"""

from __future__ import annotations

import os
import sys
import uuid
import warnings
from collections.abc import Callable

import numpy as np
import torch


def cache_dir() -> str:
    home_cache = os.path.join(os.path.expanduser("~"), ".cache", "vlpipe")
    root = os.environ.get("VLPIPE_CACHE") or home_cache
    return os.path.join(root, "openvino")


def compile_module(
    build: Callable[[], torch.nn.Module],
    example: torch.Tensor,
    key: str,
    dtype: torch.dtype,
    threads: int | None = None,
) -> Callable[[np.ndarray], np.ndarray]:
    """`build()(x)` as a compiled OpenVINO call on float32 NCHW arrays (any batch size); `build`
    makes the fp32 torch module only when the cache has no graph for `key`, so a cached run
    never holds the torch weights. `dtype` bfloat16 (the model's resolved precision, bf16 only
    where the CPU has it natively) lets OpenVINO run in bf16; anything else runs fp32."""
    import openvino as ov

    core = ov.Core()
    path = os.path.join(cache_dir(), f"{key}-ov{ov.__version__.split('-')[0]}.xml")
    model = _load_cached(core, path)
    if model is None:
        model = _convert(build(), example, path)
    config = {
        "INFERENCE_PRECISION_HINT": "bf16" if dtype == torch.bfloat16 else "f32",
        "INFERENCE_NUM_THREADS": threads or torch.get_num_threads(),
        "PERFORMANCE_HINT": "LATENCY",  # one batch at a time, all of it on this worker's threads
    }
    compiled = core.compile_model(model, "CPU", config)
    call = lambda x: compiled(np.ascontiguousarray(x, dtype=np.float32))[0]  # noqa: E731
    # The first call sets up (about 0.2 s of CPU for CLIP B/32, whatever the batch): done here
    # on one image, so a worker that loads the tower in the background (vlpipe.worker.shard)
    # does it while its first batch decodes.
    call(example[:1].numpy())
    return call


def _load_cached(core, path: str):
    if not os.path.exists(path):
        return None
    try:
        return core.read_model(path)
    except Exception as exc:  # noqa: BLE001 - any unreadable cache entry is rebuilt
        print(f"vlpipe: cached graph {path} is unreadable ({type(exc).__name__}): rebuilding",
              file=sys.stderr)  # fmt: skip
        return None


def _convert(module: torch.nn.Module, example: torch.Tensor, path: str):
    """Convert and save under a temporary name, then rename: workers converting at once never
    read each other's half-written files."""
    import openvino as ov

    shape = [-1, *example.shape[1:]]
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracing's TracerWarnings are about Python control flow
        model = ov.convert_model(module.eval().float(), example_input=example, input=[shape])
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path[:-4]}.tmp-{uuid.uuid4().hex[:8]}.xml"
    ov.save_model(model, tmp, compress_to_fp16=False)
    os.replace(tmp[:-4] + ".bin", path[:-4] + ".bin")
    os.replace(tmp, path)
    return model
