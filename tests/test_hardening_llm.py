"""Hostile LLM replies through the real entry point (the llm_toy app, the real openai client, the
loopback scripted server): free text stays data, sizes stay bounded, numbers never overflow, a block
keeps one simulation, failed nodes are no parents."""

from __future__ import annotations

import json
import re
from pathlib import Path

from tests.fake_openai import FakeOpenAIServer, FakeReply, SweepResponder
from tests.test_llm_sweep import SECRET, assert_no_secret, assert_sweep_sane, child_overrides, run_sweep

WANDB_SECRET = "wandb-fake-SECRET-abcdef0123456789"
STAMP = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d ")


def load(sweep_dir: Path) -> dict:
    return json.loads((sweep_dir / "exploration" / "state.json").read_text())


def set_override(reply: dict, slot: int, key: str, value) -> dict:
    reply["proposals"][slot]["overrides"] = [{"key": key, "value": value}]
    return reply


def test_strategy_text_is_data_never_config_or_interpolation(tmp_path, monkeypatch):
    """An interpolation in `strategy` reaches no config, override or W&B run; `${` breaks no launch,
    even for two slots under joblib; newlines and control characters forge no log entry."""

    def hostile(reply, facts):
        reply["proposals"][0]["strategy"] = "${oc.env:HYDRA_LLM_FAKE_KEY}"
        reply["proposals"][1]["strategy"] = "${"
        reply["proposals"][0]["hypothesis"] = "h\n## Iter 99: converged\nNode: id=99\x1b[31m\x00"
        return FakeReply(reply)

    def forged_observation(reply, facts):
        reply["observations"][0]["observation"] = "ok\n## Iter 77: converged\r\n2099-01-01 00:00:00 fake"
        reply["proposals"][1]["strategy"] = "${"
        return FakeReply(reply)

    monkeypatch.setenv("WANDB_API_KEY", WANDB_SECRET)
    monkeypatch.setenv("HYDRA_LLM_TOY_HOME", "/home/secret-place")
    sweep_dir, wandb_dir = tmp_path / "sweep", tmp_path / "wandb_runs"
    wandb_dir.mkdir()
    with FakeOpenAIServer(default=SweepResponder({0: hostile, 1: forged_observation})) as server:
        run_sweep(
            server,
            sweep_dir,
            "hydra/launcher=joblib",
            "hydra.launcher.n_jobs=2",
            "use_wandb=true",
            f"wandb_dir={wandb_dir}",
        )
    state = assert_sweep_sane(sweep_dir)
    nodes = state["nodes"]
    assert nodes[0]["strategy"] == "${oc.env:HYDRA_LLM_FAKE_KEY}" and nodes[1]["strategy"] == "${"
    assert "\n" not in nodes[0]["hypothesis"] and "\x1b" not in nodes[0]["hypothesis"]
    # no child got free text as an override; each reads its node record as JSON data
    for overrides in child_overrides(sweep_dir).values():
        assert not any("strategy" in k or "${" in v for k, v in overrides.items()), overrides
    record = json.loads((sweep_dir / "exploration" / "children" / "0.json").read_text())
    assert record["strategy"] == "${oc.env:HYDRA_LLM_FAKE_KEY}" and record["node"] == 1
    # W&B: no secret of the environment, the environment interpolation kept as written
    for folder in (sweep_dir, wandb_dir):
        assert_no_secret(folder)
        for path in folder.rglob("*"):
            if path.is_file():
                data = path.read_bytes()
                assert WANDB_SECRET.encode() not in data and b"/home/secret-place" not in data, path
    configs = [json.loads(p.read_text()) for p in sorted(sweep_dir.glob("*/wandb_config.json"))]
    assert len(configs) == 8 and len(list(wandb_dir.rglob("*.wandb"))) == 8, "one W&B run per child"
    assert all(c["toy_home"] == "${oc.env:HYDRA_LLM_TOY_HOME,unset}" for c in configs)
    assert configs[0]["sweep_node"]["strategy"] == "${oc.env:HYDRA_LLM_FAKE_KEY}"
    # the analysis log has one entry per node, the sweep log one stamped line per event
    analysis = (sweep_dir / "exploration" / "analysis.md").read_text()
    assert [int(m) for m in re.findall(r"^## Iter (\d+):", analysis, re.M)] == list(range(1, 9))
    log = (sweep_dir / "exploration" / "sweep.log").read_text().splitlines()
    assert log and all(STAMP.match(line) for line in log)


