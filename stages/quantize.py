"""quantize: models/<export.model> -> models/quantized (torchao weight-only, safetensors).

Sizes and generation speed before and after go to metrics/quantize.json; the quality cost is measured
by the evaluate stage, which scores "quantized" beside its source model.
"""
import time

from gptpipe.errors import user_errors

with user_errors("quantize"):
    from gptpipe import dist, quantize
    from gptpipe.artifacts import MODELS
    from gptpipe.config import load_params
    from gptpipe.errors import require_file
    from gptpipe.io import atomic_dir, write_metrics

    p = load_params()
    source = require_file(*MODELS[p.export.model])
    proc = dist.setup(p.device)
    t0 = time.perf_counter()
    with atomic_dir("models/quantized") as out:
        m = quantize.run(p.quantize, source, out, proc.device)
    print(f"quantize: {p.export.model} -> {m['scheme']}: {m['bytes_before'] / 1e6:.2f} -> {m['bytes_after'] / 1e6:.2f} MB "
          f"({m['bytes_before'] / m['bytes_after']:.2f}x smaller); generation {m['tokens_per_s_before']:.0f} -> "
          f"{m['tokens_per_s_after']:.0f} tokens/s on {proc.label}")
    write_metrics("quantize", {"model": p.export.model, **m, "device": proc.label,
                               "elapsed_s": round(time.perf_counter() - t0, 2)})
