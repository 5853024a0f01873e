"""Real chat data: three Hugging Face `datasets` sources normalized into the synthetic sets' row formats.

- `sft`: a column of {role, content} messages (e.g. HuggingFaceTB/smoltalk) -> sft.jsonl
- `prefs`: chosen/rejected, either whole conversations whose last message is the assistant's reply
  (e.g. trl-lib/ultrafeedback_binarized) or prompt + chosen + rejected strings -> prefs_{train,heldout}.jsonl
- `rl`: a question and an answer whose final answer a regex finds (e.g. openai/gsm8k, "#### 72")
  -> rl.jsonl and eval.jsonl, scored by the same exact-match checker as the synthetic tasks

Held-out rows are chosen by a hash of the prompt text (as for the synthetic tasks), so the split is
deterministic and a prompt never lands on both sides. Bad data fails with a UserError before anything is
written.
"""

from __future__ import annotations

import collections
import itertools
import json
import re
from pathlib import Path

from gptpipe import tasks
from gptpipe.config import HFRL, HFSFT, HFChatSource, HFPrefs, Params, TasksHF
from gptpipe.errors import UserError
from gptpipe.split import in_fraction
from gptpipe.tasks import assistant, user

ROLES = ("system", "user", "assistant")


def load(h: HFChatSource, key: str) -> list[dict]:
    """The first max_rows rows of one dataset; `key` (e.g. "tasks.hf.sft") names it in errors."""
    import datasets  # slow import: only on this path

    try:
        ds = datasets.load_dataset(h.path, h.name, split=h.split, data_files=h.data_files, streaming=h.streaming)
        rows = list(itertools.islice(ds, h.max_rows))
    except Exception as e:  # the hub, a bad builder name, missing or unreadable files: all user-fixable here
        why = f"{type(e).__name__}: {str(e) or 'no rows; are the files empty?'}"
        raise UserError(f"{key}: cannot load dataset {h.path!r} ({why}). Check {key}.path, .name, .split and "
                        ".data_files (offline: path json or parquet, local data_files)") from None
    if not rows:
        raise UserError(f"{key}: dataset {h.path!r} (split {h.split!r}) has no rows: check {key}.split / .data_files")
    return rows


def column(rows: list[dict], h: HFChatSource, key: str, field: str) -> str:
    """The column named by h.<field>, checked to exist."""
    name = getattr(h, field)
    if name not in rows[0]:
        raise UserError(f"{key}.{field}: column {name!r} not in dataset {h.path!r}; it has {sorted(rows[0])}. "
                        f"Set {key}.{field} to the right column")
    return name


def messages(x, where: str) -> list[dict]:
    """A list of {role, content} messages, checked, with any other keys dropped."""
    if not isinstance(x, list) or not x:
        raise UserError(f"{where}: expected a non-empty list of {{role, content}} messages, got {str(x)[:80]!r}")
    out = []
    for m in x:
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            raise UserError(f"{where}: bad message {str(m)[:80]!r}: each needs a role in {ROLES} and a text content")
        out.append({"role": m["role"], "content": m["content"]})
    return out


def reply(x, where: str) -> str:
    """The assistant's reply: a string, or the last message of a conversation (which must be the assistant's)."""
    if isinstance(x, str):
        return x
    m = messages(x, where)
    if m[-1]["role"] != "assistant":
        raise UserError(f"{where}: the last message must be the assistant's reply, got role {m[-1]['role']!r}")
    return m[-1]["content"]


def sft(h: HFSFT, key: str = "tasks.hf.sft") -> list[dict]:
    rows = load(h, key)
    col = column(rows, h, key, "messages_field")
    out = []
    for i, r in enumerate(rows):
        where = f"{key} ({h.path}) row {i}, column {col!r}"
        m = messages(r[col], where)
        if not any(x["role"] == "assistant" for x in m):
            raise UserError(f"{where}: the conversation has no assistant turn, so there is nothing to learn; "
                            "drop such rows or point messages_field at the full conversation")
        out.append({"task": "hf_sft", "messages": m})
    return out


