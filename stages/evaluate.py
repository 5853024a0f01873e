"""evaluate: every model in dvc.yaml -> reports/eval/<model>.json, and reports/effects.json (gptpipe/evaluate.py).

Language models: val bits-per-byte, held-out task accuracy by exact match of generated answers and by
multiple choice, val cloze, samples. The reward model: pairwise accuracy on held-out on-policy pairs.
reports/effects.json: what each stage did to its target metric, paired on the same questions and val windows.
"""
from gptpipe.errors import user_errors

with user_errors("evaluate"):
    from gptpipe import evaluate, stage
    from gptpipe.artifacts import EFFECTS, EVAL

    stage.run("evaluate", evaluate.run, tokens="data/tokens", tokenizer="data/tokenizer", tasks="data/raw/tasks",
              pairs="data/pairs", out=EVAL, effects_json=EFFECTS, scores="metrics/eval")
