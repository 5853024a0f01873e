"""`dvc repro` of the micro profile in a throwaway copy of the session's one build: builds, skips, reruns precisely."""

import json
import os
import re
import sys

import pytest
import yaml

from conftest import REPO, sh
from gptpipe import dist

pytestmark = pytest.mark.e2e
ALL = list(yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"])  # every stage, in run order


def ran(out: str) -> list[str]:
    return re.findall(r"Running stage '(\w+)'", out)


@pytest.fixture(scope="module")
def built(micro_built, tmp_path_factory):
    """A copy of the session's micro build (made from scratch by the speedrun flow, each stage through
    `dvc repro -s STAGE` in graph order), and the stages that build ran, in order."""
    import shutil

    ws = tmp_path_factory.mktemp("dvc") / "ws"
    shutil.copytree(micro_built[0], ws, symlinks=True)
    return ws, [stage for stage, outcome in micro_built[1].result().items() if outcome == "ran"]


@pytest.fixture
def copy(built, tmp_path):
    """A copy of the built workspace, for tests that change it in ways the others must not see."""
    import shutil

    ws = tmp_path / "ws"
    shutil.copytree(built[0], ws, symlinks=True)
    return ws


def test_repro_builds_everything(built):
    ws, stages = built
    assert sorted(stages) == sorted(ALL) and stages[-1] == "report"
    for path in ["data/raw/corpus/train.parquet", "data/tokenizer/tokenizer.json", "data/tokens/meta.json", "data/raw/tasks/sft.jsonl",
                 "models/base/model.safetensors", "models/base/config.json", "models/mid/model.safetensors",
                 "models/sft/model.safetensors", "adapters/lora/adapter_config.json", "models/lora/config.json",
                 "models/reward/model.safetensors", "models/dpo/model.safetensors", "models/rl/model.safetensors",
                 "models/quantized/model.safetensors", "reports/eval/quantized.json", "reports/export.json",
                 "export/hf/model.safetensors", "export/hf/tokenizer.json", "export/gguf/model-f32.gguf", "export/README.md",
                 "reports/eval/sft.json", "reports/eval/base.json", "reports/eval/rl.json", "reports/eval/reward.json",
                 "reports/gptpipe.duckdb", "reports/index.html", "reports/report.md", "plots/pretrain.csv",
                 "data/pairs/train.jsonl", "data/pairs/heldout.jsonl", "reports/effects.json"]:
        assert (ws / path).exists(), path
    for stage in ALL[:-1]:
        m = json.loads((ws / f"metrics/{stage}.json").read_text())
        assert "elapsed_s" in m and m["device"].startswith("cpu:")
        # a training stage says its precision, which follows the CPU kind: one reason two machines' cards differ
        trains = stage in ("pretrain", "midtrain", "sft", "lora", "reward", "dpo", "rl")
        assert m["device"].endswith(", bf16" if dist.cpu_bf16() else ", fp32") is trains, (stage, m["device"])
    assert not list(ws.glob("**/.*.tmp-*")), "a temporary output was left behind"
    assert "tokens_per_s" in sh(["dvc", "metrics", "show", "--json"], ws).stdout
    table = sh(["dvc", "metrics", "show", "metrics/eval"], ws).stdout.splitlines()  # the README's command
    assert "val_bpb" in table[0] and len(table) == 1 + len(list(ws.glob("metrics/eval/*.json")))
    assert max(map(len, table)) <= 160, "one screen wide"
    effects = {(e["stage"], e["metric"]) for e in json.loads((ws / "reports/effects.json").read_text())["rows"]}
    assert {("sft", "tasks/accuracy"), ("dpo", "tasks/accuracy"), ("rl", "tasks/accuracy"), ("sft", "val/bpb"),
            ("reward", "prefs/pairwise_accuracy")} <= effects
    assert "What each stage did" in (ws / "reports/index.html").read_text()
    assert not (ws / "wandb").exists(), "TRL stages log to logs/wandb, not ./wandb"


def test_model_beats_unigram_and_loads_with_stock_classes(built):
    ws, _ = built
    score = lambda model: json.loads((ws / f"metrics/eval/{model}.json").read_text())
    assert score("base")["val_bpb"] < score("unigram")["val_bpb"]
    code = ("from transformers import AutoModelForCausalLM, AutoTokenizer as T; import sys;"
            "m = AutoModelForCausalLM.from_pretrained('models/base'); t = T.from_pretrained('models/base');"
            "ids = t('def ', return_tensors='pt').input_ids; print(type(m).__name__, m.generate(ids, max_new_tokens=3).shape)")
    assert "LlamaForCausalLM" in sh([sys.executable, "-c", code], ws).stdout
    code = ("from transformers import AutoModelForCausalLM as C, AutoModelForSequenceClassification as S;"
            "from peft import PeftModel;"
            "print([type(C.from_pretrained(f'models/{m}')).__name__ for m in ('mid', 'sft', 'lora', 'dpo', 'rl')],"
            "type(S.from_pretrained('models/reward')).__name__,"
            "type(PeftModel.from_pretrained(C.from_pretrained('models/sft'), 'adapters/lora')).__name__)")
    out = sh([sys.executable, "-c", code], ws).stdout
    assert out.count("LlamaForCausalLM") == 5 and "LlamaForSequenceClassification" in out and "PeftModelForCausalLM" in out
    assert 0 <= score("reward")["prefs_pairwise_accuracy"] <= 1 and "tasks_accuracy" in score("rl")
    assert "val_bpb" in score("quantized") and "tasks_mc_accuracy" in score("rl") and "cloze_mc_accuracy" in score("base")


def test_quantized_and_exported_models_load_in_stock_clients(built):
    ws, _ = built
    q = json.loads((ws / "metrics/quantize.json").read_text())
    assert q["model"] == "rl" and q["bytes_after"] < q["bytes_before"]
    exported = json.loads((ws / "reports/export.json").read_text())
    assert exported["checks"] and all(c["passed"] for c in exported["checks"]), exported["checks"]
    assert {"hf safetensors", "gguf f32"} <= {f["format"] for f in exported["files"]}
    code = ("from transformers import AutoModelForCausalLM as C, AutoTokenizer as T;"
            "t = T.from_pretrained('export/hf'); m = C.from_pretrained('export/hf');"
            "ids = t.apply_chat_template([{'role': 'user', 'content': 'Repeat the word: blue'}], add_generation_prompt=True,"
            " return_tensors='pt', return_dict=True);"
            "print(type(C.from_pretrained('models/quantized').model.layers[0].mlp.up_proj.weight).__name__,"
            " repr(t.decode(m.generate(**ids, max_new_tokens=8)[0, ids['input_ids'].shape[1]:], skip_special_tokens=True)))")
    out = sh([sys.executable, "-c", code], ws).stdout
    assert "Int8" in out
    assert json.loads((ws / "export/hf/tokenizer_config.json").read_text())["tokenizer_class"] == "PreTrainedTokenizerFast"
    card = (ws / "export/README.md").read_text()
    assert "mc_accuracy" in card and "model-f32.gguf" in card and "lr:" in card
    page = (ws / "reports/index.html").read_text()
    assert "Quantization" in page and "llama.cpp" in page


def test_second_repro_does_nothing(built):
    ws, _ = built
    out = sh(["dvc", "repro"], ws).stdout
    assert ran(out) == [] and "up to date" in out


def test_pretrain_param_touches_nothing_upstream(built, copy):
    """`gptpipe run --dry` writes the param and shows DVC's plan without running it: pretrain, and none of the
    data stages before it. (DVC's dry run lists only the stages whose own params or deps changed; the rerun of
    everything downstream is shown for real by the dpo test below, without a third full build here.)"""
    out = sh([sys.executable, "-m", "gptpipe.cli", "run", "--dry", "--set", "pretrain.lr=0.002"], copy).stdout
    assert ran(out) == ["pretrain"]
    assert "lr: 0.002" in (copy / "params.yaml").read_text()
    assert (copy / "models/base/model.safetensors").read_bytes() == (built[0] / "models/base/model.safetensors").read_bytes()


def test_dpo_beta_reruns_dpo_and_downstream_only(built):
    """RL starts from DPO (rl.start) and the final model is RL's, so those rerun too; sft, lora, pairs and
    reward do not."""
    ws, _ = built
    out = sh([sys.executable, "-m", "gptpipe.cli", "run", "--set", "dpo.beta=0.2"], ws).stdout
    assert ran(out) == ["dpo", "rl", "quantize", "evaluate", "export", "report"]


def test_single_stage_rerun(built):
    ws, _ = built
    out = sh(["dvc", "repro", "-f", "-s", "evaluate"], ws).stdout
    assert ran(out) == ["evaluate"]
    assert "report" in sh(["dvc", "status"], ws).stdout  # its output changed, so report is now stale


def test_a_stage_reruns_from_a_plain_shell_with_the_same_bytes(copy):
    """README: `source .venv/bin/activate`, then `dvc repro -s STAGE`, with none of scripts/setup.sh's variables. A TRL
    stage logs offline to logs/wandb as params say (it went online and stopped for an API key), and the model dir it
    writes has the bytes it had (HF_HUB_OFFLINE was saved with the tokenizer), so nothing downstream goes stale."""
    params = yaml.safe_load((copy / "params.yaml").read_text())
    (copy / "params.yaml").write_text(yaml.safe_dump({**params, "wandb": {**params["wandb"], "mode": "offline"}}))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "HF_", "TRANSFORMERS_"))}
    sh(["dvc", "repro", "-f", "-s", "lora"], copy, env=env)
    assert list((copy / "logs/wandb").glob("offline-run-*")) and not (copy / "wandb").exists()
    status = sh(["dvc", "status"], copy).stdout
    assert "evaluate:" not in status and "report:" in status, status  # report reads the new metrics/lora.json