def prefs(h: HFPrefs, seed: int, key: str = "tasks.hf.prefs") -> tuple[list[dict], list[dict]]:
    """(train, heldout) preference pairs: {"prompt": [...], "chosen": [assistant], "rejected": [assistant]}."""
    rows = load(h, key)
    c_col, r_col = column(rows, h, key, "chosen_field"), column(rows, h, key, "rejected_field")
    p_col = h.prompt_field and column(rows, h, key, "prompt_field")
    train, held = [], []
    for i, r in enumerate(rows):
        where = f"{key} ({h.path}) row {i}"
        chosen, rejected = reply(r[c_col], f"{where}, column {c_col!r}"), reply(r[r_col], f"{where}, column {r_col!r}")
        if p_col:  # explicit prompt: a string or a list of messages
            p = r[p_col]
            prompt = [user(p)] if isinstance(p, str) else messages(p, f"{where}, column {p_col!r}")
        elif isinstance(r[c_col], str):
            raise UserError(f"{where}: {c_col!r} is a string, so the prompt must come from a column of its own: "
                            f"set {key}.prompt_field")
        else:  # implicit prompt: everything before the reply, the same in chosen and rejected
            prompt = messages(r[c_col], f"{where}, column {c_col!r}")[:-1]
            if prompt != messages(r[r_col], f"{where}, column {r_col!r}")[:-1]:
                raise UserError(f"{where}: {c_col!r} and {r_col!r} must share the prompt (all but the last "
                                f"message); if the prompt is a column of its own, set {key}.prompt_field")
        if not prompt or not any(m["content"].strip() for m in prompt):
            raise UserError(f"{where}: empty prompt; conversations need the user's turn before the reply "
                            f"(or set {key}.prompt_field)")
        row = {"task": "hf_prefs", "prompt": prompt, "chosen": [assistant(chosen)], "rejected": [assistant(rejected)]}
        text = "\n".join(m["content"] for m in prompt)
        (held if in_fraction(h.heldout_fraction, seed, text) else train).append(row)
    return train, held


def rl(h: HFRL, seed: int, key: str = "tasks.hf.rl") -> tuple[list[dict], list[dict]]:
    """(rl, eval) rows {"prompt": [user], "answer": final answer}, the answer found by h.answer_pattern."""
    rows = load(h, key)
    q_col, a_col = column(rows, h, key, "question_field"), column(rows, h, key, "answer_field")
    pattern = re.compile(h.answer_pattern)
    train, held = [], []
    for i, r in enumerate(rows):
        where = f"{key} ({h.path}) row {i}"
        q, a = r[q_col], r[a_col]
        if not isinstance(q, str) or not q.strip():
            raise UserError(f"{where}, column {q_col!r}: the question is empty or not text ({str(q)[:80]!r})")
        m = pattern.search(str(a))
        answer = (m.group(1) if pattern.groups else m.group(0)).strip() if m else ""
        if not answer:
            raise UserError(f"{where}, column {a_col!r}: {key}.answer_pattern '{h.answer_pattern}' finds no final "
                            f"answer in {str(a)[-120:]!r}; fix the pattern (GSM8K: '####\\s*(.+)') or the column")
        (held if in_fraction(h.heldout_fraction, seed, q) else train).append(
            {"task": "hf_rl", "prompt": [user(q)], "answer": answer})
    return train, held


def build(hf: TasksHF, seed: int) -> dict[str, list[dict]]:
    """The same five sets as tasks.build, from the three datasets; every set must be non-empty."""
    prefs_train, prefs_heldout = prefs(hf.prefs, seed)
    rl_rows, eval_rows = rl(hf.rl, seed)
    sets = {"sft": sft(hf.sft), "prefs_train": prefs_train, "prefs_heldout": prefs_heldout, "rl": rl_rows,
            "eval": eval_rows}
    for name, rows in sets.items():
        if not rows:
            key = "tasks.hf." + {"sft": "sft", "prefs_train": "prefs", "prefs_heldout": "prefs"}.get(name, "rl")
            raise UserError(f"{key}: the {name} set is empty after the held-out split; "
                            f"raise {key}.max_rows or move {key}.heldout_fraction away from 0/1")
    return sets


def run(p: Params, proc, *, out: Path) -> dict:
    """The tasks stage: every set as out/<set>.jsonl, synthetic (gptpipe/tasks.py) or, with `tasks.source: hf`,
    from datasets, loaded and checked in full before anything is written."""
    t = p.tasks
    if t.source == "hf":
        sets = build(t.hf, t.seed)
    else:
        sets = tasks.build(t.names, t.train_per_task, t.heldout_per_task, t.heldout_fraction, t.multi_turn, t.seed,
                           n_rl=t.rl_per_task)
    for name, rows in sets.items():
        (out / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    per_task = collections.Counter(r["task"] for r in sets["eval"])
    print(f"tasks ({t.source}): " + ", ".join(f"{len(v)} {k}" for k, v in sets.items())
          + f"; held-out per task {dict(per_task)}")
    return {f"{k}_rows": len(v) for k, v in sets.items()}
