"""export: the final chat model (export.model) -> export/{hf,gguf,README.md}, each checked by a real client.

The checks go to reports/export.json with the files and their sizes; a failed check fails the stage and
leaves the previous export in place (gptpipe/export.py).
"""
from gptpipe.errors import user_errors

with user_errors("export"):
    from gptpipe import export, stage
    from gptpipe.artifacts import EVAL, EXPORT_REPORT

    stage.run("export", export.run, source="models/${export.model}", evals=EVAL,
              quantize="metrics/quantize.json", tasks="data/raw/tasks", out="export", report=EXPORT_REPORT)
