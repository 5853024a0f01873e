"""Byte-level BPE: trained with rustbpe, encoded in bulk with tiktoken, saved as an HF tokenizer too.

One vocabulary, two encoders: `tiktoken` (fast, parallel, used to build the token shards) and an HF
`tokenizer.json` with the chat special tokens and chat template (used by transformers/TRL through
stock `AutoTokenizer`). Both give the same ids on any text: tests/test_tokenizer.py checks it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import tiktoken

from gptpipe.errors import UserError

# GPT-4's split pattern with numbers split in runs of at most 2 digits (as nanochat): fewer, more
# reusable number tokens at small vocab sizes.
PATTERN = (r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,2}| ?[^\s\p{L}\p{N}]++[\r\n]*"""
           r"""|\s*[\r\n]|\s+(?!\S)|\s+""")

BOS, PAD = "<|bos|>", "<|pad|>"
SPECIALS = [BOS, "<|system_start|>", "<|system_end|>", "<|user_start|>", "<|user_end|>",
            "<|assistant_start|>", "<|assistant_end|>", PAD]
EOS = "<|assistant_end|>"  # what ends a chat turn, so generation stops there

# Message text that looks like a special token ("<|assistant_start|>" typed by a user, or found in data)
# must stay text, or a user could end their turn and speak as the assistant. The tokenizer matches special
# tokens anywhere in the rendered string, so the template breaks the match: an invisible WORD JOINER
# (U+2060) after each "<" that starts "<|".
TEXT = "{{ m['content'] | replace('<|', '<\u2060|') }}"

# One template for every stage. {% generation %} marks the assistant tokens, so TRL can put the SFT
# loss on them alone.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{%- for m in messages -%}"
    f"{{%- if m['role'] == 'system' -%}}<|system_start|>{TEXT}<|system_end|>"
    f"{{%- elif m['role'] == 'user' -%}}<|user_start|>{TEXT}<|user_end|>"
    "{%- elif m['role'] == 'assistant' -%}<|assistant_start|>"
    f"{{% generation %}}{TEXT}<|assistant_end|>{{% endgeneration %}}"
    "{%- else -%}{{ raise_exception('unknown role: ' ~ m['role']) }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}<|assistant_start|>{%- endif -%}"
)
RANKS, META = "ranks.tiktoken", "gptpipe_tokenizer.json"


def train(texts: Iterable[str], vocab_size: int) -> tiktoken.Encoding:
    """Train BPE merges on `texts` so that merges + 256 bytes + specials = vocab_size."""
    import rustbpe

    tok = rustbpe.Tokenizer()
    tok.train_from_iterator(iter(texts), vocab_size=vocab_size - len(SPECIALS), pattern=PATTERN)
    return encoding(dict(tok.get_mergeable_ranks()))


def encoding(ranks: dict[bytes, int]) -> tiktoken.Encoding:
    n = len(ranks)
    return tiktoken.Encoding("gptpipe", pat_str=PATTERN, mergeable_ranks=ranks,
                             special_tokens={s: n + i for i, s in enumerate(SPECIALS)})


def save(enc: tiktoken.Encoding, out: Path) -> None:
    """Write the tiktoken ranks and the equivalent HF tokenizer (+ config, chat template) to `out`."""
    import base64

    ranks = enc._mergeable_ranks
    (out / RANKS).write_text("".join(f"{base64.b64encode(t).decode()} {r}\n"
                                     for t, r in sorted(ranks.items(), key=lambda x: x[1])))
    (out / META).write_text(json.dumps({"pattern": PATTERN, "specials": SPECIALS,
                                        "vocab_size": enc.n_vocab}, indent=2))
    hf_tokenizer(ranks).save_pretrained(out)


def load(path: Path) -> tiktoken.Encoding:
    """The tiktoken encoder saved by `save`.

    Parsed here rather than with tiktoken's load_tiktoken_bpe, which caches files by their path
    string: two workspaces with the same relative path would share one (stale) vocabulary.
    """
    import base64

    try:
        meta = json.loads((Path(path) / META).read_text())
        lines = (Path(path) / RANKS).read_text().split()
        enc = encoding({base64.b64decode(t): int(r) for t, r in zip(lines[::2], lines[1::2])})
        same = meta["specials"] == SPECIALS and enc.n_vocab == meta["vocab_size"]
    except (OSError, ValueError, KeyError, TypeError) as e:  # missing, truncated or hand-edited files
        raise UserError(f"{path}: unreadable tokenizer ({type(e).__name__}: {e}); rerun `dvc repro tokenize`") from None
    if not same:
        raise UserError(f"{path} was saved with other special tokens or vocab; rerun `dvc repro tokenize`")
    return enc


def token_bytes(enc: tiktoken.Encoding) -> list[int]:
    """UTF-8 length of each token id; 0 for special tokens, which stand for no text (bits-per-byte)."""
    specials = set(enc._special_tokens.values())
    return [0 if i in specials else len(enc.decode_single_token_bytes(i)) for i in range(enc.n_vocab)]


def hf_tokenizer(ranks: dict[bytes, int]):
    """The same BPE as an HF fast tokenizer.

    tiktoken merges the adjacent pair whose concatenation has the lowest rank; HF BPE merges the
    pair that comes first in its merge list. Listing every split of each token ordered by the
    token's rank makes the two rules the same.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    byte_char = bytes_to_unicode()

    def s(b: bytes) -> str:
        return "".join(byte_char[x] for x in b)

    merges = []
    for tok, rank in sorted(ranks.items(), key=lambda x: x[1]):
        for i in range(1, len(tok)):
            a, b = tok[:i], tok[i:]
            if ranks.get(a, rank) < rank and ranks.get(b, rank) < rank:
                merges.append((rank, ranks[a], ranks[b], s(a), s(b)))
    merges.sort()
    bpe = models.BPE({s(t): r for t, r in ranks.items()}, [(a, b) for *_, a, b in merges],
                     fuse_unk=False, byte_fallback=False)
    tk = Tokenizer(bpe)
    tk.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tk.decoder = decoders.ByteLevel()
    tk.add_special_tokens(SPECIALS)
    return PreTrainedTokenizerFast(tokenizer_object=tk, bos_token=BOS, eos_token=EOS, pad_token=PAD,
                                   chat_template=CHAT_TEMPLATE,
                                   clean_up_tokenization_spaces=False)
