"""Shared fixtures: a tiny real corpus/tokenizer/shards built once, and throwaway DVC workspaces."""

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
WORKSPACE_FILES = ["dvc.yaml", "params.yaml", "stages", "gptpipe", "profiles", ".dvc", ".dvcignore", ".gitignore"]

# Tests run offline and quiet: no analytics, no hub, no wandb files.
os.environ.update(DVC_NO_ANALYTICS="1", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",
                  TRANSFORMERS_OFFLINE="1", WANDB_MODE="disabled", TOKENIZERS_PARALLELISM="false")
# Subprocesses (dvc, python -m stages.X) must find this interpreter's environment.
os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
# scripts/test.sh runs the suite on two xdist workers, one per core: each trains with one thread, so two at
# once do not fight over the cores.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
# The modules on the session's micro build (`micro_built`): under xdist they run on one worker, which builds it once.
ON_MICRO_BUILD = {"tests/e2e/test_dvc_repro.py", "tests/e2e/test_flows.py", "tests/e2e/test_new_stage.py"}


def module_of(nodeid: str) -> str:
    return nodeid.split("::", 1)[0]


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """Whole modules to a worker (module fixtures; e2e tests that build on each other in file order), in file
    order (the long e2e modules first); the modules of ON_MICRO_BUILD as one."""
    from xdist.scheduler import LoadScopeScheduling

    class ByModule(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module = module_of(nodeid)
            return "micro_built" if module in ON_MICRO_BUILD else module

    config.option.loadscopereorder = False
    return ByModule(config, log)


def pytest_collection_modifyitems(items):
    for i in items:
        if "micro_built" in i.fixturenames and module_of(i.nodeid) not in ON_MICRO_BUILD:
            raise pytest.UsageError(f"{i.nodeid} uses micro_built: add its module to ON_MICRO_BUILD in tests/conftest.py")


def sh(cmd: list[str], cwd: Path, check: bool = True, **kw) -> subprocess.CompletedProcess:
    r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, **kw)
    if check and r.returncode:
        raise AssertionError(f"{' '.join(cmd)} exited {r.returncode}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    return r


def make_workspace(dest: Path, profile: str = "micro", sets: tuple[str, ...] = ()) -> Path:
    """A copy of the project in `dest`, as a git + DVC repo, switched to `profile`."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in WORKSPACE_FILES:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__", "tmp"))
        else:
            shutil.copy2(src, dest / name)
    sh(["git", "init", "-q"], dest)
    sh([sys.executable, "-m", "gptpipe.cli", "profile", "use", profile], dest)
    if sets:
        from gptpipe import profile as prof
        prof.set_values(list(sets), dest / "params.yaml")
    sh(["git", "add", "-A"], dest)
    sh(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init"], dest)
    return dest


@pytest.fixture
def workspace(tmp_path):
    return make_workspace(tmp_path / "ws")


@pytest.fixture(scope="session")
def micro_data(tmp_path_factory):
    """data/raw/corpus, data/tokenizer and data/tokens of the micro profile, built with the library."""
    from gptpipe import corpus, encode
    from gptpipe.config import deep_merge, read_yaml, validate

    p = validate(deep_merge(read_yaml(REPO / "params.yaml"), read_yaml(REPO / "profiles/micro.yaml")))
    root = tmp_path_factory.mktemp("micro_data")
    dirs = {k: root / k for k in ("corpus", "tokenizer", "tokens")}
    for d in dirs.values():
        d.mkdir()
    corpus.build(p.data, dirs["corpus"])
    encode.run(p, None, corpus=dirs["corpus"], tokenizer_dir=dirs["tokenizer"], tokens_dir=dirs["tokens"])
    return p, dirs


@pytest.fixture(scope="session")
def tiny_model(micro_data, tmp_path_factory):
    """An HF model dir as the stages write it (safetensors, config, the micro tokenizer), randomly initialised."""
    import torch
    from transformers import AutoTokenizer, LlamaForCausalLM

    from gptpipe.model import llama_config, save

    p, dirs = micro_data
    out = tmp_path_factory.mktemp("tiny_model")
    torch.manual_seed(0)
    save(LlamaForCausalLM(llama_config(p.model, p.tokenizer.vocab_size)), AutoTokenizer.from_pretrained(dirs["tokenizer"]), out)
    return out


# ---------------------------------------------------------------- Prefect, and the one micro pipeline build
def wait_for(what: str, check, timeout: float, every: float = 0.5):
    """check() until it returns something truthy; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(every)


def stop(proc: subprocess.Popen) -> None:
    """Ctrl-C the process group, then kill it: a Prefect worker or server never outlives its fixture."""
    for sig, grace in [(signal.SIGINT, 15), (signal.SIGKILL, 10)]:
        if proc.poll() is not None:
            return
        os.killpg(proc.pid, sig)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def prefect_env(tmp_path_factory):
    """Environment of everything Prefect in this test session: its own home, a free port, no analytics."""
    port = free_port()
    e = dict(os.environ,
             PREFECT_HOME=str(tmp_path_factory.mktemp("prefect_home")),
             PREFECT_API_URL=f"http://127.0.0.1:{port}/api",
             PREFECT_SERVER_ANALYTICS_ENABLED="false",
             PREFECT_SERVER_UI_ENABLED="false",
             PREFECT_WORKER_QUERY_SECONDS="1",        # the worker polls every second, not every 10
             PREFECT_SERVER_SERVICES_FOREMAN_LOOP_SECONDS="2",  # the server looks for silent workers every 2 s, not 15
             PREFECT_LOGGING_TO_API_BATCH_INTERVAL="0.3")
    e.pop("GPTPIPE_HOME", None)
    return e


@pytest.fixture(scope="session")
def prefect_server(prefect_env, tmp_path_factory):
    """One `prefect server start` on 127.0.0.1 for the session (SQLite under PREFECT_HOME); this process talks
    to it too."""
    env = prefect_env
    log = tmp_path_factory.mktemp("server") / "server.log"
    port = env["PREFECT_API_URL"].split(":")[-1].split("/")[0]
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
                                 "--port", port], env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        import httpx

        def healthy():
            if proc.poll() is not None:
                raise AssertionError(f"prefect server exited {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                return httpx.get(env["PREFECT_API_URL"] + "/health", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for("the Prefect server to answer", healthy, timeout=120)
        # Prefect reads its settings when first imported: point this process at the server before that.
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update({k: v for k, v in env.items() if k.startswith("PREFECT_")})
        from prefect.settings import PREFECT_API_URL, temporary_settings

        with temporary_settings(updates={PREFECT_API_URL: env["PREFECT_API_URL"]}):
            yield env["PREFECT_API_URL"]
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    finally:
        stop(proc)


@pytest.fixture(scope="session")
def micro_built(prefect_server, tmp_path_factory):
    """The micro pipeline built once for the session, from scratch, by the speedrun flow (each stage a task that
    runs `dvc repro -s STAGE`): (workspace, the flow run's state). The flow and the dvc tests each work on a copy.
    The workspace is a whole checkout (flows/ too), so a deployment's worker can run its code."""
    sys.path.insert(0, str(REPO))  # flows/ lives in the checkout, beside the installed gptpipe package
    from flows.speedrun import speedrun

    ws = make_workspace(tmp_path_factory.mktemp("built") / "ws", sets=("flow.retry_delay_s=0",))
    shutil.copytree(REPO / "flows", ws / "flows", ignore=shutil.ignore_patterns("__pycache__"))
    return ws, speedrun(workspace=str(ws), return_state=True)
