"""Security guards: nothing unsafe is loaded or executed, params paths stay in the workspace, servers stay local.

The source scan reads the AST, so `model.eval()` or `re.compile` are not mistaken for the builtins, and a
string that merely mentions `torch.load` is not a call. Each behavioural test plants a pickle whose
unpickling would create a marker file, and checks it was refused and the marker never appeared.
"""

import ast
import importlib.util
import json
import pickle
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import LlamaForCausalLM

from gptpipe import ckpt, dist, loop, model, pretrain, tasks
from gptpipe.config import Device, load_params
from gptpipe.errors import UserError
from gptpipe.post import common, reward, sft
from gptpipe.shards import META, Shards

from conftest import REPO

CPU = Device(type="cpu", threads=None, peak_flops=1e11)
SOURCES = [p for d in ("gptpipe", "stages", "flows") for p in sorted((REPO / d).rglob("*.py"))]
PICKLE_READERS = {"pickle.load", "pickle.loads", "cPickle.load", "cPickle.loads", "dill.load", "dill.loads",
                  "joblib.load", "marshal.load", "marshal.loads", "shelve.open", "pd.read_pickle",
                  "pandas.read_pickle"}
NOT_MODELS = re.compile(r"Tokenizer|Config|Processor|FeatureExtractor")  # from_pretrained of these reads JSON


# ---------------------------------------------------------------- the source scan
def dotted(node: ast.expr) -> str:
    """`torch.load` for the callee of torch.load(...); "" when it is not a plain dotted name."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    return ".".join([node.id, *reversed(parts)]) if isinstance(node, ast.Name) else ""


def unsafe_calls(source: str) -> list[str]:
    """`line: what` for every call that could unpickle, run code from data, or trust remote code."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call):
            continue
        name = dotted(node.func)
        kw = {k.arg: k.value for k in node.keywords}

        def const(key, value):
            return isinstance(kw.get(key), ast.Constant) and kw[key].value is value

        why = None
        if isinstance(node.func, ast.Name) and node.func.id in ("eval", "exec"):
            why = f"{node.func.id}() runs text as code"
        elif name in PICKLE_READERS:
            why = f"{name} unpickles"
        elif name == "torch.load" and not const("weights_only", True):
            why = "torch.load without weights_only=True unpickles"
        elif name.endswith("numpy.load") or name == "np.load":
            why = "np.load with allow_pickle=True unpickles" if const("allow_pickle", True) else None
        elif name in ("yaml.unsafe_load", "yaml.full_load", "yaml.unsafe_load_all", "yaml.full_load_all"):
            why = f"{name} builds Python objects from YAML"
        elif name in ("yaml.load", "yaml.load_all") and not re.search(r"Safe", ast.unparse(kw.get("Loader", ast.Constant(None)))):
            why = f"{name} without a SafeLoader"
        elif "trust_remote_code" in kw and not const("trust_remote_code", False):
            why = "trust_remote_code must stay False"
        elif "shell" in kw and not const("shell", False):
            why = "shell=True lets a value from params run as a command"
        elif name.endswith(".from_pretrained") and not NOT_MODELS.search(name) and not const("use_safetensors", True):
            why = f"{name} without use_safetensors=True may unpickle a pytorch_model.bin (use gptpipe.model.load_pretrained)"
        if why:
            found.append(f"{node.lineno}: {why}")
    return found


def test_the_scan_catches_every_pattern():
    bad = """
eval("1"); exec("x = 1"); pickle.loads(b""); pickle.load(f); joblib.load("m.pkl"); pd.read_pickle("x")
torch.load("x.pt"); torch.load("x.pt", weights_only=False); np.load("x.npy", allow_pickle=True)
yaml.load(s); yaml.load(s, Loader=yaml.FullLoader); yaml.unsafe_load(s); yaml.full_load(s)
AutoModelForCausalLM.from_pretrained(p, trust_remote_code=True); AutoTokenizer.from_pretrained(p, trust_remote_code=x)
AutoModelForCausalLM.from_pretrained(p); subprocess.run(cmd, shell=True)
"""
    assert len(unsafe_calls(bad)) == 17, unsafe_calls(bad)
    good = """
model.eval(); re.compile("x"); torch.compile(m); torch.load(p, map_location="cpu", weights_only=True)
yaml.safe_load(s); yaml.load(s, Loader=yaml.SafeLoader); yaml.load(s, Loader=yaml.CSafeLoader); np.load("x.npy")
AutoTokenizer.from_pretrained(p); AutoConfig.from_pretrained(p); x = "torch.load(p)"; json.loads(s)
AutoModelForCausalLM.from_pretrained(p, use_safetensors=True, trust_remote_code=False); subprocess.run(cmd)
"""
    assert unsafe_calls(good) == []


