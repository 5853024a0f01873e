"""Talk to a trained model in the terminal: an HF model dir (transformers) or a GGUF file (llama.cpp), in the
model's own chat template, the reply streamed as it is generated, the history kept until /reset."""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from gptpipe.errors import UserError
from gptpipe.gguf import GENERATION_TAG
from gptpipe.tasks import assistant, user

DEFAULT = Path("export/hf")  # the exported final model
HELP = "/reset starts a new conversation, /quit (or Ctrl-D) leaves"


@dataclass(frozen=True)
class Sampling:
    temperature: float = 0.7  # 0: greedy
    top_k: int = 50           # 0: no top-k cut
    top_p: float = 1.0
    max_new_tokens: int = 64
    seed: int = 0


class HF:
    """An HF model dir, generating with transformers: KV cache, a streamer fed from a generation thread."""

    def __init__(self, path: Path):
        from transformers.utils import logging

        from gptpipe.model import load_pretrained

        logging.disable_progress_bar()
        self.tok, self.model = load_pretrained(path)
        self.model.eval()
        self.context = self.model.config.max_position_embeddings

    def encode(self, messages: list[dict]) -> list[int]:
        return self.tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]

    def stream(self, messages: list[dict], s: Sampling) -> Iterator[str]:
        import torch
        from transformers import TextIteratorStreamer

        ids = torch.tensor([self.encode(messages)])
        streamer = TextIteratorStreamer(self.tok, skip_prompt=True, skip_special_tokens=True)
        sampling = dict(do_sample=True, temperature=s.temperature, top_k=s.top_k or None, top_p=s.top_p) \
            if s.temperature > 0 else dict(do_sample=False)
        failed = []

        def generate():
            try:
                torch.manual_seed(s.seed)
                self.model.generate(ids, attention_mask=torch.ones_like(ids), streamer=streamer,
                                    max_new_tokens=min(s.max_new_tokens, self.context - ids.shape[1]),
                                    eos_token_id=self.tok.eos_token_id, pad_token_id=self.tok.pad_token_id, **sampling)
            except Exception as e:  # noqa: BLE001 - re-raised in the caller's thread below
                failed.append(e)
                streamer.end()

        thread = threading.Thread(target=generate, daemon=True)
        thread.start()
        yield from streamer
        thread.join()
        if failed:
            raise failed[0]


class GGUF:
    """A GGUF file, generating with llama.cpp; its chat template is the one the export wrote into the file."""

    def __init__(self, path: Path):
        from llama_cpp import Llama
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        try:
            self.llm = Llama(str(path), n_ctx=context_length(path), verbose=False)
        except ValueError as e:
            raise UserError(f"{path}: llama.cpp cannot load it ({e}); re-export it (`dvc repro export`)") from None
        meta = self.llm.metadata
        if "tokenizer.chat_template" not in meta:
            raise UserError(f"{path}: the GGUF has no chat template; re-export it with `dvc repro export`")
        token = lambda key: self.llm.detokenize([int(meta[key])], special=True).decode()  # noqa: E731
        template = GENERATION_TAG.sub("", meta["tokenizer.chat_template"])  # exports before it was dropped
        self.format = Jinja2ChatFormatter(template, token("tokenizer.ggml.eos_token_id"),
                                          token("tokenizer.ggml.bos_token_id"))
        self.context = self.llm.n_ctx()

    def encode(self, messages: list[dict]) -> list[int]:
        return self.llm.tokenize(self.format(messages=messages).prompt.encode(), add_bos=False, special=True)

    def stream(self, messages: list[dict], s: Sampling) -> Iterator[str]:
        ids = self.encode(messages)
        self.llm.reset()
        for chunk in self.llm.create_completion(ids, max_tokens=min(s.max_new_tokens, self.context - len(ids)),
                                                temperature=s.temperature, top_k=s.top_k, top_p=s.top_p, min_p=0.0,
                                                repeat_penalty=1.0, seed=s.seed, stream=True):
            yield chunk["choices"][0]["text"]


def context_length(gguf_path: Path) -> int:
    """The context the model was trained for, from the GGUF's metadata (llama.cpp would round it up)."""
    from gguf import GGUFReader

    field = GGUFReader(gguf_path).fields.get("llama.context_length")
    if field is None:
        raise UserError(f"{gguf_path}: no llama.context_length in its metadata; re-export it (`dvc repro export`)")
    return int(field.contents())


def checked(path: Path) -> Path:
    """`path` if it exists and, being a file, starts with the GGUF magic; else a one-line UserError."""
    if not path.exists():
        hint = "run the pipeline first (`dvc repro`), or " if path == DEFAULT else ""
        raise UserError(f"{path}: no such model; {hint}give a model dir (export/hf, models/sft) or a .gguf file")
    if path.is_file():
        with open(path, "rb") as f:
            if f.read(4) != b"GGUF":
                raise UserError(f"{path}: not a GGUF file (it does not start with the GGUF magic); give a .gguf "
                                "from export/gguf/ or an HF model dir such as export/hf")
    return path


def load(path: Path | None) -> HF | GGUF:
    """The model at `path` (default: the exported final model), refused in one line when it is not one."""
    path = checked(path or DEFAULT)
    return GGUF(path) if path.is_file() else HF(path)


def fit(bot: HF | GGUF, history: list[dict], s: Sampling) -> list[dict]:
    """The latest turns of `history` that leave room in the context for at least a short reply."""
    room = bot.context - min(s.max_new_tokens, 16)
    for start in range(0, len(history), 2):  # drop whole exchanges, oldest first
        if len(bot.encode(history[start:])) <= room:
            return history[start:]
    raise UserError(f"that message is longer than the model's context ({bot.context} tokens); send a shorter one")


def reply(bot: HF | GGUF, history: list[dict], s: Sampling, out=sys.stdout) -> str:
    """Stream the model's reply to `history` to `out` and return it."""
    pieces = []
    for piece in bot.stream(fit(bot, history, s), s):
        pieces.append(piece)
        out.write(piece)
        out.flush()
    out.write("\n")
    return "".join(pieces).strip()


def repl(bot: HF | GGUF, name: str, s: Sampling) -> None:
    """The terminal conversation: one line per message; the history keeps every exchange until /reset."""
    print(f"chatting with {name} (context {bot.context} tokens); {HELP}", flush=True)
    history: list[dict] = []
    while True:
        try:
            line = input("you> ").strip()
        except EOFError:
            print()
            return
        if line == "/quit":
            return
        if line == "/reset":
            history = []
            print("(new conversation)")
        elif line.startswith("/"):
            print(f"unknown command {line}; {HELP}")
        elif line:
            print("model> ", end="", flush=True)
            try:
                history += [user(line), assistant(reply(bot, [*history, user(line)], s))]
            except UserError as e:
                print(f"\n{e}")
