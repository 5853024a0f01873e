"""quantize: models/<export.model> -> models/quantized (torchao weight-only, safetensors).

Sizes and generation speed before and after go to metrics/quantize.json; the quality cost is measured
by the evaluate stage, which scores "quantized" beside its source model.
"""
from gptpipe.errors import user_errors

with user_errors("quantize"):
    from gptpipe import quantize, stage

    stage.run("quantize", quantize.run, source="models/${export.model}", out="models/quantized")