def test_no_unsafe_loading_or_code_execution_in_the_sources():
    assert len(SOURCES) > 30  # the scan sees the real tree
    found = [f"{p.relative_to(REPO)}:{hit}" for p in SOURCES for hit in unsafe_calls(p.read_text())]
    assert not found, "\n".join(found)


# ---------------------------------------------------------------- pickles that would run code
class Payload:
    """Unpickling this creates `marker`: stands in for any code an attacker's pickle would run."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (self.marker,)


def payload_is_live(marker: Path) -> None:
    """The payload does run when unpickled the unsafe way, so its absence below means it was refused."""
    pickle.loads(pickle.dumps(Payload(marker)))
    assert marker.exists()
    marker.unlink()


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")  # torch's note on the bare pickle below
def test_malicious_checkpoint_is_refused_where_pretrain_resumes(micro_data, tmp_path, monkeypatch):
    p, dirs = micro_data
    marker = tmp_path / "pwned"
    payload_is_live(marker)
    monkeypatch.chdir(tmp_path)
    # A checkpoint the resume code will pick: right params key, valid safetensors, poisoned optimizer state.
    train = Shards(dirs["tokens"], "train")
    key = ckpt.key(p.made_with("model", "pretrain"), dirs["tokens"] / META)
    m = LlamaForCausalLM(model.llama_config(p.model, train.vocab_size))
    step = ckpt.save(tmp_path / "ck", 20, m, loop.make_optimizer(m, p.pretrain, torch.device("cpu")),
                     {"key": key, "history": []})
    torch.save({"state": Payload(marker), "param_groups": []}, step / "optim.pt")

    with pytest.raises(UserError, match=r"step_0000020: unusable checkpoint \(UnpicklingError: .*\); delete .*"
                                        r"step_0000020 to train this stage from the start"):
        pretrain.run(p, dist.setup(CPU), tokens=dirs["tokens"], tokenizer=dirs["tokenizer"], out=None,
                     ckpt_root=tmp_path / "ck")
    assert not marker.exists()
    assert not (tmp_path / "plots").exists()  # refused before any training

    (step / "optim.pt").write_bytes(pickle.dumps(Payload(marker)))  # a bare pickle, not torch's zip format
    with pytest.raises(UserError, match="unusable checkpoint"):
        ckpt.load(step, m, loop.make_optimizer(m, p.pretrain, torch.device("cpu")), torch.device("cpu"))
    assert not marker.exists()


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_malicious_checkpoint_is_refused_where_a_trl_stage_resumes(micro_data, tiny_model, tmp_path, monkeypatch):
    """transformers loads a checkpoint's optimizer, scheduler and RNG states with torch.load(weights_only=True)."""
    p, _ = micro_data
    marker = tmp_path / "pwned"
    payload_is_live(marker)
    monkeypatch.chdir(tmp_path)
    chat = tmp_path / "sft.jsonl"
    chat.write_text("".join(json.dumps(r) + "\n" for r in tasks.build(["copy"], 40, 10, 0.2, 0.0, seed=0)["sft"]))
    p = p.model_copy(update={"sft": p.sft.model_copy(update={"ckpt_every": 2})})
    proc = dist.Proc(0, 1, 0, torch.device("cpu"))
    sft.train(p, proc, policy=tiny_model, conversations=chat, tokens=micro_data[1]["tokens"], out=tmp_path / "sft")  # the stage would delete its checkpoints
    (run,) = (tmp_path / "checkpoints/sft").iterdir()
    step = common.last_checkpoint(run).relative_to(tmp_path)
    shutil.copytree(step, tmp_path / "clean")
    for name in ("optimizer.pt", "scheduler.pt", "rng_state.pth"):
        shutil.rmtree(step)
        shutil.copytree(tmp_path / "clean", step)
        torch.save({"python": Payload(marker), "state": {}, "param_groups": []}, step / name)
        with pytest.raises(UserError, match=rf"{step}: unusable checkpoint \(UnpicklingError: .*\); delete {step} "
                                            "to train this stage from the start"):
            sft.train(p, proc, policy=tiny_model, conversations=chat, tokens=micro_data[1]["tokens"], out=tmp_path / "sft")
        assert not marker.exists(), name


