"""The LLM client against the loopback fake server: ladder, re-asks, retries, timeouts, redaction."""

from __future__ import annotations

import json
from typing import Literal

import pydantic
import pytest

from hydra_llm.llm import LLMClient, LLMReplyInvalid, LLMSettings, LLMUnavailable, Redactor
from hydra_llm.llm.structured import extract_json
from tests.fake_openai import FakeError, FakeOpenAIServer, FakeRaw, FakeReply

SECRET = "sk-test-0123456789abcdefSECRET"


class Mutation(pydantic.BaseModel):
    parent: int | None
    key: Literal["lr", "l1"]
    value: float
    rationale: str


GOOD = {"parent": 3, "key": "lr", "value": 0.01, "rationale": "raise the rate"}
MESSAGES = [{"role": "system", "content": "You tune."}, {"role": "user", "content": "Propose."}]


@pytest.fixture
def server():
    with FakeOpenAIServer() as srv:
        yield srv


@pytest.fixture
def key_env(monkeypatch):
    monkeypatch.setenv("HYDRA_LLM_TEST_KEY", SECRET)
    return "HYDRA_LLM_TEST_KEY"


def make_client(server, key_env, tmp_path, **kw) -> LLMClient:
    settings = LLMSettings(model="fake-model", base_url=server.base_url, api_key_env=key_env, **kw)
    return LLMClient(settings, record_dir=tmp_path / "llm")


def test_good_reply_uses_json_schema_and_records_usage(server, key_env, tmp_path):
    server.push(FakeReply(GOOD, prompt_tokens=11, completion_tokens=7))
    client = make_client(server, key_env, tmp_path)
    result = client.complete(MESSAGES, Mutation, tag="unit")
    assert result.value == Mutation(**GOOD)
    assert result.mode == "json_schema"
    req = server.requests[0]
    assert req.body["response_format"]["type"] == "json_schema"
    schema = req.body["response_format"]["json_schema"]["schema"]
    assert schema["additionalProperties"] is False and set(schema["required"]) == set(GOOD)
    assert req.headers["authorization"] == f"Bearer {SECRET}"  # the key reaches the server...
    (call,) = result.calls
    assert call["status"] == "ok" and call["prompt_tokens"] == 11 and call["completion_tokens"] == 7
    assert call["latency_s"] >= 0
    saved = (tmp_path / "llm" / call["file"]).read_text()
    assert "raise the rate" in saved and SECRET not in saved  # ...but never the disk


@pytest.mark.parametrize(
    ("bad", "expected"),
    [
        ("{not json", "not valid JSON"),
        (json.dumps({**GOOD, "key": "momentum"}), "key"),
        (json.dumps({k: v for k, v in GOOD.items() if k != "value"}), "value"),
    ],
)
def test_invalid_reply_is_reasked_with_the_error(server, key_env, tmp_path, bad, expected):
    server.push(FakeReply(bad), FakeReply(GOOD))
    client = make_client(server, key_env, tmp_path)
    result = client.complete(MESSAGES, Mutation)
    assert result.value.value == 0.01
    assert [c["status"] for c in result.calls] == ["invalid", "ok"]
    assert expected in result.calls[0]["error"]
    reask = server.requests[1].body["messages"]
    assert reask[-2]["role"] == "assistant" and reask[-2]["content"] == bad
    assert "rejected" in reask[-1]["content"] and expected in reask[-1]["content"]


def test_reply_still_invalid_after_reasks_raises(server, key_env, tmp_path):
    server.push(FakeReply("nope"), FakeReply("still nope"))
    client = make_client(server, key_env, tmp_path, max_reasks=1)
    with pytest.raises(LLMReplyInvalid) as info:
        client.complete(MESSAGES, Mutation)
    assert len(info.value.calls) == 2 and len(server.requests) == 2


def test_fenced_json_in_text_is_extracted():
    assert extract_json('Sure!\n```json\n{"a": 1}\n```\nbye') == {"a": 1}
    assert extract_json('The answer is {"a": {"b": [1, 2]}} as requested') == {"a": {"b": [1, 2]}}


