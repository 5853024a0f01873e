"""Synthetic, verifiable chat tasks: generated from a seed, checked by exact match.

Each task makes (question, answer, plausible wrong answer) triples. From them come SFT conversations
(some multi-turn), preference pairs (chosen = right, rejected = wrong), RL prompts with a checker, and
held-out evaluation sets. Train and held-out never share a question.

Every task can be learned from its training questions and then answered on held-out ones, so each one
measures what training did. That rules out two things the first version had:
- answers spelled with other tokens than the question: BPE makes " cake" [" c", "ake"] but a reply "cake"
  ["ca", "ke"], so "copy" and "last word" asked the model to respell words it never saw respelled (held-out
  accuracy stopped at 0.5 and 0.64). Words now stand where a reply would start (after a newline) and
  numbers tokenize the same with or without a space.
- questions whose answer no training question teaches: single-digit addition (100 questions, 20 held out,
  0 right for every model) and spelling backwards (letters inside tokens; 1 of 50 right at best).
Each has a question space of thousands or more, so held-out sets of hundreds per task stay disjoint.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from gptpipe.split import in_fraction

# Common short English words: the vocabulary of the word tasks (embedded so generation is offline).
WORDS = """able acid aged also area army away baby back ball band bank base bath bear beat been beer bell belt
best bird blow blue boat body bone book boot born boss both bowl bulk burn bush busy cake call calm came camp
card care case cash cast cell chat chip city club coal coat code cold come cook cool cope copy core cost crew
crop dark data date dawn days dead deal dear debt deep deny desk diet disk door dose down draw drew drop drug
dual duke dust duty each earn ease east easy edge else even ever exit face fact fail fair fall farm fast fate
fear feed feel fell file fill film find fine fire firm fish five flat flow food foot form fort four free from
fuel full fund gain game gate gave gear gene gift girl give glad goal goes gold golf gone good gray grew grey
grow gulf hair half hall hand hang hard harm hate have head hear heat held hell help here hero high hill hire
hold hole holy home hope host hour huge hung hunt hurt idea inch into iron item jack jane jean john join jump
jury just keen keep kent kept kick kill kind king knee knew know lack lady laid lake land lane last late lead
left less life lift like line link list live load loan lock logo long look lord lose loss lost love luck made
mail main make male many mark mass matt meal mean meat meet menu mere mike mile milk mill mind mine miss mode
mood moon more most move much must name navy near neck need news next nice nick nine none nose note okay once
only open oral over pace pack page paid pain pair palm park part pass past path peak pick pink pipe plan play
plot plug plus poll pool poor port post pull pure push race rail rain rank rare rate read real rear rely rent
rest rice rich ride ring rise risk road rock role roll roof room root rose rule rush safe said sake sale salt
same sand save seat seed seek seem seen self sell send sent ship shop shot show shut sick side sign site size
skin slip slow snow soft soil sold sole some song soon sort soul spot star stay step stop such suit sure take
tale talk tall tank tape task team tech tell tend term test text than that them then they thin this thus till
time tiny told tone tony took tool tour town tree trip true tune turn twin type unit upon used user vary vast
very vice view vote wage wait wake walk wall want ward warm wash wave ways weak wear week well went were west
what when whom wide wife wild will wind wine wing wire wise wish with wood word wore work yard yeah year your
zero zone""".split()

Triple = tuple[str, str, str]  # question, answer, wrong answer
PAIRS = ("prompt", "chosen", "rejected")  # the columns of a preference pair


def compare(r: random.Random) -> Triple:
    a, b = r.sample(range(100), 2)
    return f"Which is larger, {a} or {b}?", str(max(a, b)), str(min(a, b))


def copy(r: random.Random) -> Triple:
    a, b = r.sample(WORDS, 2)
    return f"Repeat after me:\n{a} {b}", f"{a} {b}", f"{b} {a}"


def last_word(r: random.Random) -> Triple:
    ws = r.sample(WORDS, 3)
    return "What is the last word of this list?\n" + "\n".join(ws), ws[-1], ws[0]


def next_number(r: random.Random) -> Triple:
    ns = r.sample(range(100), 4)
    i = r.randrange(3)
    return f"Which number comes after {ns[i]} in: {' '.join(map(str, ns))}?", str(ns[i + 1]), str(ns[i - 1] if i else ns[2])


def reverse(r: random.Random) -> Triple:
    ns = [str(n) for n in r.sample(range(100), 3)]
    return f"Say these numbers in reverse order: {' '.join(ns)}", " ".join(ns[::-1]), " ".join(ns[1:] + ns[:1])


TASKS: dict[str, Callable[[random.Random], Triple]] = {
    "compare": compare, "copy": copy, "last_word": last_word, "next_number": next_number, "reverse": reverse}


def check(completion: str, answer: str) -> bool:
    """Exact match of the first line of the reply, ignoring surrounding space and a final period."""
    lines = completion.strip().splitlines()
    return bool(lines) and lines[0].strip().rstrip(".").strip() == answer


def triples(task: str, n: int, heldout: bool, fraction: float, seed: int) -> list[Triple]:
    """Up to n distinct triples of one task on one side of the split (fewer if the task has fewer)."""
    r = random.Random(f"{seed}/{task}/{heldout}")
    out, seen = [], set()
    for _ in range(50 * n):
        q, a, w = TASKS[task](r)
        if q not in seen and in_fraction(fraction, seed, q) == heldout:
            seen.add(q)
            out.append((q, a, w))
            if len(out) == n:
                break
    return out


def user(q: str) -> dict:
    return {"role": "user", "content": q}


def assistant(a: str) -> dict:
    return {"role": "assistant", "content": a}


def build(names: list[str], n_train: int, n_heldout: int, heldout_fraction: float, multi_turn: float,
          seed: int, n_rl: int | None = None) -> dict[str, list[dict]]:
    """All the sets, as lists of JSON-ready rows in TRL's conversational formats.

    The preference and RL prompts (n_rl per task, default n_train) are training-side questions SFT never
    sees: after its epochs SFT answers its own questions far better than new ones (0.87 vs 0.48 on the
    default run), so preferences and rewards on them would teach the model to recite, not to generalize.
    """
    r = random.Random(seed)
    sets = {"sft": [], "prefs_train": [], "prefs_heldout": [], "rl": [], "eval": []}
    for task in names:
        pool = triples(task, n_train + (n_train if n_rl is None else n_rl), False, heldout_fraction, seed)
        train, fresh = pool[:n_train], pool[n_train:]
        held = triples(task, n_heldout, True, heldout_fraction, seed)
        for i, (q, a, w) in enumerate(train):
            messages = [user(q), assistant(a)]
            if r.random() < multi_turn:  # a second exchange in the same conversation
                q2, a2, _ = train[(i + 1) % len(train)]
                messages += [user(q2), assistant(a2)]
            sets["sft"].append({"task": task, "messages": messages})
        for q, a, w in fresh:
            sets["prefs_train"].append({"task": task, "prompt": [user(q)], "chosen": [assistant(a)],
                                        "rejected": [assistant(w)]})
            sets["rl"].append({"task": task, "prompt": [user(q)], "answer": a})
        for q, a, w in held:
            sets["prefs_heldout"].append({"task": task, "prompt": [user(q)], "chosen": [assistant(a)],
                                          "rejected": [assistant(w)]})
            sets["eval"].append({"task": task, "prompt": [user(q)], "answer": a})
    for rows in sets.values():
        random.Random(seed).shuffle(rows)
    return sets

