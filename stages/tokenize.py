"""tokenize: train the BPE, save it (tiktoken + HF), encode the corpus into token shards (gptpipe/encode.py)."""
from gptpipe.errors import user_errors

with user_errors("tokenize"):
    from gptpipe import encode, stage

    stage.run("tokenize", encode.run, corpus="data/raw/corpus", tokenizer_dir="data/tokenizer", tokens_dir="data/tokens")
