"""`gptpipe serve`: an OpenAI-compatible HTTP API and a web chat page for a trained model.

The API is llama-cpp-python's server (/v1/chat/completions streamed or not, /v1/completions, /v1/models)
on a GGUF file: one maintained server for both kinds of model, on llama.cpp's CPU kernels. An HF model
dir is written to an f32 GGUF first (a temporary file) and checked against transformers the way the
export stage checks its files. In front of the server, `Checks` answers what the model should never see
with a 4xx and a one-line message in OpenAI's error shape (a wrong API key, a body that is not JSON,
another model's name, no messages, max_tokens out of range), and gives omitted sampling settings
OpenAI's meaning (no repetition penalty, no top-k or min-p cut), so temperature 0 is greedy decoding
as transformers does it. The page at / is one file, no CDN.
"""

from __future__ import annotations

import html
import ipaddress
import json
import socket
import tempfile
from pathlib import Path

from gptpipe.errors import UserError

PAGE = Path(__file__).with_name("chat.html")
MAX_BODY = 1 << 20  # bytes; a chat request of this model's 256-token context is a few KB
OPENAI_DEFAULTS = {"temperature": 1.0, "top_p": 1.0, "top_k": 0, "min_p": 0.0, "repeat_penalty": 1.0}
GENERATES = ("/v1/chat/completions", "/v1/completions")


def loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def check_port(host: str, port: int) -> None:
    """Refuse a port that is taken before minutes of loading, not after."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        try:
            s.bind((host, port))
        except OSError as e:
            raise UserError(f"cannot listen on {host}:{port} ({e.strerror}); pick another with --port") from None


def as_gguf(model: Path, tmp: Path) -> Path:
    """`model` if it is a GGUF file; an HF dir written to tmp/model-f32.gguf and checked against transformers."""
    from gptpipe import gguf
    from gptpipe.chat import checked
    from gptpipe.model import load_pretrained

    if checked(model).is_file():
        return model
    tok, hf = load_pretrained(model)
    out = gguf.write(model, tmp / "model-f32.gguf", "f32")
    check = gguf.check(out, gguf.reference(tok, hf, tok.apply_chat_template(
        [{"role": "user", "content": "Hello"}], add_generation_prompt=True, tokenize=False), 8))
    if not check["greedy_agree"]:
        raise UserError(f"{model}: its GGUF does not decode like transformers ({check}); serve a file from "
                        "export/gguf/ instead")
    return out


def error(status: int, message: str, kind: str = "invalid_request_error") -> tuple[int, dict]:
    return status, {"error": {"message": message, "type": kind, "param": None, "code": None}}


class Checks:
    """ASGI middleware: every request to the API is checked (and its sampling defaults filled) here."""

    def __init__(self, app, model_id: str, context: int, api_key: str | None):
        self.app, self.model_id, self.context, self.api_key = app, model_id, context, api_key

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not scope["path"].startswith("/v1/"):
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        if self.api_key and headers.get(b"authorization", b"").decode() != f"Bearer {self.api_key}":
            return await respond(send, *error(401, "missing or wrong API key: send 'Authorization: Bearer KEY'",
                                              "authentication_error"))
        if scope["method"] != "POST" or scope["path"] not in GENERATES:
            return await self.app(scope, receive, send)
        body, more = b"", True
        while more:
            msg = await receive()
            body += msg.get("body", b"")
            more = msg.get("more_body", False)
            if len(body) > MAX_BODY:
                return await respond(send, *error(413, f"request body over {MAX_BODY} bytes"))
        try:
            request = self.check(scope["path"], body)
        except ValueError as e:
            return await respond(send, *(e.args[0] if isinstance(e.args[0], tuple) else error(400, str(e))))
        body, sent = json.dumps(request).encode(), False

        async def replay():  # the checked body once, then the client's own messages (its disconnect)
            nonlocal sent
            if sent:
                return await receive()
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        scope = {**scope, "headers": [(k, v) for k, v in scope["headers"] if k != b"content-length"]
                 + [(b"content-length", str(len(body)).encode())]}
        await self.app(scope, replay, send)

    def check(self, path: str, body: bytes) -> dict:
        """The request with OpenAI's defaults filled in; ValueError with a one-line message if it is bad."""
        try:
            r = json.loads(body)
        except ValueError as e:
            raise ValueError(f"the request body is not valid JSON ({e})") from None
        if not isinstance(r, dict):
            raise ValueError("the request body must be a JSON object")
        if r.get("model") not in (None, self.model_id):
            raise ValueError(error(404, f"model {r['model']!r} not found; this server serves {self.model_id!r} "
                                        "(GET /v1/models)", "not_found_error"))
        if path == "/v1/chat/completions":
            messages = r.get("messages")
            if not isinstance(messages, list) or not messages or not all(
                    isinstance(m, dict) and isinstance(m.get("content"), str) for m in messages):
                raise ValueError("messages must be a non-empty list of {role, content} objects")
        elif not isinstance(r.get("prompt"), str) or not r["prompt"]:
            raise ValueError("prompt must be a non-empty string")
        n = r.get("max_tokens")
        if n is not None and (not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= self.context):
            raise ValueError(f"max_tokens must be a whole number from 1 to {self.context} (the model's context), "
                             f"not {n!r}")
        for key in ("temperature", "top_p"):
            v = r.get(key)
            if v is not None and (not isinstance(v, int | float) or v < 0 or (key == "top_p" and not 0 < v <= 1)):
                raise ValueError(f"{key} out of range: {v!r}")
        return {**OPENAI_DEFAULTS, "max_tokens": min(256, self.context), **r}