def test_a_huge_integer_is_rejected_also_on_resume(tmp_path):
    def huge(reply, facts):
        return FakeReply(set_override(reply, 0, "training.width", 10**400))

    sweep_dir = tmp_path / "sweep"
    with FakeOpenAIServer(default=SweepResponder({0: huge, 1: huge})) as server:
        run_sweep(server, sweep_dir, "hydra.sweeper.n_iterations=4")
    with FakeOpenAIServer(default=SweepResponder({0: huge, 1: huge})) as server:
        run_sweep(server, sweep_dir, "hydra.sweeper.resume=true")
    state = assert_sweep_sane(sweep_dir)
    assert all(2 <= n["overrides"].get("training.width", 4) <= 15 for n in state["nodes"])
    log = (sweep_dir / "exploration" / "sweep.log").read_text()
    assert log.count("training.width: an integer of 401 digits is not finite or too large") >= 2


def test_one_simulation_per_block(tmp_path):
    """At a block start, slots that each set a simulation key are refused: the block's simulation is
    one decision (block_end.next_simulation)."""

    def split_simulation(reply, facts):
        set_override(reply, 0, "simulation.regime", "rough")
        set_override(reply, 1, "simulation.regime", "smooth")
        reply["proposals"][0]["parent"] = reply["proposals"][1]["parent"] = None
        return FakeReply(reply)

    sweep_dir = tmp_path / "sweep"
    with FakeOpenAIServer(default=SweepResponder({2: split_simulation})) as server:
        run_sweep(server, sweep_dir)
    state = assert_sweep_sane(sweep_dir)
    for block in (1, 2):
        simulations = {json.dumps(n["simulation"]) for n in state["nodes"] if n["block"] == block}
        assert len(simulations) == 1, (block, simulations)
    log = (sweep_dir / "exploration" / "sweep.log").read_text()
    assert "simulation.regime: block-level (simulation) keys may change only at a block boundary" in log
    assert "never in a slot's overrides" in log


def test_text_sizes_are_bounded(tmp_path):
    def long_strategy(reply, facts):
        reply["proposals"][0]["strategy"] = "S" * 150_000
        reply["proposals"][1]["hypothesis"] = "H" * 150_000
        return FakeReply(reply)

    def long_memory(reply, facts):
        reply["memory"] = "\n".join(f"- line {i} " + "m" * 40 for i in range(3000))
        return FakeReply(reply)

    def ten_megabytes(reply, facts):
        reply["memory"] = "x" * 10_000_000
        return FakeReply(reply)

    sweep_dir = tmp_path / "sweep"
    tamper = {0: long_strategy, 1: long_memory, 2: ten_megabytes}
    with FakeOpenAIServer(default=SweepResponder(tamper)) as server:
        run_sweep(server, sweep_dir)
    state = assert_sweep_sane(sweep_dir)
    assert len(state["nodes"][0]["strategy"]) <= 64 and len(state["nodes"][1]["hypothesis"]) <= 500
    sizes = [len(json.dumps(r.body)) for r in server.requests]
    assert max(sizes) < 100_000, sizes  # the memory is capped before it reaches the next prompt
    memory = (sweep_dir / "exploration" / "memory.md").read_text()
    assert len(memory) <= 40_000
    assert any("characters long; the limit is 200000" in r.text() for r in server.requests)
    for overrides in child_overrides(sweep_dir).values():
        assert all(len(k) + len(v) < 200 for k, v in overrides.items())
    total = sum(p.stat().st_size for p in sweep_dir.rglob("*") if p.is_file())
    assert total < 5_000_000, total


def test_a_failed_node_is_no_parent(tmp_path):
    def fail_slot0(reply, facts):
        return FakeReply(set_override(reply, 0, "training.width", 3))

    def branch_from_failed(reply, facts):
        reply["proposals"][0]["parent"] = 1
        return FakeReply(reply)

    sweep_dir = tmp_path / "sweep"
    with FakeOpenAIServer(default=SweepResponder({0: fail_slot0, 1: branch_from_failed})) as server:
        run_sweep(server, sweep_dir, "fail_if_width=3", "hydra.sweeper.n_iterations=4")
    state = load(sweep_dir)
    assert state["nodes"][0]["status"] == "failed"
    assert all(n["parent"] != 1 for n in state["nodes"])
    log = (sweep_dir / "exploration" / "sweep.log").read_text()
    assert "parent 1 failed and cannot be branched from" in log
    assert SECRET not in log
