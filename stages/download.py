"""download: the pretraining corpus as data/raw/corpus/{train,val}.parquet (gptpipe/corpus.py)."""
from gptpipe.errors import user_errors

with user_errors("download"):
    from gptpipe import corpus, stage

    stage.run("download", corpus.run, out="data/raw/corpus")
