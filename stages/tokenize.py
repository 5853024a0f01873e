"""tokenize: train the BPE, save it (tiktoken + HF), encode the corpus into token shards."""
import time

from gptpipe.errors import user_errors

with user_errors("tokenize"):
    from gptpipe.config import load_params
    from gptpipe.errors import require_file
    from gptpipe.io import atomic_dir, write_metrics
    from gptpipe.encode import run

    p = load_params()
    corpus = require_file("data/raw/corpus", made_by="download")
    t0 = time.perf_counter()
    with atomic_dir("data/tokenizer") as tok_dir, atomic_dir("data/tokens") as tokens_dir:
        stats = run(p.tokenizer, corpus=corpus, tokenizer_dir=tok_dir, tokens_dir=tokens_dir)
    write_metrics("tokenize", {**stats, "elapsed_s": round(time.perf_counter() - t0, 2), "device": "cpu"})
