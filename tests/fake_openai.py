"""A loopback OpenAI-compatible server with scripted replies, for tests and benchmarks.

It speaks just enough of ``POST /v1/chat/completions`` for the real ``openai`` client: a scripted
payload comes back as the message content, or as the arguments of the forced tool call when the
request forces one. It records every request (headers and JSON body) so tests can assert on what was
sent. Runs a stdlib ``ThreadingHTTPServer`` on ``127.0.0.1`` in a daemon thread (respx cannot intercept
openai 3.x, which uses httpx2).

    with FakeOpenAIServer() as server:
        server.push(FakeReply({"answer": 1}))
        server.push(FakeError(429), FakeReply("not json"))
        client = openai.OpenAI(base_url=server.base_url, api_key="x")
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class FakeReply:
    """A 200 reply. ``payload`` (str, or JSON-encoded if not a str) goes into content or the tool call."""

    payload: Any = None
    refusal: str | None = None
    delay: float = 0.0
    finish_reason: str = "stop"
    prompt_tokens: int = 100
    completion_tokens: int = 50


@dataclass
class FakeError:
    """An HTTP error reply. ``Retry-After-Ms: 1`` is sent so the client's retries are fast."""

    status: int = 500
    message: str = "fake server error"
    delay: float = 0.0


@dataclass
class FakeRaw:
    """A reply sent byte for byte: any status, content type and body (empty, HTML, truncated JSON).

    ``drip_s`` > 0 sends the body one byte at a time with that pause (a server that is alive but slow,
    which per-read timeouts never catch).
    """

    body: bytes = b""
    status: int = 200
    content_type: str = "application/json"
    drip_s: float = 0.0


@dataclass
class RecordedRequest:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]

    @property
    def mode(self) -> str:
        """Which structured-output mode the request used: json_schema, json_object, tool or text."""
        if self.body.get("tool_choice"):
            return "tool"
        fmt = self.body.get("response_format") or {}
        return fmt.get("type", "text")

    def text(self) -> str:
        """All text parts of all messages, joined (for assertions on the prompt)."""
        out = []
        for message in self.body.get("messages", []):
            content = message.get("content")
            if isinstance(content, str):
                out.append(content)
            elif isinstance(content, list):
                out.extend(part.get("text", "") for part in content if part.get("type") == "text")
        return "\n".join(out)

    def images(self) -> list[str]:
        """URLs of all image parts in the request."""
        urls = []
        for message in self.body.get("messages", []):
            content = message.get("content")
            if isinstance(content, list):
                urls.extend(p["image_url"]["url"] for p in content if p.get("type") == "image_url")
        return urls


Entry = FakeReply | FakeError | FakeRaw | Callable[[RecordedRequest], "FakeReply | FakeError | FakeRaw"]


@dataclass
class _State:
    script: deque = field(default_factory=deque)
    requests: list[RecordedRequest] = field(default_factory=list)
    default: Entry | None = None
    rejects: set[str] = field(default_factory=set)
    reject_status: int = 400
    latency_s: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)
    counter: int = 0


class FakeOpenAIServer:
    """Scripted OpenAI-compatible endpoint on 127.0.0.1 (see module docstring).

    ``rejects``: structured-output modes the server refuses (like servers without json_schema
    support), answered with ``reject_status`` and a message naming ``response_format``/``tools``;
    rejections do not consume script entries. ``default``: the entry used once the script is empty
    (otherwise such requests get a 500). ``latency_s``: added to every reply (benchmarks).
    """

    def __init__(
        self,
        *,
        default: Entry | None = None,
        rejects: set[str] | None = None,
        reject_status: int = 400,
        latency_s: float = 0.0,
    ) -> None:
        self.state = _State(default=default, rejects=set(rejects or ()), reject_status=reject_status)
        self.state.latency_s = latency_s
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(self.state))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.02,), daemon=True)

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/v1"

    @property
    def requests(self) -> list[RecordedRequest]:
        return self.state.requests

    def push(self, *entries: Entry) -> None:
        """Append scripted entries (consumed in order, one per request)."""
        with self.state.lock:
            self.state.script.extend(entries)

    @property
    def remaining(self) -> int:
        return len(self.state.script)

    def start(self) -> FakeOpenAIServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> FakeOpenAIServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _completion(req: RecordedRequest, reply: FakeReply, number: int) -> dict[str, Any]:
    payload = (
        reply.payload
        if isinstance(reply.payload, str) or reply.payload is None
        else json.dumps(reply.payload)
    )
    message: dict[str, Any] = {"role": "assistant", "content": payload, "refusal": reply.refusal}
    if req.mode == "tool" and reply.refusal is None and payload is not None:
        name = req.body["tool_choice"]["function"]["name"]
        message["content"] = None
        message["tool_calls"] = [
            {"id": f"call_{number}", "type": "function", "function": {"name": name, "arguments": payload}}
        ]
    return {
        "id": f"chatcmpl-fake-{number}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": req.body.get("model", "fake"),
        "choices": [{"index": 0, "message": message, "finish_reason": reply.finish_reason, "logprobs": None}],
        "usage": {
            "prompt_tokens": reply.prompt_tokens,
            "completion_tokens": reply.completion_tokens,
            "total_tokens": reply.prompt_tokens + reply.completion_tokens,
        },
    }


