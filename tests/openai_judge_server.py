# SPDX-License-Identifier: Apache-2.0
"""A test-only OpenAI-compatible chat server on 127.0.0.1, answering with an in-process
judge (the tiny Qwen2.5-VL), the way vLLM serves a model at ``/v1/chat/completions``.

It reads what our client sends (system turn, user turn of base64 ``image_url`` parts and
a text part; ``temperature``, ``seed``, ``max_tokens``, ``logprobs``/``top_logprobs``)
and asks the wrapped :class:`~srum.judge.backends.QwenVLJudge` the same question.
``faults`` is a list the test fills to make the next requests misbehave: ``("status",
code)`` answers that HTTP status, ``("sleep", seconds)`` delays the answer (a timeout)."""
from __future__ import annotations

import base64
import io
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import PIL.Image
import torch


class JudgeServer:
    def __init__(self, judge, served_name: str = "tiny-judge"):
        self.judge, self.served_name = judge, served_name
        self.faults: list[tuple[str, float]] = []
        self.requests: list[dict] = []
        self.headers: list[dict] = []
        self._lock = threading.Lock()          # one question at a time through the torch model
        handler = type("Handler", (_Handler,), {"owner": self})
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        # join the handlers on close: a handler still running torch at interpreter exit aborts it
        self.httpd.daemon_threads, self.httpd.block_on_close = False, True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()

    def next_fault(self):
        with self._lock:
            return self.faults.pop(0) if self.faults else None

    # ------------------------------------------------------------ answering
    def answer(self, body: dict) -> dict:
        system, images, prompt = _question(body["messages"])
        with self._lock:
            if body.get("logprobs"):
                return self._logprobs(images, prompt, system, int(body.get("top_logprobs") or 1))
            temperature = float(body.get("temperature") or 0.0)
            generator = torch.Generator().manual_seed(int(body["seed"])) if body.get("seed") is not None else None
            text = self.judge.generate([images], [prompt], system=system, max_new_tokens=int(body["max_tokens"]),
                                       do_sample=temperature > 0, temperature=temperature or 1.0,
                                       generator=generator)[0]
        return _completion(self.served_name, {"role": "assistant", "content": text}, None)

    def _logprobs(self, images, prompt, system, k: int) -> dict:
        judge = self.judge
        inputs = judge._inputs([images], [prompt], system)
        with torch.no_grad():
            logits = judge.model(**inputs, use_cache=False).logits[0, -1].float()
        logp = torch.log_softmax(logits, dim=-1)
        values, ids = logp.topk(min(k, logp.numel()))
        top = [{"token": judge.tokenizer.decode([int(i)]), "logprob": float(v), "bytes": None}
               for v, i in zip(values, ids)]
        content = [{"token": top[0]["token"], "logprob": top[0]["logprob"], "bytes": None, "top_logprobs": top}]
        return _completion(self.served_name, {"role": "assistant", "content": top[0]["token"]}, {"content": content})


class _Handler(BaseHTTPRequestHandler):
    owner: JudgeServer

    def log_message(self, *args):   # keep the test output quiet
        pass

    def _send(self, code: int, payload: dict) -> None:
        data = json.dumps(payload).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.owner.requests.append(body)
        self.owner.headers.append({k.lower(): v for k, v in self.headers.items()})
        if not self.path.endswith("/chat/completions"):
            return self._send(404, {"error": {"message": f"no route {self.path}"}})
        if body.get("model") != self.owner.served_name:
            return self._send(404, {"error": {"message": f"model {body.get('model')!r} does not exist"}})
        fault = self.owner.next_fault()
        if fault and fault[0] == "status":
            return self._send(int(fault[1]), {"error": {"message": f"injected HTTP {fault[1]}"}})
        if fault and fault[0] == "malformed":
            return self._send(200, {"id": "x", "object": "chat.completion", "created": 0, "model": "m", "choices": []})
        if fault and fault[0] == "sleep":
            threading.Event().wait(fault[1])
            return self._send(504, {"error": {"message": "too late"}})   # the client has given up by now
        try:
            self._send(200, self.owner.answer(body))
        except BrokenPipeError:   # the client gave up (timeout)
            pass


def _question(messages: list[dict]):
    system, images, prompt = None, [], None
    for message in messages:
        if message["role"] == "system":
            system = message["content"] if isinstance(message["content"], str) else message["content"][0]["text"]
            continue
        for part in message["content"]:
            if part["type"] == "image_url":
                data = part["image_url"]["url"].split(",", 1)[1]
                images.append(PIL.Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB"))
            elif part["type"] == "text":
                prompt = part["text"]
    return system, images, prompt


def _completion(model: str, message: dict, logprobs) -> dict:
    return {"id": "chatcmpl-test", "object": "chat.completion", "created": 0, "model": model,
            "choices": [{"index": 0, "message": message, "finish_reason": "stop", "logprobs": logprobs}],
            "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}}