@pytest.mark.parametrize(
    ("rejects", "status", "mode"),
    [
        ({"json_schema"}, 400, "json_object"),  # llama-cpp-python-like (it answers 500, see next)
        ({"json_schema"}, 500, "json_object"),
        ({"json_schema", "json_object"}, 422, "tool"),
        ({"json_schema", "json_object", "tool"}, 400, "text"),
    ],
)
def test_ladder_steps_down_once_and_caches(key_env, tmp_path, rejects, status, mode):
    with FakeOpenAIServer(rejects=rejects, reject_status=status, default=FakeReply(GOOD)) as server:
        client = make_client(server, key_env, tmp_path, max_retries=1)
        assert client.complete(MESSAGES, Mutation).mode == mode
        n_first = len(server.requests)
        assert client.complete(MESSAGES, Mutation).mode == mode
        assert len(server.requests) == n_first + 1  # detected once, then cached
        assert server.requests[-1].mode == mode
        if mode in ("json_object", "text"):
            assert "JSON schema" in server.requests[-1].text()  # the schema goes into the prompt
        # A new client on the same record folder (a resumed sweep) starts at the cached mode.
        again = make_client(server, key_env, tmp_path)
        assert again.mode == mode
        cached = json.loads((tmp_path / "llm" / "capabilities.json").read_text())
        assert cached["mode"] == mode and set(cached["rejected"]) == rejects


def test_pinned_mode_does_not_step_down(key_env, tmp_path):
    with FakeOpenAIServer(rejects={"json_schema"}) as server:
        client = make_client(server, key_env, tmp_path, structured_output="json_schema", max_retries=0)
        with pytest.raises(LLMUnavailable, match="response_format"):
            client.complete(MESSAGES, Mutation)


@pytest.mark.parametrize("status", [429, 500, 503])
def test_transient_errors_are_retried(server, key_env, tmp_path, status):
    server.push(FakeError(status), FakeError(status), FakeReply(GOOD))
    client = make_client(server, key_env, tmp_path, max_retries=2)
    assert client.complete(MESSAGES, Mutation).value.key == "lr"
    assert len(server.requests) == 3


def test_errors_beyond_retries_raise_unavailable_without_the_key(server, key_env, tmp_path):
    server.push(*[FakeError(500, f"boom {SECRET}")] * 3)
    client = make_client(server, key_env, tmp_path, max_retries=1)
    with pytest.raises(LLMUnavailable) as info:
        client.complete(MESSAGES, Mutation)
    assert SECRET not in str(info.value) and SECRET not in json.dumps(info.value.calls)
    for path in (tmp_path / "llm").iterdir():
        assert SECRET not in path.read_text()


def test_timeout_raises_unavailable(server, key_env, tmp_path):
    server.push(FakeReply(GOOD, delay=1.5))
    client = make_client(server, key_env, tmp_path, timeout=0.3, max_retries=0)
    with pytest.raises(LLMUnavailable, match="[Tt]imeout|timed out"):
        client.complete(MESSAGES, Mutation)


def test_unreachable_endpoint_raises_unavailable(key_env, tmp_path):
    settings = LLMSettings(model="m", base_url="http://127.0.0.1:9/v1", api_key_env=key_env, max_retries=0)
    with pytest.raises(LLMUnavailable, match="unreachable"):
        LLMClient(settings).complete(MESSAGES, Mutation)


@pytest.mark.parametrize(
    "reply",
    [FakeReply(""), FakeReply(None), FakeReply(None, refusal="I can't help with that")],
    ids=["empty", "null", "refusal"],
)
def test_empty_or_refusal_is_reasked(server, key_env, tmp_path, reply):
    server.push(reply, FakeReply(GOOD))
    client = make_client(server, key_env, tmp_path)
    result = client.complete(MESSAGES, Mutation)
    assert result.value.parent == 3
    assert "empty" in result.calls[0]["error"] or "refusal" in result.calls[0]["error"]


