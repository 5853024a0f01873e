"""docs/DESIGN.md's "adding a stage" checklist, followed to the letter on a copy of the micro build: a new
model stage made in its four places (a library module, a params section, a shim, a dvc.yaml entry) runs in
`dvc repro`, and evaluate, the report card and export's choice of model pick it up with nothing else changed."""

import json
import re
import shutil
import sys

import pytest
import yaml

from conftest import sh

pytestmark = pytest.mark.e2e


@pytest.fixture
def copy(micro_built, tmp_path):
    """A copy of the session's micro build."""
    ws = tmp_path / "ws"
    shutil.copytree(micro_built[0], ws, symlinks=True)
    return ws

MODULE = '''"""soup: sft's weights averaged with mid's (weight interpolation, as in WiSE-FT)."""

from pathlib import Path

import torch

from gptpipe.config import Params
from gptpipe.model import load_pretrained, save


def run(p: Params, proc, *, policy: Path, other: Path, out: Path) -> dict:
    tok, model = load_pretrained(policy, dtype=torch.float32)
    _, mix = load_pretrained(other, dtype=torch.float32)
    theirs = mix.state_dict()
    with torch.no_grad():
        for name, w in model.state_dict().items():
            w.mul_(1 - p.soup.alpha).add_(theirs[name], alpha=p.soup.alpha)
    save(model, tok, out)
    return {"alpha": p.soup.alpha}
'''

SHIM = '''"""soup: models/sft -> models/soup, averaged with models/mid (gptpipe/soup.py)."""
from gptpipe.errors import user_errors

with user_errors("soup"):
    from gptpipe import soup, stage

    stage.run("soup", soup.run, policy="models/sft", other="models/mid", out="models/soup")
'''

ENTRY = '''  soup:
    cmd: python -m stages.soup
    deps:
      - stages/soup.py
      - gptpipe/soup.py
      - gptpipe/config.py
      - gptpipe/model.py
      - models/sft
      - models/mid
    params:
      - soup
    outs:
      - models/soup:
          persist: true
    metrics:
      - metrics/soup.json:
          persist: true

'''


def test_a_stage_made_by_the_checklist_needs_nothing_more(copy):
    ws = copy
    # 1. a library module
    (ws / "gptpipe/soup.py").write_text(MODULE)
    # 2. a params section: its class beside the others, and its values
    config = (ws / "gptpipe/config.py").read_text()
    config = config.replace("class Params(Section):\n", "class Soup(Section):\n    alpha: float = Field(ge=0, le=1)\n\n\n"
                                                        "class Params(Section):\n    soup: Soup\n")
    (ws / "gptpipe/config.py").write_text(config)
    (ws / "params.yaml").write_text((ws / "params.yaml").read_text() + "\nsoup:\n  alpha: 0.25\n")
    # 3. a shim
    (ws / "stages/soup.py").write_text(SHIM)
    # 4. a dvc.yaml entry, in run order; evaluate scores the models it depends on
    dvc = (ws / "dvc.yaml").read_text().replace("  rl:\n", ENTRY + "  rl:\n", 1)
    dvc = re.sub(r"(  evaluate:\n(?:.*\n)*?    deps:\n)", r"\1      - models/soup\n", dvc, count=1)
    (ws / "dvc.yaml").write_text(dvc)

    # Every stage lists gptpipe/config.py, which now holds one more class: the next `dvc repro` reruns the whole
    # graph, soup in its place (the retraining is the micro build's, ~2 min here, so it runs only what soup needs).
    changed = re.findall(r"^(\w+):$", sh(["dvc", "status"], ws).stdout, re.M)
    assert set(changed) == set(yaml.safe_load((ws / "dvc.yaml").read_text())["stages"]), changed
    dag = sh(["dvc", "dag", "--dot"], ws).stdout
    assert '"sft" -> "soup"' in dag and '"soup" -> "evaluate"' in dag, dag
    for target in ("soup", "evaluate", "report"):
        sh(["dvc", "repro", "--single-item", target], ws)
    metrics = json.loads((ws / "metrics/soup.json").read_text())
    assert metrics["alpha"] == 0.25 and metrics["elapsed_s"] > 0 and metrics["device"].startswith("cpu")
    rows = json.loads((ws / "reports/eval/soup.json").read_text())["rows"]
    assert {r["metric"] for r in rows} >= {"bpb", "accuracy"}
    effect = [e for e in json.loads((ws / "reports/effects.json").read_text())["rows"] if e["stage"] == "soup"]
    assert effect and {e["before_model"] for e in effect} == {"sft"}, "its effect, against the model it starts from"
    header = next(line for line in (ws / "reports/report.md").read_text().splitlines() if line.startswith("| task"))
    models = [c.strip() for c in header.strip("|").split("|")][2:]
    assert models.index("dpo") < models.index("soup") < models.index("rl"), "the card shows it in run order"
    sh([sys.executable, "-m", "gptpipe.cli", "params", "--set", "export.model=soup"], ws)  # and it may be the exported model
