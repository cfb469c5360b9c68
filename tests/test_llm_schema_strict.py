"""The reply schemas sent in ``json_schema`` mode are what OpenAI's strict mode accepts: the
``openai`` SDK's own strict conversion, every object closed (``additionalProperties: false``) with
every property required, and no keyword strict mode rejects."""

from __future__ import annotations

from typing import Any

import pytest
from openai.lib._pydantic import to_strict_json_schema

from hydra_llm.code_edits.review import CodeReply
from hydra_llm.explore.proposers.llm_schema import FinalReply, LLMReply
from hydra_llm.llm.structured import request_kwargs

# Keywords strict structured outputs refuse (or that a strict schema must not carry).
UNSUPPORTED = {"default", "oneOf", "not", "if", "then", "else", "patternProperties", "unevaluatedProperties"}


def objects(node: Any):
    """Every JSON-schema object node (a dict with properties) below ``node``."""
    if isinstance(node, dict):
        if "properties" in node or node.get("type") == "object":
            yield node
        for value in node.values():
            yield from objects(value)
    elif isinstance(node, list):
        for value in node:
            yield from objects(value)


def keywords(node: Any) -> set[str]:
    found: set[str] = set()
    if isinstance(node, dict):
        for key, value in node.items():
            if key != "properties":  # property names are data, not keywords
                found.add(key)
            found |= keywords(value)
    elif isinstance(node, list):
        for value in node:
            found |= keywords(value)
    return found


@pytest.mark.parametrize("model", [LLMReply, FinalReply, CodeReply])
def test_sent_schema_is_openai_strict(model):
    sent = request_kwargs("json_schema", model)["response_format"]["json_schema"]
    assert sent["strict"] is True and sent["name"] == model.__name__
    assert sent["schema"] == to_strict_json_schema(model)
    nodes = list(objects(sent["schema"]))
    assert len(nodes) >= 3  # the reply and its nested items
    for node in nodes:
        assert node.get("additionalProperties") is False, node.get("title")
        assert set(node.get("required", [])) == set(node.get("properties", {})), node.get("title")
    assert not keywords(sent["schema"]) & UNSUPPORTED


def test_the_checks_bite_on_a_plain_pydantic_schema():
    plain = LLMReply.model_json_schema()  # what a non-strict request would send
    assert any(node.get("additionalProperties") is not False for node in objects(plain))
    assert any(set(node.get("required", [])) != set(node.get("properties", {})) for node in objects(plain))
    assert "default" in keywords(plain)