def _rejection(mode: str) -> str:
    if mode == "tool":
        return "tool_choice / tools are not supported by this server"
    return f"response_format.type must be 'text' or 'json_object' (got {mode!r})"


def _make_handler(state: _State) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:  # keep test output clean
            pass

        def _send(self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
            data = json.dumps(body).encode()
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (timeout tests)

        def _send_raw(self, entry: FakeRaw) -> None:
            try:
                self.send_response(entry.status)
                self.send_header("Content-Type", entry.content_type)
                self.send_header("Content-Length", str(len(entry.body)))
                self.end_headers()
                if entry.drip_s <= 0:
                    self.wfile.write(entry.body)
                    return
                for i in range(len(entry.body)):
                    self.wfile.write(entry.body[i : i + 1])
                    self.wfile.flush()
                    time.sleep(entry.drip_s)
            except (BrokenPipeError, ConnectionResetError, OSError):
                pass  # the client gave up

        def do_POST(self) -> None:  # noqa: N802 (http.server naming)
            length = int(self.headers.get("Content-Length", "0"))
            raw = self.rfile.read(length) if length else b"{}"
            try:
                body = json.loads(raw)
            except json.JSONDecodeError:
                body = {"_raw": raw.decode(errors="replace")}
            req = RecordedRequest(self.path, {k.lower(): v for k, v in self.headers.items()}, body)
            with state.lock:
                state.requests.append(req)
                state.counter += 1
                number = state.counter
                rejected = req.mode in state.rejects
                entry = None
                if not rejected:
                    entry = state.script.popleft() if state.script else state.default
            if not self.path.endswith("/chat/completions"):
                self._send(404, {"error": {"message": f"unknown path {self.path}", "type": "not_found"}})
                return
            if rejected:
                err = {"message": _rejection(req.mode), "type": "invalid_request_error"}
                self._send(state.reject_status, {"error": err}, {"retry-after-ms": "1"})
                return
            if callable(entry):
                entry = entry(req)
            if entry is None:
                entry = FakeError(500, "fake server: script exhausted")
            if isinstance(entry, FakeRaw):
                self._send_raw(entry)
                return
            time.sleep(state.latency_s + entry.delay)
            if isinstance(entry, FakeError):
                err = {"message": entry.message, "type": "server_error", "code": None}
                self._send(entry.status, {"error": err}, {"retry-after-ms": "1"})
                return
            self._send(200, _completion(req, entry, number))

    return Handler


# ------------------------------------------------------------------------------------------------
# A prompt-aware responder for whole sweeps: it reads the parts of our own prompt format it needs
# (last-batch node ids, UCB rows, slot count, search space, block-end marker) and answers a valid
# reply. Tests pass ``tamper`` to turn the n-th reply into a hostile one.

_SLOT_RE = re.compile(r"^### Slot (\d+): node (\d+) \(parent (\w+)\).*status (\w+)", re.M)
_UCB_RE = re.compile(r"^Node (\d+): UCB=[-\d.e+]+, parent=\w+, visits=\d+, .*status=(\w+)", re.M)
_RUNS_RE = re.compile(r"propose the next (\d+) runs")
_FLOAT_RE = re.compile(r"^- ([\w.]+): float in \[([-\d.e+]+), ([-\d.e+]+)\]", re.M)
_CHOICE_RE = re.compile(r"^- ([\w.]+): one of (.+?)(?: \(root value .*\))?$", re.M)


@dataclass
class PromptFacts:
    """What a reply must be consistent with, read from one request's prompt text."""

    last_batch: list[int]
    completed: list[int]  # completed nodes visible (last batch and UCB table)
    ucb_nodes: list[int]  # current block, best first
    n_runs: int
    block_end: bool
    float_keys: dict[str, tuple[float, float]]
    block_choices: dict[str, list[str]]
    user_input: bool


def prompt_section(text: str, title: str) -> str:
    """The body of the prompt's ``## <title>`` section, up to the next ``## `` heading ('' if absent).

    Not for the study protocol, whose own text has ``## `` headings.
    """
    _, found, rest = text.partition(f"## {title}\n")
    return rest.split("\n## ", 1)[0] if found else ""


def prompt_facts(req: RecordedRequest) -> PromptFacts:
    text = req.text()
    slots = _SLOT_RE.findall(text)
    ucb = _UCB_RE.findall(text)
    runs = _RUNS_RE.search(text)
    within, _, block_part = prompt_section(text, "Search space").partition("Block-level (simulation) keys")
    # choices are listed as ", "-separated override values; a list's items are joined by "," alone
    choices = {k: v.split(", ") for k, v in _CHOICE_RE.findall(block_part)}
    return PromptFacts(
        last_batch=[int(n) for _, n, _, _ in slots],
        completed=sorted(
            {int(n) for _, n, _, s in slots if s == "COMPLETED"}
            | {int(n) for n, s in ucb if s == "completed"}
        ),
        ucb_nodes=[int(n) for n, _ in ucb],
        n_runs=int(runs.group(1)) if runs else 0,
        block_end=">>> BLOCK END <<<" in prompt_section(text, "Position"),
        float_keys={k: (float(lo), float(hi)) for k, lo, hi in _FLOAT_RE.findall(within)},
        block_choices=choices,
        user_input="PENDING USER INSTRUCTIONS" in text,
    )


def valid_reply(facts: PromptFacts, number: int = 0) -> dict[str, Any]:
    """A reply that satisfies every constraint the prompt states (parents from the UCB table)."""
    parent = facts.ucb_nodes[0] if facts.ucb_nodes and not facts.block_end else None
    key, (low, high) = next(iter(facts.float_keys.items()))
    value = low * (high / low) ** ((number % 7 + 1) / 8) if low > 0 else (low + high) / 2
    proposals = []
    for slot in range(facts.n_runs):
        overrides = [{"key": key, "value": value}] if slot == 0 else None
        proposals.append(
            {
                "slot": slot,
                "parent": parent,
                "overrides": overrides,
                "strategy": "llm-exploit" if slot == 0 else "llm-replicate",
                "hypothesis": f"scripted hypothesis {number}.{slot}",
            }
        )
    reply: dict[str, Any] = {
        "observations": [
            {
                "node_id": n,
                "classification": "partial",
                "strategy": "exploit",
                "observation": f"scripted obs {n}",
            }
            for n in facts.last_batch
        ],
        "proposals": proposals,
        "memory": f"# Working memory\n- scripted reply {number}\n",
        "user_input_ack": "acknowledged by the fake model" if facts.user_input else None,
        "block_end": None,
    }
    if facts.block_end:
        next_sim = [{"key": k, "value": v[-1]} for k, v in facts.block_choices.items()]
        rules = [{"rule": "scripted rule -> keep lr near 1e-3", "evidence": facts.completed[-3:]}]
        reply["block_end"] = {
            "summary": f"scripted block summary {number}",
            "rules": rules,
            "rules_change": "added one scripted rule",
            "next_simulation": next_sim,
        }
    return reply


class SweepResponder:
    """Callable script entry: valid replies, except where ``tamper[i]`` rewrites the i-th request's.

    ``tamper`` maps a 0-based request index to ``f(reply_dict, facts) -> FakeReply | FakeError``.
    """

    def __init__(self, tamper: dict[int, Callable[[dict[str, Any], PromptFacts], Any]] | None = None) -> None:
        self.tamper = dict(tamper or {})
        self.count = 0
        self.seen: set[int] = set()
        self.lock = threading.Lock()

    def __call__(self, req: RecordedRequest) -> FakeReply | FakeError:
        with self.lock:
            index = self.count
            self.count += 1
        facts = prompt_facts(req)
        with self.lock:  # remember completed nodes across calls: rules may cite earlier batches
            self.seen.update(facts.completed)
            facts.completed = sorted(self.seen)
        reply = valid_reply(facts, index)
        if index in self.tamper:
            return self.tamper[index](reply, facts)
        return FakeReply(reply)