def test_check_callback_errors_trigger_a_reask(server, key_env, tmp_path):
    server.push(FakeReply({**GOOD, "parent": 99}), FakeReply(GOOD))
    client = make_client(server, key_env, tmp_path)
    result = client.complete(
        MESSAGES, Mutation, check=lambda m: [] if m.parent == 3 else ["parent 99 unknown"]
    )
    assert result.value.parent == 3 and "parent 99 unknown" in server.requests[1].text()


def test_bad_settings_name_the_key_and_allowed_values(key_env):
    with pytest.raises(ValueError, match="structured_output.*allowed: auto, json_schema"):
        LLMSettings(model="m", structured_output="xml").check()
    with pytest.raises(ValueError, match="api_key_env.*NAME"):
        LLMSettings(model="m", api_key_env=SECRET).check()
    with pytest.raises(ValueError, match="temperature"):
        LLMSettings(model="m", temperature=5).check()
    # NaN passes every comparison; a reply budget of 0 tokens would fail every call
    with pytest.raises(ValueError, match=r"^llm\.timeout=nan must be a finite number > 0 seconds$"):
        LLMSettings(model="m", timeout=float("nan")).check()
    with pytest.raises(ValueError, match=r"^llm\.deadline=inf must be a finite number > 0 seconds$"):
        LLMSettings(model="m", deadline=float("inf")).check()
    with pytest.raises(ValueError, match=r"^llm\.max_tokens=0 must be >= 1, or null"):
        LLMSettings(model="m", max_tokens=0).check()
    LLMSettings(model="m", max_tokens=None).check()


def test_missing_key_without_base_url_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("HYDRA_LLM_ABSENT_KEY", raising=False)
    with pytest.raises(ValueError, match="HYDRA_LLM_ABSENT_KEY is unset"):
        LLMClient(LLMSettings(model="m", api_key_env="HYDRA_LLM_ABSENT_KEY"))


def test_redactor_masks_key_bearer_and_authorization():
    red = Redactor([SECRET])
    text = f'key {SECRET} Authorization: Bearer abc.def-123 {{"authorization": "Bearer zzz999"}}'
    text += " api_key=hunter22"
    out = red.text(text)
    assert SECRET not in out and "abc.def-123" not in out and "zzz999" not in out and "hunter22" not in out
    assert red.obj({"a": [SECRET, {"b": f"x {SECRET}"}]}) == {"a": ["[REDACTED]", {"b": "x [REDACTED]"}]}
    assert red.text("api_key_env: OPENAI_API_KEY") == "api_key_env: OPENAI_API_KEY"


def test_redactor_masks_the_json_escaped_form_of_a_key():
    key = 'ab"cd\\ef-1234'
    text = json.dumps({"memory": f"leak {key}"})
    assert "REDACTED" in Redactor([key]).text(text) and "cd" not in Redactor([key]).text(text)


# ---------------------------------------------------------------- hostile endpoints (hardening)
def test_one_deadline_bounds_a_call_against_a_dripping_server(server, key_env, tmp_path):
    """A server that sends one byte every 0.2 s never trips a per-read timeout; the deadline stops it."""
    import time

    body = json.dumps(_completion_body(GOOD)).encode()
    server.push(FakeRaw(body, drip_s=0.2))  # ~60 s if read to the end
    client = make_client(server, key_env, tmp_path, timeout=5, deadline=2.0, max_retries=1)
    start = time.monotonic()
    with pytest.raises(LLMUnavailable, match="deadline of 2 s"):
        client.complete(MESSAGES, Mutation, tag="drip")
    assert time.monotonic() - start < 3.5
    records = sorted((tmp_path / "llm").glob("*_drip.json"))
    assert records and "deadline" in json.loads(records[-1].read_text())["error"]["message"]
    server.push(FakeReply(GOOD))  # the client still works afterwards
    assert client.complete(MESSAGES, Mutation).value == Mutation(**GOOD)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (FakeRaw(b""), "unusable response"),
        (FakeRaw(b"<html>gateway</html>", content_type="text/html"), "unusable response"),
        (FakeRaw(b'{"id": "x", "choices": [', status=200), "unusable response"),
    ],
    ids=["empty", "html", "truncated-json"],
)
def test_unusable_bodies_are_endpoint_errors_with_a_record(server, key_env, tmp_path, raw, expected):
    server.push(raw)
    client = make_client(server, key_env, tmp_path, max_retries=0)
    with pytest.raises(LLMUnavailable, match=expected) as info:
        client.complete(MESSAGES, Mutation, tag="raw")
    assert info.value.calls and info.value.calls[-1]["status"] == "error"
    assert list((tmp_path / "llm").glob("*_raw.json")), "the failed call left no record"


