"""The LLM proposer against the fake server, without the sweeper: prompt, reply conversion, fallbacks."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import pytest

from hydra_llm.explore.proposers.auto import auto_proposer
from hydra_llm.explore.proposers.base import ExplorationView, ParamSpec
from hydra_llm.explore.proposers.llm import LLMProposer, endpoint_configured
from hydra_llm.explore.proposers.llm_prompt import BLOCK_END_MARKER, PromptBuilder, cap_lines, read_trajectory
from hydra_llm.explore.proposers.rules import RulesProposer
from hydra_llm.explore.reports import render_entry
from hydra_llm.explore.tree import Node, UCBScore
from tests.fake_openai import FakeError, FakeOpenAIServer, FakeReply, prompt_section

SECRET = "sk-test-proposer-SECRET-42"
PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d49484452000000010000000108060000001f15c489"
    "0000000d49444154789c6300010000000500010d0a2db40000000049454e44ae426082"
)


def ucb_node(
    i: int,
    parent: int | None,
    r2: float | None,
    mutation: str,
    overrides: dict,
    status: Literal["completed", "failed"] = "completed",
) -> Node:
    """A node of the UCB table (only the fields the prompt shows)."""
    metrics = {} if r2 is None else {"connectivity_R2": r2}
    return Node(
        id=i,
        parent=parent,
        block=1,
        slot=0,
        strategy="",
        overrides=overrides,
        mutation={},
        simulation={},
        seeds={},
        job_num=i,
        status=status,
        metrics=metrics,
        mutation_text=mutation,
    )


def make_view(
    tmp_path: Path, *, block_end: bool = False, user_input: str = "", plots: bool = False
) -> ExplorationView:
    out = tmp_path / "7"
    out.mkdir(exist_ok=True)
    (out / "r2_trajectory.csv").write_text(
        "step,connectivity_R2,phase\n100,0.5,W\n200,0.93,W\n300,0.88,V_rest\n"
    )
    plot_paths: tuple[str, ...] = ()
    if plots:
        (out / "plots").mkdir(exist_ok=True)
        (out / "plots" / "w.png").write_bytes(PNG)
        plot_paths = (str(out / "plots" / "w.png"),)
    lr = ParamSpec("training.learning_rate_W_start", "float", 1e-4, 1e-2, log=True, default=1e-3)
    l1 = ParamSpec("training.coeff_W_L1", "float", 1e-6, 1e-3, log=True, default=1e-5)
    sim = ParamSpec("simulation.n_frames", "int", 1000, 8000, block_level=True, default=2000)
    results = (
        Node(
            id=7,
            parent=5,
            block=1,
            slot=0,
            strategy="exploit",
            overrides={"training.coeff_W_L1": 1e-4},
            mutation={},
            simulation={},
            seeds={"simulation.seed": 7000, "training.seed": 7500},
            job_num=6,
            status="completed",
            metrics={"connectivity_R2": 0.88},
            reward=0.88,
            output_dir=str(out),
            plots=list(plot_paths),
        ),
        Node(
            id=8,
            parent=5,
            block=1,
            slot=1,
            strategy="explore",
            overrides={"training.learning_rate_W_start": 5e-3},
            mutation={},
            simulation={},
            seeds={"simulation.seed": 8001, "training.seed": 8501},
            job_num=7,
            status="failed",
            metrics={},
            reward=0.0,
            output_dir=str(tmp_path / "8"),
            error="Traceback ...\nFloatingPointError: loss is NaN",
        ),
    )
    rows = (
        UCBScore(
            ucb_node(7, 5, 0.88, "training.coeff_W_L1: 1e-05 -> 0.0001", {"training.coeff_W_L1": 1e-4}),
            1.9,
            1,
            0.88,
        ),
        UCBScore(ucb_node(5, None, 0.8, "none", {}), 1.5, 3, 0.8),
        UCBScore(
            ucb_node(
                8,
                5,
                None,
                "training.learning_rate_W_start: 0.001 -> 0.005",
                {"training.learning_rate_W_start": 5e-3},
                status="failed",
            ),
            1.2,
            1,
            0.0,
        ),
    )
    return ExplorationView(
        first_iteration=9,
        n_iterations=24,
        block=1,
        iter_in_block=9 if not block_end else 1,
        n_iter_block=8,
        is_block_end=block_end,
        n_parallel=2,
        slot_roles=("exploit", "replicate"),
        ucb_table=rows,
        last_batch=results,
        search_space=(lr, l1),
        block_search_space=(sim,),
        current_simulation={},
        variance_table="| Config | Runs |\n|---|---|\n| abc | 3 |",
        memory="# Memory\nline\n",
        protocol="# Protocol\n<!-- RULES:BEGIN -->\n<!-- RULES:END -->\n",
        user_input=user_input,
        objective={"metric": "connectivity_R2", "direction": "maximize"},
        sweep_seed=0,
    )


def good_reply(block_end: bool = False, **changes) -> dict:
    reply = {
        "observations": [
            {"node_id": 7, "classification": "partial", "strategy": "exploit", "observation": "L1 up helps"},
            {"node_id": 8, "classification": "failed", "strategy": "explore", "observation": "lr_W 5e-3 NaN"},
        ],
        "proposals": [
            {
                "slot": 0,
                "parent": 7,
                "overrides": [{"key": "training.coeff_W_L1", "value": 2e-4}],
                "strategy": "exploit",
                "hypothesis": "more L1 sharpens W",
            },
            {
                "slot": 1,
                "parent": 7,
                "overrides": None,
                "strategy": "replicate",
                "hypothesis": "0.88 reproduces",
            },
        ],
        "memory": "# Memory\n- L1 1e-4 gives 0.88 (node 7)\n",
        "user_input_ack": None,
        "block_end": None,
    }
    if block_end:
        reply["block_end"] = {
            "summary": "Best R2 0.88 at node 7",
            "rules": [{"rule": "If lr_W >= 5e-3 then halve it", "evidence": [5, 7, 8]}],
            "rules_change": "added an lr ceiling",
            "next_simulation": [{"key": "simulation.n_frames", "value": 4000}],
        }
    reply.update(changes)
    return reply


@pytest.fixture
def server():
    with FakeOpenAIServer() as srv:
        yield srv


@pytest.fixture
def proposer(server, tmp_path, monkeypatch):
    monkeypatch.setenv("HYDRA_LLM_TEST_KEY", SECRET)
    return LLMProposer(
        model="fake",
        base_url=server.base_url,
        api_key_env="HYDRA_LLM_TEST_KEY",
        record_dir=tmp_path / "llm",
        max_retries=1,
    )


def test_prompt_holds_every_part_of_the_view(tmp_path):
    view = make_view(tmp_path, block_end=True, user_input="Try lower L1 please")
    text = PromptBuilder().user_text(view)
    for expected in [
        "Batch iterations 9-10 / 24",
        "block 1, iteration 1/8",
        BLOCK_END_MARKER,
        "# Protocol",
        "Node 7: UCB=1.900, parent=5, visits=1",
        "Seeds: simulation.seed=7000, training.seed=7500",
        "Config diff vs parent: training.coeff_W_L1: 1e-05 -> 0.0001",
        "status FAILED",
        "FloatingPointError: loss is NaN",
        "R2 trajectory: peak=0.93 at step 200 (phase W), final=0.88, trend=decaying",
        "| abc | 3 |",
        "training.learning_rate_W_start: float in [0.0001, 0.01] log scale (root value 0.001)",
        "Block-level (simulation) keys, allowed NOW",
        "PENDING USER INSTRUCTIONS",
        "Try lower L1 please",
    ]:
        assert expected in text, expected
    mid_block = PromptBuilder().user_text(make_view(tmp_path))
    assert BLOCK_END_MARKER not in mid_block and "NOT allowed now" in mid_block
    assert "PENDING USER" not in mid_block


def test_block_end_prompt_lists_the_finished_block_slot_params_and_classes(tmp_path):
    import dataclasses

    from hydra_llm.explore.tree import Objective

    base = make_view(tmp_path, block_end=True)
    finished = base.ucb_table  # at a real block end the UCB table is the new, empty block
    objective = Objective("avg_slope_ratio", "target", 1.0, converged_band=(0.8, 1.2), partial_band=(0.3, 3))
    view = dataclasses.replace(
        base,
        ucb_table=(),
        finished_block=finished,
        slot_params={"training.homeostasis_time_step": (4, 16)},
        objective={**base.objective, "classes": objective.describe_classes()},
    )
    builder = PromptBuilder()
    text = builder.user_text(view)
    position = prompt_section(text, "Position")
    assert BLOCK_END_MARKER in position
    assert "### Finished block 0 (final UCB table; rule evidence may cite any completed node" in position
    assert "Node 7: UCB=1.900, parent=5, visits=1" in position and "status=failed" in position
    assert "(empty: this block has no nodes yet; use parent=null)" in text
    # the last batch's parents are found in the finished block: a real diff, not 'unknown parent'
    assert "Config diff vs parent: training.coeff_W_L1: 1e-05 -> 0.0001" in text
    assert "- training.homeostasis_time_step: slot 0=4, slot 1=16" in prompt_section(text, "Search space")
    system = builder.system_text(view)
    assert "Classification of a run: converged: 0.8 <= avg_slope_ratio <= 1.2; partial: 0.3" in system
    # outside a block end there is no finished block section
    assert "### Finished block" not in builder.user_text(make_view(tmp_path))


def test_memory_and_prompt_parts_are_bounded(tmp_path):
    long = "\n".join(f"line {i}" for i in range(2000))
    capped = cap_lines(long, 400)
    assert len(capped.splitlines()) == 400 and "line 0" in capped and "line 1999" in capped
    view = make_view(tmp_path)
    view = type(view)(**{**view.__dict__, "memory": long, "protocol": "x" * 100_000})
    text = PromptBuilder().user_text(view)
    assert len(text) < 40_000 and "lines elided" in text and "characters cut" in text


def test_trajectory_absent_or_malformed_gives_none(tmp_path):
    assert read_trajectory(str(tmp_path)) is None
    (tmp_path / "r2_trajectory.csv").write_text("step,loss\n1,2\n")
    assert read_trajectory(str(tmp_path)) is None


def test_good_reply_becomes_a_proposer_reply(server, proposer, tmp_path):
    server.push(FakeReply(good_reply(), prompt_tokens=1000, completion_tokens=200))
    reply = proposer.propose(make_view(tmp_path))
    assert [o.node_id for o in reply.observations] == [7, 8]
    assert reply.observations[1].classification == "failed"
    assert reply.proposals[0].overrides == {"training.coeff_W_L1": 2e-4} and reply.proposals[0].parent == 7
    assert reply.proposals[1].overrides == {} and reply.proposals[1].strategy == "replicate"
    assert (
        reply.memory.startswith("# Memory") and reply.block_summary is None and reply.protocol_rules is None
    )
    assert reply.extra["mode"] == "json_schema" and reply.extra["prompt_tokens"] == 1000
    assert reply.extra["n_calls"] == 1 and reply.extra["latency_s"] >= 0


def test_block_end_reply_carries_summary_rules_and_simulation(server, proposer, tmp_path):
    server.push(FakeReply(good_reply(block_end=True)))
    reply = proposer.propose(make_view(tmp_path, block_end=True))
    assert "Best R2 0.88" in reply.block_summary and "added an lr ceiling" in reply.block_summary
    assert reply.protocol_rules == "- If lr_W >= 5e-3 then halve it [evidence: 5, 7, 8]\n"
    assert reply.next_simulation == {"simulation.n_frames": 4000}


def test_missing_block_end_or_wrong_slots_are_reasked(server, proposer, tmp_path):
    wrong = good_reply()
    wrong["proposals"] = wrong["proposals"][:1]
    server.push(FakeReply(wrong), FakeReply(good_reply(block_end=True)))
    reply = proposer.propose(make_view(tmp_path, block_end=True))
    assert len(reply.proposals) == 2 and reply.next_simulation == {"simulation.n_frames": 4000}
    reask = server.requests[1].text()
    assert "slots must be 0..1; you sent [0]: send exactly 2 proposals" in reask
    assert "block_end: required" in reask


@pytest.mark.parametrize(
    ("slots", "fix"),
    [
        ([1, 2], "slots must be 0..1; you sent 1..2: subtract 1 from every slot"),
        ([0, 0], "slots must be 0..1; you sent [0, 0]: give each slot number once"),
        ([0, 1, 2], "slots must be 0..1; you sent 0..2: send exactly 2 proposals, one per slot"),
    ],
)
def test_a_wrong_slot_numbering_is_reasked_with_the_fix(server, proposer, tmp_path, slots, fix):
    wrong = good_reply()
    wrong["proposals"] = [{**wrong["proposals"][i % 2], "slot": s} for i, s in enumerate(slots)]
    server.push(FakeReply(wrong), FakeReply(good_reply()))
    reply = proposer.propose(make_view(tmp_path))
    assert len(reply.proposals) == 2 and fix in server.requests[1].text()


def test_feedback_continues_the_conversation(server, proposer, tmp_path):
    view = make_view(tmp_path)
    server.push(FakeReply(good_reply()), FakeReply(good_reply()))
    proposer.propose(view)
    proposer.propose(view, feedback=["slot 0: training.coeff_W_L1: 5 is out of range"])
    last = server.requests[-1].body["messages"]
    assert last[-2]["role"] == "assistant" and "out of range" in last[-1]["content"]
    assert len(last) == 4  # system, user, the first reply, the feedback


def test_unusable_endpoint_falls_back_to_rules(server, proposer, tmp_path):
    server.push(*[FakeError(500)] * 3)
    reply = proposer.propose(make_view(tmp_path))
    assert reply.extra["fallback"] == "rules" and "endpoint error" in reply.extra["fallback_reason"]
    assert len(reply.proposals) == 2 and reply.extra["n_calls"] == 1


def test_vision_sends_images_and_records_without_them(server, tmp_path, monkeypatch):
    monkeypatch.setenv("HYDRA_LLM_TEST_KEY", SECRET)
    proposer = LLMProposer(
        model="fake",
        base_url=server.base_url,
        api_key_env="HYDRA_LLM_TEST_KEY",
        record_dir=tmp_path / "llm",
        vision=True,
    )
    server.push(FakeReply(good_reply()))
    proposer.propose(make_view(tmp_path, plots=True))
    (url,) = server.requests[0].images()
    assert url.startswith("data:image/png;base64,")
    saved = "".join(p.read_text() for p in (tmp_path / "llm").glob("0*.json"))
    assert "base64 omitted" in saved and "iVBOR" not in saved


def test_echoed_key_is_redacted_from_reply_and_records(server, proposer, tmp_path):
    def echo(req):
        leaked = req.headers["authorization"]
        return FakeReply(good_reply(memory=f"# Memory\nheader was {leaked} and key {SECRET}\n"))

    server.push(echo)
    reply = proposer.propose(make_view(tmp_path))
    assert SECRET not in reply.memory and "[REDACTED]" in reply.memory
    for path in (tmp_path / "llm").iterdir():
        assert SECRET not in path.read_text()
    assert SECRET not in json.dumps(reply.extra)


def test_bad_configuration_is_refused_before_any_call(monkeypatch):
    monkeypatch.delenv("HYDRA_LLM_ABSENT", raising=False)
    with pytest.raises(ValueError, match="HYDRA_LLM_ABSENT is unset"):
        LLMProposer(model="gpt-4o-mini", api_key_env="HYDRA_LLM_ABSENT")
    with pytest.raises(ValueError, match="structured_output"):
        LLMProposer(model="m", base_url="http://127.0.0.1:1/v1", structured_output="yaml")
    for key, value, low in (("memory_max_lines", 19, 20), ("min_rule_evidence", 0, 1), ("max_rules", -1, 0)):
        message = f"^llm proposer: {key}={value} must be >= {low}$"
        with pytest.raises(ValueError, match=message):
            LLMProposer(model="m", base_url="http://127.0.0.1:1/v1", **{key: value})
        with pytest.raises(ValueError, match=message):  # auto picks rules here, and still checks them
            auto_proposer(api_key_env="HYDRA_LLM_ABSENT", **{key: value})
    assert isinstance(
        auto_proposer(api_key_env="HYDRA_LLM_ABSENT", vision=True, record_dir="x"), RulesProposer
    )
    assert endpoint_configured("HYDRA_LLM_ABSENT", "http://x/v1") and not endpoint_configured(
        "HYDRA_LLM_ABSENT"
    )


def test_a_slots_metrics_are_listed_headline_first_and_oracle_after_the_other_read_outs(tmp_path):
    """The LLM's prompt and analysis.md list a run's metrics in :func:`reading_order`."""
    view = make_view(tmp_path)
    node = view.last_batch[0]
    node.metrics = {  # alphabetical, as they may come back
        "connectivity_R2": 0.88,
        "connectivity_R2_oracle": 0.87,
        "connectivity_slope": 0.9,
        "final_loss": 0.1,
        "tau_R2": 0.7,
        "test_R2": 0.5,
        "test_pearson": 0.95,
        "cluster_accuracy": 0.8,
    }
    prompt = PromptBuilder().user_text(view).split("Metrics: ", 1)[1].splitlines()[0]
    analysis = render_entry(node, None).split("Metrics: ", 1)[1].splitlines()[0]
    for line in (prompt, analysis):
        assert [item.split("=")[0] for item in line.split(", ")] == [
            "connectivity_R2",
            "tau_R2",
            "cluster_accuracy",
            "test_R2",
            "test_pearson",
            "connectivity_slope",
            "connectivity_R2_oracle",
            "final_loss",
        ]


def test_final_call_without_slots_accepts_observations_only(server, proposer, tmp_path):
    view = make_view(tmp_path)
    view = type(view)(**{**view.__dict__, "n_parallel": 0, "slot_roles": ()})
    server.push(FakeReply(good_reply()))  # stray proposals are dropped, not re-asked
    reply = proposer.propose(view)
    assert reply.proposals == [] and len(reply.observations) == 2 and len(server.requests) == 1
    assert ">>> SWEEP END <<<" in server.requests[0].text()
