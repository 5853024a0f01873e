"""On-policy pairs: labeled by the checker, seeded, from the model's own replies."""

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from gptpipe import pairs, tasks
from gptpipe.config import Pairs
from gptpipe.dist import Proc
from gptpipe.sample import replies


def row(q, a, task="copy"):
    return {"task": task, "prompt": [tasks.user(q)], "answer": a}


def test_label_keeps_the_models_own_mistakes():
    rows = [row("a?", "x"), row("b?", "y"), row("c?", "z")]
    sampled = [["x", "w", "x.", "v", "w"],  # mixed: each distinct wrong reply against its right ones in turn
               ["y", "y"],                  # always right: no pair
               ["q", "r"]]                  # never right: the reference answer is chosen
    made, seen = pairs.label(rows, sampled)
    assert [(p["chosen"][0]["content"], p["rejected"][0]["content"]) for p in made] == [
        ("x", "w"), ("x.", "v"), ("z", "q"), ("z", "r")]
    assert seen == {"prompts": 3, "all_right": 1, "mixed": 1, "none_right": 1, "samples_right": 4}
    assert made[0]["prompt"] == rows[0]["prompt"] and made[2]["task"] == "copy"


def test_make_is_seeded_and_checker_labeled(tiny_model):
    tok, model = AutoTokenizer.from_pretrained(tiny_model), AutoModelForCausalLM.from_pretrained(tiny_model)
    sets = tasks.build(["copy", "compare"], 6, 1, 0.2, 0.0, seed=0)
    rows = [{k: r[k] for k in ("task", "prompt", "answer")} for r in sets["rl"]]
    s = Pairs(source="policy", samples=4, max_prompts=None, temperature=1.0, max_new_tokens=4, batch_size=5, seed=0)
    made, seen = pairs.make(s, model, tok, rows, "cpu")
    answer = {r["prompt"][0]["content"]: r["answer"] for r in rows}
    assert made and seen["prompts"] == len(rows) and 0 <= seen["sample_accuracy"] <= 1
    for p in made:
        a = answer[p["prompt"][0]["content"]]
        assert tasks.check(p["chosen"][0]["content"], a) and not tasks.check(p["rejected"][0]["content"], a)
    greedy = [g[0] for g in replies(model, tok, [r["prompt"] for r in rows], "cpu", s.batch_size, s.max_new_tokens)]
    wrong = {(r["prompt"][0]["content"], g) for r, g in zip(rows, greedy) if not tasks.check(g, r["answer"])}
    assert wrong and wrong <= {(p["prompt"][0]["content"], p["rejected"][0]["content"]) for p in made}, \
        "each wrong greedy answer (what evaluate scores) is rejected in a pair"
    assert seen["greedy_accuracy"] == 1 - len(wrong) / len(rows)
    assert pairs.make(s, model, tok, rows, "cpu") == (made, seen), "same seed, same pairs"
    other, _ = pairs.make(s.model_copy(update={"seed": 1}), model, tok, rows, "cpu")
    assert [p["rejected"] for p in other] != [p["rejected"] for p in made]


def test_source_tasks_keeps_the_tasks_pairs(micro_data, tmp_path):
    """pairs.source: tasks (e.g. a preference dataset loaded by the tasks stage): the pairs as they are."""
    src, out = tmp_path / "tasks", tmp_path / "out"
    src.mkdir(), out.mkdir()
    for name in ("train", "heldout"):
        (src / f"prefs_{name}.jsonl").write_text(f'{{"split": "{name}"}}\n')
    s = Pairs(source="tasks", samples=4, max_prompts=None, temperature=1.0, max_new_tokens=4, batch_size=5, seed=0)
    proc = Proc(0, 1, 0, torch.device("cpu"))
    assert pairs.run(micro_data[0].model_copy(update={"pairs": s}), proc, tasks=src, policy=None, out=out) == {"source": "tasks"}
    assert [(out / f"{n}.jsonl").read_text() for n in ("train", "heldout")] == ['{"split": "train"}\n',
                                                                              '{"split": "heldout"}\n']