def test_two_500s_mentioning_schema_do_not_step_down_for_good(server, key_env, tmp_path):
    overloaded = "internal error while compiling the schema: server overloaded"
    server.push(FakeError(500, overloaded), FakeError(500, overloaded))
    client = make_client(server, key_env, tmp_path, max_retries=0)
    with pytest.raises(LLMUnavailable):
        client.complete(MESSAGES, Mutation)
    assert client.mode == "json_schema"
    assert not (tmp_path / "llm" / "capabilities.json").exists()
    server.push(FakeReply(GOOD))
    assert client.complete(MESSAGES, Mutation).mode == "json_schema"
    # a real rejection with a 500 is confirmed by the server's answer in the lower mode, and cached
    rejecting = FakeOpenAIServer(rejects={"json_schema"}, reject_status=500, default=FakeReply(GOOD))
    with rejecting:
        client = make_client(rejecting, key_env, tmp_path / "second", max_retries=0)
        assert client.complete(MESSAGES, Mutation).mode == "json_object"
    cached = json.loads((tmp_path / "second" / "llm" / "capabilities.json").read_text())
    assert cached["mode"] == "json_object"
    # ... also when the model's reply in that mode is invalid (a weak model; the server took the mode)
    weak = FakeOpenAIServer(rejects={"json_schema"}, reject_status=500, default=FakeReply({"nonsense": 1}))
    with weak:
        client = make_client(weak, key_env, tmp_path / "third", max_retries=0, max_reasks=0)
        with pytest.raises(LLMReplyInvalid):
            client.complete(MESSAGES, Mutation)
        assert client.mode == "json_object"
    cached = json.loads((tmp_path / "third" / "llm" / "capabilities.json").read_text())
    assert cached["mode"] == "json_object"


def test_an_oversized_reply_is_rejected_unread(server, key_env, tmp_path):
    huge = {**GOOD, "rationale": "x" * 300_000}
    server.push(FakeReply(huge), FakeReply(huge))
    client = make_client(server, key_env, tmp_path, max_reasks=1)
    with pytest.raises(LLMReplyInvalid, match="characters long; the limit is 200000"):
        client.complete(MESSAGES, Mutation)
    reask = server.requests[1].body["messages"]
    assert sum(len(m["content"] or "") for m in reask if isinstance(m["content"], str)) < 30_000


def _completion_body(payload: dict) -> dict:
    return {
        "id": "chatcmpl-drip",
        "object": "chat.completion",
        "created": 0,
        "model": "fake-model",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": json.dumps(payload)},
                "finish_reason": "stop",
            }
        ],
    }


def test_the_schema_prompt_joins_the_static_prefix(key_env, tmp_path):
    # Without server-side schemas the schema goes right after the system prompt, before what changes
    # per call, so a server's prompt cache can reuse it; a re-ask still ends with its feedback.
    with FakeOpenAIServer(rejects={"json_schema"}, default=FakeReply(GOOD)) as server:
        server.push(FakeReply({"nonsense": 1}), FakeReply(GOOD))
        make_client(server, key_env, tmp_path, max_retries=0).complete(MESSAGES, Mutation)
    first, reask = (r.body["messages"] for r in server.requests if r.mode == "json_object")
    assert [m["role"] for m in first] == ["system", "system", "user"]
    assert first[0] == MESSAGES[0] and "Answer with ONE JSON object" in first[1]["content"]
    assert reask[:3] == first and reask[-1]["role"] == "user" and "rejected" in reask[-1]["content"]
