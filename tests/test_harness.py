"""lm-evaluation-harness on a tiny saved model with a task read from local files, and its input checks."""

import json
import subprocess
import sys

import pytest
import torch
from transformers import AutoTokenizer, LlamaForCausalLM

from gptpipe import cli, harness, model
from gptpipe.report import db
from gptpipe.errors import UserError

ITEMS = [{"question": f"Is {a} bigger than {b}?", "choices": ["yes", "no"], "answer": int(a <= b)}
         for a, b in [(3, 1), (2, 5), (9, 4), (1, 7), (8, 8), (6, 2), (0, 3), (7, 5), (4, 9), (5, 0)]]

TASK_YAML = """\
task: tiny_compare
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: answer
metric_list:
  - {{metric: acc, aggregation: mean, higher_is_better: true}}
  - {{metric: acc_norm, aggregation: mean, higher_is_better: true}}
"""


@pytest.fixture(scope="module")
def tiny(micro_data, tmp_path_factory):
    """(model dir, task dir): a random tiny Llama with our tokenizer, and a 10-item local task."""
    p, dirs = micro_data
    root = tmp_path_factory.mktemp("harness")
    tok = AutoTokenizer.from_pretrained(dirs["tokenizer"])
    torch.manual_seed(0)
    model.save(LlamaForCausalLM(model.llama_config(p.model, p.tokenizer.vocab_size)), tok, root / "tiny")
    tasks = root / "tasks"
    tasks.mkdir()
    (tasks / "items.jsonl").write_text("".join(json.dumps(x) + "\n" for x in ITEMS))
    (tasks / "tiny_compare.yaml").write_text(TASK_YAML.format(data=tasks / "items.jsonl"))
    return root / "tiny", tasks


def test_local_multiple_choice_task_through_the_cli_into_the_report(tiny, tmp_path, monkeypatch, capsys):
    """`gptpipe harness` writes reports/harness/<model>.json, which the report stage records with the evals."""
    model_dir, tasks = tiny
    monkeypatch.chdir(tmp_path)
    cli.main(["harness", str(model_dir), "--tasks", "tiny_compare", "--include-path", str(tasks)])
    rows = json.loads((tmp_path / "reports/harness/tiny.json").read_text())["rows"]
    assert sorted(r["metric"] for r in rows) == ["acc", "acc_norm"]
    for r in rows:
        assert r["model"] == "tiny" and r["task"] == "tiny_compare" and r["n"] == len(ITEMS)
        assert 0 <= r["value"] <= 1 and r["stderr"] is not None and r["stderr"] >= 0
    assert "tiny_compare" in capsys.readouterr().out
    (tmp_path / "params.yaml").write_text("{}\n")
    assert {(r["task"], r["metric"]) for r in db.collect(tmp_path)["evals"]} == {("tiny_compare", "acc"),
                                                                                ("tiny_compare", "acc_norm")}


def test_unknown_task_or_missing_folder_is_a_user_error(tiny):
    model_dir, tasks = tiny
    with pytest.raises(UserError, match="tiny_compair"):
        harness.run(model_dir, ["tiny_compair"], include_path=str(tasks))
    with pytest.raises(UserError, match="nowhere"):
        harness.run(model_dir, ["tiny_compare"], include_path=str(tasks / "nowhere"))


def test_cli_refuses_a_missing_model_dir_in_one_line(tmp_path):
    """`python -m gptpipe.cli harness` as a user runs it: a bad dir is one line and exit 2, no traceback."""
    r = subprocess.run([sys.executable, "-m", "gptpipe.cli", "harness", str(tmp_path / "nope"), "--tasks", "x"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "nope: not an HF model directory" in r.stderr and "Traceback" not in r.stderr