def test_pickled_model_dir_is_refused_by_every_loader(tiny_model, tmp_path):
    marker = tmp_path / "pwned"
    payload_is_live(marker)
    d = tmp_path / "model"
    shutil.copytree(tiny_model, d)
    (d / "model.safetensors").unlink()
    torch.save({"model.embed_tokens.weight": Payload(marker)}, d / "pytorch_model.bin")
    for load in (model.load_pretrained, common.load_policy, reward.load):
        with pytest.raises(UserError, match=r"no model.safetensors \(only a pytorch_model.bin: a pickle, which "
                                            r"gptpipe never loads\); save the model with save_pretrained"):
            load(d)
    assert not marker.exists()

    shutil.copy(tiny_model / "model.safetensors", d)  # next to safetensors, a pickle is never even opened
    tok, m = model.load_pretrained(d)
    assert m.num_parameters() > 0 and not marker.exists()


# ---------------------------------------------------------------- paths from params
@pytest.mark.parametrize("key, value, refused", [
    ("data.hf.data_files", "/etc/passwd", True), ("data.hf.data_files", "~/data.jsonl", True),
    ("data.hf.data_files", "file:///etc/x.json", True), ("data.hf.data_files", "[data/a.jsonl, /tmp/b.jsonl]", True),
    ("data.hf.path", "../elsewhere", True), ("data.hf.path", "data/../../x", True),
    ("data.hf.data_files", "data/corpus/*.parquet", False), ("data.hf.data_files", "[a.jsonl, b/c.jsonl]", False),
    ("data.hf.data_files", "hf://datasets/org/x/*.parquet", False), ("data.hf.data_files", "https://x.org/a.json", False),
    ("data.hf.path", "HuggingFaceFW/fineweb-edu", False), ("data.hf.path", "parquet", False),
])
def test_paths_from_params_stay_in_the_workspace(key, value, refused):
    sets = [f"{key}={value}"]
    if not refused:
        load_params(REPO / "params.yaml", sets)
        return
    with pytest.raises(UserError) as e:
        load_params(REPO / "params.yaml", sets)
    line = str(e.value).splitlines()[-1].strip()
    assert line.startswith(f"{key}: ") and "is outside the workspace" in line, line
    assert "set allow_outside_paths: true in params.yaml" in line
    load_params(REPO / "params.yaml", [*sets, "allow_outside_paths=true"])  # the explicit opt-in


def test_chat_dataset_paths_are_confined_too():
    src = {"name": None, "split": "train", "streaming": False, "max_rows": 10, "path": "json"}
    hf = {"sft": src | {"data_files": "data/sft.jsonl", "messages_field": "messages"},
          "prefs": src | {"data_files": "data/prefs.jsonl", "prompt_field": None, "chosen_field": "chosen",
                          "rejected_field": "rejected", "heldout_fraction": 0.1},
          "rl": src | {"data_files": "/srv/rl.jsonl", "question_field": "q", "answer_field": "a",
                       "answer_pattern": "(.+)", "heldout_fraction": 0.1}}
    from gptpipe.config import deep_merge, read_yaml, validate

    raw = deep_merge(read_yaml(REPO / "params.yaml"), {"tasks": {"source": "hf", "hf": hf}})
    with pytest.raises(UserError, match=r"tasks.hf.rl.data_files: '/srv/rl.jsonl' is outside the workspace"):
        validate(raw)
    assert validate(raw | {"allow_outside_paths": True}).tasks.hf.rl.data_files == "/srv/rl.jsonl"


# ---------------------------------------------------------------- servers
def test_prefect_serves_on_localhost_only(monkeypatch):
    """`gptpipe flow/deploy/worker` run Prefect with these settings; a temporary server binds 127.0.0.1 itself."""
    from flows.commands import env as prefect_env

    for var in ("PREFECT_SERVER_API_HOST", "PREFECT_WORKER_WEBSERVER_HOST"):
        monkeypatch.delenv(var, raising=False)
    env = prefect_env()
    code = ("from prefect.settings import get_current_settings as s; c = s()\n"
            "print(c.server.api.host, c.worker.webserver.host)")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.split() == ["127.0.0.1", "127.0.0.1"]  # `prefect server start` and `worker --with-healthcheck`

    prefect_dir = Path(importlib.util.find_spec("prefect").submodule_search_locations[0])
    ephemeral = (prefect_dir / "server/api/server.py").read_text()
    assert re.search(r'"--host",\s*"127\.0\.0\.1"', ephemeral)  # the temporary server of `gptpipe flow run`
    assert not re.search(r"0\.0\.0\.0", (REPO / "flows" / "prefect.yaml").read_text())
