"""tasks: the chat sets as data/raw/tasks/*.jsonl: synthetic (gptpipe/tasks.py) or, with `tasks.source: hf`,
from Hugging Face datasets (gptpipe/chat_data.py).

A stage of its own, not part of download: changing a chat-task param must not re-download the corpus.
"""
from gptpipe.errors import user_errors

with user_errors("tasks"):
    from gptpipe import chat_data, stage

    stage.run("tasks", chat_data.run, out="data/raw/tasks")
