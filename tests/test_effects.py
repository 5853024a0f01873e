"""Paired differences and the stage-effect table, on cases worked out by hand."""

import math

import pytest

from gptpipe import effects


def test_paired_difference_of_a_known_case():
    # d = after - before = [0, 0, 1, 1, -1]: mean 0.2, sample variance 2.8 / 4 = 0.7, stderr sqrt(0.7 / 5)
    diff, se = effects.paired([1, 1, 0, 0, 1], [1, 1, 1, 1, 0])
    assert diff == pytest.approx(0.2) and se == pytest.approx(math.sqrt(0.7 / 5))
    r = effects.accuracy("dpo", "tasks/accuracy", "sft", "dpo",
                         {"sft": [True, True, False, False, True], "dpo": [True, True, True, True, False]})
    assert (r["before"], r["after"], r["n"]) == (0.6, 0.8, 5)
    assert r["ci_low"] == pytest.approx(0.2 - 1.959964 * se) and r["ci_high"] == pytest.approx(0.2 + 1.959964 * se)
    assert not r["significant"] and not r["regression"]  # the interval spans 0


def test_weighted_difference_is_the_difference_of_the_totals():
    """Bits/byte over windows: the weighted mean difference is exactly overall bpb after - before."""
    a = [(10.0, 8), (30.0, 20), (5.0, 2)]
    b = [(12.0, 8), (33.0, 20), (4.0, 2)]
    r = effects.bpb("sft", "mid", "sft", {"mid": a, "sft": b})
    total = lambda w: sum(n for n, _ in w) / sum(x for _, x in w) / math.log(2)
    assert r["before"] == pytest.approx(total(a)) and r["after"] == pytest.approx(total(b))
    assert r["diff"] == pytest.approx(total(b) - total(a)) and r["n"] == 3 and r["ci_low"] < r["diff"] < r["ci_high"]


def test_significance_and_regression():
    same = [True] * 50 + [False] * 50
    better = [True] * 80 + [False] * 20
    up = effects.accuracy("rl", "tasks/accuracy", "sft", "rl", {"sft": same, "rl": better})
    down = effects.accuracy("rl", "tasks/accuracy", "sft", "rl", {"sft": better, "rl": same})
    assert up["significant"] and not up["regression"] and up["diff"] == pytest.approx(0.3)
    assert down["significant"] and down["regression"]
    # a guard metric may move within its tolerance: a 0.03 drop is no regression at tolerance 0.05
    small = effects.accuracy("sft", "cloze/mc_accuracy", "mid", "sft",
                             {"mid": [True] * 3 + [False] * 97, "sft": [False] * 100}, tolerance=0.05)
    assert not small["regression"]


def test_bpb_guard_is_relative():
    mid = [(10.0, 10)] * 20
    worse = [(12.5, 10), (12.7, 10)] * 10   # ~1.26x: within 1.3x
    much = [(15.0, 10), (15.2, 10)] * 10    # ~1.51x
    assert not effects.bpb("sft", "mid", "sft", {"mid": mid, "sft": worse}, ratio=1.3)["regression"]
    assert effects.bpb("sft", "mid", "sft", {"mid": mid, "sft": much}, ratio=1.3)["regression"]
    assert effects.bpb("sft", "mid", "sft", {"mid": mid, "sft": worse})["regression"]  # no guard: any rise beyond noise


def test_table_covers_every_stage():
    hits = lambda k: [True] * k + [False] * (10 - k)
    val = lambda x: [(x + 0.1 * i, 10) for i in range(4)]
    items = {m: {"val": val(v), "tasks": hits(k), "cloze": hits(c)} for m, v, k, c in
             [("base", 9, 0, 6), ("mid", 10, 2, 6), ("sft", 11, 6, 6), ("lora", 11, 6, 6), ("dpo", 11, 8, 6),
              ("rl", 11, 9, 6), ("quantized", 11, 9, 6)]}
    items["base"]["unigram_val"] = val(30)
    start = {"mid": ("midtrain", "base"), "sft": ("sft", "mid"), "lora": ("lora", "sft"), "dpo": ("dpo", "sft"),
             "rl": ("rl", "dpo"), "quantized": ("quantize", "rl")}
    rows = effects.table(items, start, reward=(0.8, 100))
    got = {(r["stage"], r["metric"]): r for r in rows}
    assert ("pretrain", "val/bpb") in got and got["pretrain", "val/bpb"]["before_model"] == "unigram"
    assert got["rl", "tasks/accuracy"]["before_model"] == "dpo"
    assert got["quantize", "tasks/accuracy"]["before_model"] == "rl"
    assert ("midtrain", "cloze/mc_accuracy") not in got and ("sft", "cloze/mc_accuracy") in got
    assert got["reward", "prefs/pairwise_accuracy"]["significant"]
    assert {r["stage"] for r in rows} == {"pretrain", "midtrain", "sft", "lora", "reward", "dpo", "rl", "quantize"}
