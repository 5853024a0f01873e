"""flows/remote.py on real DVC repos and a real local-directory DVC remote: a two-stage pipeline, several clones.

The micro pipeline does the same across two Prefect workers in tests/e2e/test_distributed.py; this is the DVC
side alone, fast: what travels (dvc.lock entries, pulled inputs, pushed outputs) and what a clone concludes.
"""

import hashlib
import sys

import pytest
import yaml

from conftest import REPO, sh

sys.path.insert(0, str(REPO))  # flows/ lives in the checkout
from flows import remote  # noqa: E402
from flows.repro import RAN, SKIPPED  # noqa: E402
from gptpipe.errors import UserError  # noqa: E402

DVC_YAML = """\
stages:
  make:
    cmd: python -c "import sys; open('a.txt', 'w').write(sys.argv[1] * 3)" ${word}
    params: [word]
    outs:
      - a.txt:
          persist: true
  grow:
    cmd: python -c "import os; os.makedirs('out', exist_ok=True); open('out/b.txt', 'w').write(open('a.txt').read().upper() + os.environ.get('GPTPIPE_NODE_RANK', ''))"
    deps: [a.txt]
    outs:
      - out:
          persist: true
"""


def dvc(ws, *args, check=True):
    return sh([sys.executable, "-m", "dvc", *args], ws, check=check)


@pytest.fixture
def origin(tmp_path):
    """A git + DVC project with a local-directory remote `store` as its default (committed, like .dvc/config)."""
    ws, store = tmp_path / "origin", tmp_path / "store"
    ws.mkdir(), store.mkdir()
    (ws / "dvc.yaml").write_text(DVC_YAML)
    (ws / "params.yaml").write_text("word: ab\n")
    sh(["git", "init", "-q"], ws)
    dvc(ws, "init", "-q")
    dvc(ws, "remote", "add", "-d", "store", str(store))
    commit(ws)
    return ws


def commit(ws, what="."):
    sh(["git", "add", "-A", what], ws)
    sh(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "x", "--allow-empty"], ws)


def clone(src, dest):
    sh(["git", "clone", "-q", str(src), str(dest)], src.parent)
    return dest


def objects(store):
    return sorted(p for p in store.rglob("*") if p.is_file())


def test_a_stage_made_in_one_clone_is_restored_in_another(origin, tmp_path):
    a, b = clone(origin, tmp_path / "a"), clone(origin, tmp_path / "b")
    assert remote.repro_shared(a, "make", False, "store", {}) == RAN
    assert remote.repro_shared(a, "grow", False, "store", {}) == RAN
    made = remote.read_lock(a)
    for obj in objects(tmp_path / "store"):  # content-addressed and whole: every object's md5 is its name
        if not obj.name.endswith(".dir"):
            assert hashlib.md5(obj.read_bytes()).hexdigest() == obj.parent.name + obj.name

    # b has neither the outputs nor their dvc.lock entries: handed the entries, it pulls what `grow` reads
    # (a.txt) and restores `grow`'s own output instead of running it.
    assert remote.inputs(b, "grow") == ["a.txt"]
    assert remote.repro_shared(b, "grow", False, "store", {"make": made["make"], "grow": made["grow"]}) == remote.RESTORED
    assert (b / "out" / "b.txt").read_text() == "ABABAB" and (b / "a.txt").read_text() == "ababab"
    assert remote.read_lock(b) == made
    assert remote.repro_shared(b, "grow", False, "store", made) == SKIPPED  # already here: nothing to do

    # A changed param reruns where it runs, and the new outputs reach the remote for the next machine.
    (b / "params.yaml").write_text("word: cd\n")
    assert remote.repro_shared(b, "make", False, "store", made) == RAN
    assert remote.repro_shared(b, "grow", False, "store", remote.read_lock(b)) == RAN
    (a / "params.yaml").write_text("word: cd\n")
    assert remote.repro_shared(a, "grow", False, "store", remote.read_lock(b)) == remote.RESTORED
    assert (a / "out" / "b.txt").read_text() == "CDCDCD"


def test_another_node_pulls_the_inputs_runs_its_part_and_records_nothing(origin, tmp_path):
    a, b, c = (clone(origin, tmp_path / x) for x in "abc")
    assert remote.repro_shared(a, "make", False, "store", {}) == RAN
    made, before = remote.read_lock(a), objects(tmp_path / "store")
    # grow is computed nowhere yet: node 1 pulls what it reads and runs its command with GPTPIPE_NODE_RANK=1
    assert remote.join(b, "grow", 1, False, "store", {"make": made["make"]}) == RAN
    assert (b / "a.txt").read_text() == "ababab" and (b / "out" / "b.txt").read_text() == "ABABAB1"
    assert objects(tmp_path / "store") == before and "grow" not in remote.read_lock(b)  # node 0's job, not its
    # node 0 made it: handed that entry, another node has nothing to do (node 0 would skip or restore it too)
    assert remote.repro_shared(a, "grow", False, "store", made) == RAN
    assert remote.join(c, "grow", 1, False, "store", remote.read_lock(a)) == SKIPPED and not (c / "out").exists()
    assert remote.join(c, "grow", 1, True, "store", remote.read_lock(a)) == RAN  # forced: every node runs


def test_a_fresh_clone_with_only_the_remote_has_nothing_to_run(origin, tmp_path):
    a = clone(origin, tmp_path / "a")
    for stage in ("make", "grow"):
        remote.repro_shared(a, stage, False, "store", {})
    commit(a, "dvc.lock")  # dvc.lock is the index of what the remote holds: it travels by git
    fresh = clone(a, tmp_path / "fresh")
    dvc(fresh, "pull")
    out = dvc(fresh, "repro").stdout
    assert "Running stage" not in out and "up to date" in out, out


def test_bad_remotes_are_refused_in_one_line(origin, tmp_path):
    cases = [("nope", [], "'nope' is not a DVC remote"),
             ("gone", ["remote", "add", "gone", str(tmp_path / "not-mounted")], "does not exist"),
             ("cloud", ["remote", "add", "cloud", "s3://bucket/path"], "pip install 'gptpipe[s3]'")]
    for name, setup, words in cases:
        if setup:
            dvc(origin, *setup)
        with pytest.raises(UserError) as e:
            remote.check(origin, name)
        assert words in str(e.value) and name in str(e.value) and "\n" not in str(e.value), str(e.value)
    remote.check(origin, "store")


def test_a_different_checkout_is_refused(origin, tmp_path):
    a, b = clone(origin, tmp_path / "a"), clone(origin, tmp_path / "b")
    remote.check_same(b, remote.fingerprint(a), "a")
    (b / "params.yaml").write_text("word: zz\n")
    with pytest.raises(UserError, match="params.yaml differs"):
        remote.check_same(b, remote.fingerprint(a), "a")
    assert yaml.safe_load((b / "params.yaml").read_text()) == {"word": "zz"}