def test_bad_param_fails_before_work_and_keeps_outputs(built):
    ws, _ = built
    before = (ws / "models/base/model.safetensors").read_bytes()
    r = sh([sys.executable, "-m", "gptpipe.cli", "run", "--set", "model.n_head=3"], ws, check=False)
    assert r.returncode == 2 and "model" in r.stderr and "must divide" in r.stderr
    assert "n_head: 3" not in (ws / "params.yaml").read_text()
    good = (ws / "params.yaml").read_text()
    bad = yaml.safe_load(good)
    bad["pretrain"]["lr"] = -1
    (ws / "params.yaml").write_text(yaml.safe_dump(bad))
    try:
        r = sh(["dvc", "repro"], ws, check=False)
    finally:
        (ws / "params.yaml").write_text(good)
    assert r.returncode != 0 and "pretrain.lr" in r.stdout + r.stderr and "Traceback" not in r.stdout + r.stderr
    assert (ws / "models/base/model.safetensors").read_bytes() == before
    assert (ws / "metrics/pretrain.json").exists()  # a failed stage keeps its previous metrics too


@pytest.mark.parametrize("profile", ["gpu-1x", "speedrun-8xh100"])
def test_switching_to_a_scale_profile_plans_a_full_rerun(copy, profile):
    """On a workspace that already ran, a scale profile reruns every stage whose params it changes."""
    ws = copy
    before = (ws / "metrics/pretrain.json").read_text()
    said = sh([sys.executable, "-m", "gptpipe.cli", "profile", "use", profile], ws).stdout
    assert "MFU" in said and "~$" in said  # what its pretraining would cost
    out = sh(["dvc", "repro", "--dry"], ws).stdout
    # From micro, every stage's own params change (micro's small task sets and export checks too).
    assert sorted(ran(out)) == sorted(ALL)
    assert (ws / "metrics/pretrain.json").read_text() == before  # nothing ran