async def respond(send, status: int, payload: dict) -> None:
    body = json.dumps(payload).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def build(gguf_path: Path, model_id: str, api_key: str | None):
    """The ASGI app: llama-cpp-python's server for the file, our checks in front, /health and the page."""
    from fastapi.responses import HTMLResponse
    from llama_cpp.server import app as server
    from llama_cpp.server.settings import ModelSettings, ServerSettings
    from starlette.middleware.cors import CORSMiddleware

    from jinja2 import TemplateError

    from gptpipe.chat import context_length

    try:
        app = server.create_app(server_settings=ServerSettings(api_key=api_key, interrupt_requests=False),
                                model_settings=[ModelSettings(model=str(gguf_path), model_alias=model_id,
                                                              n_ctx=context_length(gguf_path), verbose=False)])
    except TemplateError as e:  # an export from before GENERATION_TAG was dropped
        raise UserError(f"{gguf_path}: llama.cpp cannot render its chat template ({e}); re-export it with "
                        "`dvc repro export`, or serve the HF dir (export/hf)") from None
    except ValueError as e:
        raise UserError(f"{gguf_path}: llama.cpp cannot load it ({e}); re-export it (`dvc repro export`)") from None
    # Same-origin only: the server's wildcard CORS would let any web page the user opens use the model.
    app.user_middleware = [m for m in app.user_middleware if m.cls is not CORSMiddleware]
    context = server._llama_proxy(model_id).n_ctx()  # the model create_app loaded (its module-level proxy)
    app.add_middleware(Checks, model_id=model_id, context=context, api_key=api_key)
    page = PAGE.read_text().replace("{{MODEL}}", html.escape(model_id))
    app.add_api_route("/", lambda: HTMLResponse(page), methods=["GET"], include_in_schema=False)
    app.add_api_route("/health", lambda: {"status": "ok", "model": model_id, "context": context}, methods=["GET"])
    return app


def serve(model: Path, host: str, port: int, api_key: str | None, allow_remote: bool, model_id: str) -> None:
    import uvicorn

    if not loopback(host) and not allow_remote:
        raise UserError(f"--host {host} listens beyond this machine; add --allow-remote (and set --api-key) "
                        "to mean it")
    check_port(host, port)
    with tempfile.TemporaryDirectory(prefix="gptpipe-serve-") as tmp:
        app = build(as_gguf(model, Path(tmp)), model_id, api_key)
        print(f"serving {model} as {model_id!r} on http://{host}:{port}  (chat page at /, OpenAI API at /v1"
              f"{', API key required' if api_key else ''}); Ctrl-C stops", flush=True)
        uvicorn.run(app, host=host, port=port, log_level="warning")
