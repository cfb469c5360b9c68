"""The batch loop without Hydra: blocks, validation and fallback, failures, persistence and resume."""

import errno
import json
import math

import pytest

from hydra_llm.explore.children import ChildOutcome
from hydra_llm.explore.engine import ExplorationEngine
from hydra_llm.explore.engine_config import EngineConfig, SweepConfigError, SweepFailedError, SweepOutOfSpace
from hydra_llm.explore.proposers.base import Proposal, Proposer, ProposerReply
from hydra_llm.explore.proposers.rules import RulesProposer
from hydra_llm.explore.protocol import RULES_BEGIN, RULES_END, RulesPolicy, split_protocol
from hydra_llm.explore.space import parse_space
from hydra_llm.explore.state import load_state
from hydra_llm.explore.tree import Objective

PARAMS = {"training.lr": "tag(log, interval(1e-5, 1e-1))", "training.width": "range(1, 17)"}
BLOCK = {"simulation.regime": "choice(smooth, rough)"}
DEFAULTS = {"training.lr": 0.01, "training.width": 4, "simulation.regime": "smooth"}
PROTOCOL = f"# Protocol\nIntro kept.\n{RULES_BEGIN}\n- old rule\n{RULES_END}\nTail kept.\n"


def toy_score(spec):
    lr = spec.overrides.get("training.lr", 0.01)
    width = spec.overrides.get("training.width", 4)
    regime = spec.simulation.get("simulation.regime", "smooth")
    value = (
        1.0 - 0.08 * (math.log10(lr) + 3) ** 2 - 0.004 * (width - 8) ** 2 - (0.1 if regime == "rough" else 0)
    )
    return value + 0.001 * (spec.seeds["training"] % 7)


class ToyLauncher:
    """Stands in for a Hydra launcher: runs each child's toy score, records what it launched."""

    def __init__(
        self, fail_when=None, crash_on_batch=None, interrupt_on_batch=None, error="ValueError: boom"
    ):
        self.batches = []
        self.fail_when = fail_when
        self.error = error
        self.crash_on_batch = crash_on_batch
        self.interrupt_on_batch = interrupt_on_batch

    def __call__(self, children):
        self.batches.append(list(children))
        if self.interrupt_on_batch == len(self.batches):
            raise KeyboardInterrupt("killed inside a batch")
        if self.crash_on_batch == len(self.batches):
            raise RuntimeError("TerminatedWorkerError: a worker died")
        out = []
        for child in children:
            if self.fail_when and self.fail_when(child):
                out.append(ChildOutcome("failed", error=self.error, output_dir=f"/x/{child.job_num}"))
            else:
                out.append(
                    ChildOutcome("completed", {"r2": toy_score(child)}, output_dir=f"/x/{child.job_num}")
                )
        return out


def make(
    tmp_path, proposer=None, launcher=None, resume=False, check_child=None, check_batch=None, **overrides
):
    settings = dict(
        n_iterations=8, n_parallel=4, n_iter_block=4, objective=Objective(metric="r2"), tree_plot=False
    )
    settings.update(overrides)
    space = parse_space(PARAMS, BLOCK, [], DEFAULTS)
    return ExplorationEngine(
        EngineConfig(**settings),
        space,
        proposer or RulesProposer(),
        launcher or ToyLauncher(),
        tmp_path,
        check_child=check_child,
        check_batch=check_batch,
        protocol=PROTOCOL,
        resume=resume,
    )


def comparable(nodes):
    return [
        (n.id, n.parent, n.block, n.slot, n.strategy, n.overrides, n.simulation, n.seeds, n.status, n.metrics)
        for n in nodes
    ]


def test_blocks_reset_tree_and_change_simulation(tmp_path):
    engine = make(tmp_path, n_iterations=10)
    state = engine.run()
    assert [len(b) for b in state.batches] == [4, 4, 2]
    assert [n.block for n in state.nodes] == [1] * 4 + [2] * 4 + [3] * 2
    for n in state.nodes:  # parents never cross a block boundary
        assert n.parent is None or state.node(n.parent).block == n.block
    assert all(n.parent is None for n in state.nodes if n.id in (5, 9))
    assert {n.simulation.get("simulation.regime", "smooth") for n in state.nodes if n.block == 2} == {"rough"}
    # block 3 ends with the sweep after 2 of its 4 iterations: the final call summarises it too
    assert set(state.block_summaries) == {"1", "2", "3"}
    assert "Best r2 in block 3: " in state.block_summaries["3"]
    ex = tmp_path / "exploration"
    assert (ex / "protocol" / "block_001.md").exists() and (ex / "protocol" / "block_003.md").exists()
    assert not (ex / "protocol" / "block_004.md").exists()  # no block starts after the sweep
    assert all((ex / "memory" / f"block_00{b}.md").exists() for b in (1, 2, 3))
    analysis = (ex / "analysis.md").read_text()
    assert "## Simulation Block 3 Summary (iters 9-10)\nSimulation: simulation.regime=" in analysis
    assert analysis.count("## Iter ") == 10 and analysis.count("## Simulation Block") == 3
    assert analysis.count("--- NEW SIMULATION BLOCK ---") == 2  # none after the sweep's last block
    assert "Node: id=5, parent=root" in analysis and "Next: parent=" in analysis
    ucb = (ex / "ucb_scores.txt").read_text()
    assert "block 3" in ucb and ucb.count("Node ") == 2
    results = (tmp_path / "optimization_results.yaml").read_text()
    assert "best_job_num" in results and "best_output_dir" in results
    assert all(n.observation for n in state.nodes)  # the last batch got its observations at the end


def test_a_block_whose_first_batch_cannot_start_keeps_the_simulation_in_force(tmp_path):
    """The block's first batch on the proposed next_simulation is checked (``check_batch``: e.g. its
    records do not fit on the disk together). A refusal goes back to the proposer; when the rules'
    next_simulation is refused too, the block keeps the simulation in force and says so."""
    calls = []
    refusal = "the block's first batch's 4 children record 4 simulations at once (64 MB, 42 MB free)"

    def check_batch(simulation, first_iteration):
        calls.append((dict(simulation), first_iteration))
        if simulation.get("simulation.regime") == "rough":
            return refusal
        return None

    proposer = Scripted([])
    state = make(tmp_path, proposer, check_batch=check_batch, n_iterations=10, max_reasks=1).run()
    assert [n.block for n in state.nodes] == [1] * 4 + [2] * 4 + [3] * 2
    assert {n.simulation.get("simulation.regime", "smooth") for n in state.nodes} == {"smooth"}
    assert calls[0] == ({"simulation.regime": "rough"}, 5)  # checked on the batch that starts block 2
    # once in that batch, though it came back three times (the proposal, the re-ask, the rules' own)
    assert calls.count(({"simulation.regime": "rough"}, 5)) == 1, calls
    assert proposer.feedback[2] == [f"next_simulation: {refusal}"]
    kept = [e for e in state.events if "keeps the simulation in force" in e]
    assert len(kept) == 2
    assert kept[0].endswith(f"block 2: keeps the simulation in force; the rules' next_simulation: {refusal}")
    assert "simulation: root config" in next(e for e in state.events if "block 2 starts" in e)

    # A proposer that reads the refusal and picks a simulation that fits gets it.
    class Listener(Proposer):
        name = "listener"

        def propose(self, view, feedback=None):
            reply = RulesProposer().propose(view)
            if view.is_block_end and feedback:
                reply.next_simulation = {"simulation.regime": "smooth"}
            return reply

    state = make(tmp_path / "listener", Listener(), check_batch=check_batch, n_iterations=8).run()
    assert not [e for e in state.events if "keeps the simulation" in e]
    assert "block 2 starts at iteration 5; simulation: simulation.regime=smooth" in "\n".join(state.events)


def test_without_block_params_the_tree_carries_over_block_ends(tmp_path):
    space = parse_space(PARAMS, {}, [], DEFAULTS)
    config = EngineConfig(
        n_iterations=12, n_parallel=4, n_iter_block=4, objective=Objective(metric="r2"), tree_plot=False
    )
    engine = ExplorationEngine(config, space, RulesProposer(), ToyLauncher(), tmp_path, protocol=PROTOCOL)
    state = engine.run()
    assert [n.block for n in state.nodes] == [1] * 4 + [2] * 4 + [3] * 4
    # block ends still happen (summaries, memory), but later blocks branch from earlier blocks' nodes;
    # the last block, which ends with the sweep, gets its summary from the final call
    assert (
        set(state.block_summaries) == {"1", "2", "3"} and "Best r2 in block 3" in state.block_summaries["3"]
    )
    assert (tmp_path / "exploration" / "memory" / "block_003.md").is_file()
    crossing = [n for n in state.nodes if n.parent is not None and state.node(n.parent).block < n.block]
    assert crossing and all(n.block > 1 for n in crossing)
    assert not any(
        n.parent is None and n.overrides == {} and n.strategy != "baseline" for n in state.nodes[4:]
    )
    ucb = (tmp_path / "exploration" / "ucb_scores.txt").read_text()
    assert ucb.count("Node ") == 12  # the UCB table spans every block of the one regime


def test_seeds_are_forced_per_slot(tmp_path):
    state = make(tmp_path, n_iterations=4).run()
    assert [n.seeds for n in state.nodes] == [
        {"training": i * 1000 + s + 500, "simulation": s} for i, s in zip(range(1, 5), range(4), strict=True)
    ]
    state2 = make(tmp_path / "b", n_iterations=4, simulation_seed="iteration").run()
    assert state2.nodes[2].seeds["simulation"] == 3 * 1000 + 2


class Scripted(Proposer):
    """A proposer whose replies are given by the test (the engine must validate them)."""

    name = "scripted"

    def __init__(self, replies):
        self.replies = list(replies)
        self.feedback = []
        self.views = []

    def propose(self, view, feedback=None):
        self.views.append(view)
        self.feedback.append(feedback)
        reply = self.replies.pop(0) if self.replies else RulesProposer().propose(view)
        if isinstance(reply, Exception):
            raise reply
        return reply


def bad_reply():
    return ProposerReply(
        observations=[],
        proposals=[
            Proposal(None, {"training.unknown": 1}, "exploit"),
            Proposal(None, {"training.lr": 5.0}, "exploit"),
            Proposal(None, {"training.seed": 3}, "exploit"),
            Proposal(42, {}, "replicate"),
        ],
        memory="scripted memory",
        extra={"tokens": 123},
    )


def good_reply():
    return ProposerReply(
        observations=[],
        proposals=[Proposal(None, {"training.lr": 0.002}, "exploit", "h")]
        + [Proposal(None, {}, "baseline")] * 3,
        memory="good memory",
    )


def test_invalid_proposals_are_reasked_with_messages(tmp_path):
    proposer = Scripted([bad_reply(), good_reply()])
    launcher = ToyLauncher()
    engine = make(tmp_path, proposer, launcher, n_iterations=4)
    engine.run()
    feedback = proposer.feedback[1]
    assert any("training.unknown" in f and "not an explorable key" in f for f in feedback)
    assert any("training.lr" in f and "out of range" in f for f in feedback)
    assert any("training.seed" in f and "seeds" in f for f in feedback)
    assert any("parent 42" in f for f in feedback)
    assert launcher.batches[0][0].overrides == {"training.lr": 0.002}
    assert proposer.views[2].memory == "good memory\n"  # the final call saw the accepted memory


def test_still_invalid_slots_fall_back_to_rules(tmp_path):
    proposer = Scripted([bad_reply(), bad_reply()])
    launcher = ToyLauncher()
    engine = make(tmp_path, proposer, launcher, n_iterations=4)
    engine.run()
    launched = launcher.batches[0]
    assert all(set(c.mutation) <= {"training.lr", "training.width"} for c in launched)
    assert all(c.parent is None for c in launched)
    assert any("replaced by the rules proposer" in e for e in engine.state.events)
    assert engine.state.replies[0]["calls"][0]["extra"] == {"tokens": 123}
    assert engine.state.replies[0]["fallback"] == "slots [0, 1, 2, 3]"


def test_proposer_exception_uses_rules(tmp_path):
    engine = make(tmp_path, Scripted([RuntimeError("endpoint down")]), n_iterations=4)
    state = engine.run()
    assert len(state.nodes) == 4 and any("endpoint down" in e for e in state.events)


def test_launcher_crash_reruns_each_lost_child_alone(tmp_path):
    launcher = ToyLauncher(crash_on_batch=1)  # only the first launch() call crashes
    state = make(tmp_path, launcher=launcher, n_iterations=8, max_failure_rate=1.0).run()
    assert [len(b) for b in launcher.batches] == [4, 1, 1, 1, 1, 4]
    assert all(n.status == "completed" for n in state.nodes)
    # the lost children ran again under new job numbers; none is reused
    assert [n.job_num for n in state.nodes] == [4, 5, 6, 7, 8, 9, 10, 11]
    assert state.next_job_idx == 12


def test_a_child_that_crashes_the_launcher_fails_alone(tmp_path):
    class CrashOnNode(ToyLauncher):
        def __call__(self, children):
            if any(c.node_id == 2 for c in children):
                self.batches.append(list(children))
                raise RuntimeError("TerminatedWorkerError: a worker died")
            return super().__call__(children)

    launcher = CrashOnNode()
    state = make(tmp_path, launcher=launcher, n_iterations=8, max_failure_rate=1.0).run()
    assert [n.status for n in state.nodes] == ["completed", "failed", *["completed"] * 6]
    assert "TerminatedWorkerError" in state.nodes[1].error
    assert [len(b) for b in launcher.batches] == [4, 1, 1, 1, 1, 4]
    log = (tmp_path / "exploration" / "sweep.log").read_text()
    assert "re-running nodes [1, 2, 3, 4] one at a time as jobs [4, 5, 6, 7]" in log


def test_nan_and_missing_metric_fail_the_node(tmp_path):
    class NaNLauncher(ToyLauncher):
        def __call__(self, children):
            out = super().__call__(children)
            out[0] = ChildOutcome("completed", {"r2": math.nan})
            out[1] = ChildOutcome("completed", {"other": 1.0})
            return out

    state = make(tmp_path, launcher=NaNLauncher(), n_iterations=4).run()
    assert state.nodes[0].status == "failed" and "nan" in state.nodes[0].error
    assert state.nodes[1].status == "failed" and "missing" in state.nodes[1].error
    assert state.nodes[0].reward == 0.0 and state.nodes[2].status == "completed"


def test_max_failure_rate_stops_a_sweep_that_only_fails(tmp_path):
    engine = make(tmp_path, launcher=ToyLauncher(fail_when=lambda c: True), n_iterations=12)
    with pytest.raises(SweepFailedError, match="4/4 children failed.*max_failure_rate=0.8.*resume=true"):
        engine.run()
    assert len(load_state(tmp_path).nodes) == 4


def test_a_child_that_finds_the_disk_full_stops_the_sweep_and_its_batch_is_proposed_again(tmp_path):
    """A full disk (ENOSPC, or a quota: EDQUOT) is the disk's failure, not the config's: the sweep stops
    before recording the batch, which the resume proposes again, as after a kill; no failed node is
    left to steer the tree away from those configs."""
    reference = make(tmp_path / "ref", n_iterations=12).run()
    full = ToyLauncher(
        fail_when=lambda c: c.job_num == 6,
        error="OSError: [Errno 28] paths.cache_dir=/data/cache: no room for the record (7.1 GB)",
    )
    with pytest.raises(
        SweepOutOfSpace, match=r"^stopping: a disk is full: node 7 \(job 6\) failed with OSError"
    ):
        make(tmp_path / "full", launcher=full, n_iterations=12).run()
    stopped = load_state(tmp_path / "full")
    assert len(stopped.nodes) == 4 and [c["job_num"] for c in stopped.in_flight] == [4, 5, 6, 7]
    log = (tmp_path / "full" / "exploration" / "sweep.log").read_text().splitlines()
    assert "stopping: a disk is full" in log[-1] and "re-proposed on resume" in log[-1]
    resumed = make(tmp_path / "full", resume=True, n_iterations=12).run()
    assert comparable(resumed.nodes) == comparable(reference.nodes)
    assert not [n for n in resumed.nodes if n.status == "failed"]
    quota = ToyLauncher(
        fail_when=lambda c: True, error=f"OSError: [Errno {errno.EDQUOT}] Disk quota exceeded"
    )
    with pytest.raises(SweepOutOfSpace):
        make(tmp_path / "quota", launcher=quota, n_iterations=4).run()


def test_protocol_rules_replaced_only_between_markers(tmp_path):
    block_end = RulesProposer()

    class RuleEditor(Proposer):
        name = "editor"

        def propose(self, view, feedback=None):
            reply = block_end.propose(view, feedback)
            if view.is_block_end:
                reply.protocol_rules = "- new rule [evidence: 1, 2, 3]\n- single-run rule [evidence: 2]"
            return reply

    state = make(tmp_path, RuleEditor(), n_iterations=8).run()
    new = f"# Protocol\nIntro kept.\n{RULES_BEGIN}\n- new rule [evidence: 1, 2, 3]\n{RULES_END}\nTail kept.\n"
    assert state.protocol == new
    assert any("single-run rule" in e and "refused" in e for e in state.events)
    assert (tmp_path / "exploration" / "protocol" / "block_001.diff").read_text().count("+- new rule") == 1
    assert (tmp_path / "exploration" / "protocol.md").read_text() == state.protocol
    assert "old rule" in (tmp_path / "exploration" / "protocol" / "block_001.md").read_text()


def test_user_input_reaches_proposer_and_is_acknowledged(tmp_path):
    (tmp_path / "user_input.md").write_text("# User input\n\n## Pending\nTry larger widths.\n")
    proposer = Scripted([])
    make(tmp_path, proposer, n_iterations=8).run()
    assert proposer.views[0].user_input == "Try larger widths."
    assert proposer.views[1].user_input == ""
    text = (tmp_path / "user_input.md").read_text()
    assert "[ACK batch_1-4] Try larger widths." in text
    assert text.split("## Acknowledged")[0].split("## Pending")[1].strip() == ""


def test_user_input_in_another_encoding_or_of_any_size_never_stops_the_sweep(tmp_path):
    """A user_input.md saved by a Latin-1 editor crashed the sweep (UnicodeDecodeError) mid-run. Its
    bytes are now read as they are: the proposer sees a replacement character, the file is rewritten
    with the user's bytes unchanged, and what a batch reads is capped; a folder of that name is skipped."""
    (tmp_path / "user_input.md").write_bytes(
        b"# User input\n\n## Pending\nTry caf\xe9 widths. " + b"x" * 9000
    )
    proposer = Scripted([])
    make(tmp_path, proposer, n_iterations=8).run()
    seen = proposer.views[0].user_input
    assert seen.startswith("Try caf\ufffd widths. xxx") and len(seen) == 4000 and "chars cut]" in seen
    assert b"] Try caf\xe9 widths. xxx" in (tmp_path / "user_input.md").read_bytes()
    folder = tmp_path / "folder"
    (folder / "user_input.md").mkdir(parents=True)
    state = make(folder, n_iterations=4).run()
    assert len(state.nodes) == 4 and any("user_input.md cannot be read" in e for e in state.events)


@pytest.mark.parametrize(
    ("edit", "reason"),
    [
        (lambda s: s.pop("nodes"), "iteration 4 and the node ids [] disagree"),  # was resumed as empty
        (lambda s: s["nodes"][0].update(metrics="x"), "nodes[0].metrics: str 'x', not dict[str, float]"),
        (lambda s: s["nodes"][0]["metrics"].update(r2="hi"), "node 1: a metric that is not a number"),
        (lambda s: s.update(next_job_idx="abc"), "state.next_job_idx: str 'abc', not int"),
        (lambda s: s["nodes"][1].update(id=None), "nodes[1].id: NoneType 'None', not int"),
        (lambda s: s["nodes"][2].update(status="done"), "node 3: status 'done'; allowed: completed, failed"),
        (lambda s: s["nodes"][0].update(bogus=1), "nodes[0]: unknown key 'bogus'"),
        (lambda s: s.update(next_job_idx=2), "node 3: job 2 is not below next_job_idx 2"),
        (lambda s: s["batches"][0].reverse(), "batches do not list the nodes in order"),
    ],
)
def test_a_state_edited_into_nonsense_is_kept_aside_and_named(tmp_path, edit, reason):
    """A state.json that parses but is not what the sweep writes (a hand edit, a bug) stops the resume
    with one line naming the field, and is kept; before, a missing node list resumed as an empty sweep
    and a wrong type raised deep in the engine."""
    make(tmp_path, n_iterations=4).run()
    path = tmp_path / "exploration" / "state.json"
    saved = json.loads(path.read_text())
    edit(saved)
    path.write_text(json.dumps(saved))
    with pytest.raises(SweepConfigError, match="is unreadable") as caught:
        make(tmp_path, resume=True, n_iterations=8)
    assert f"(ValueError: {reason})" in str(caught.value)
    assert not path.exists() and len(list(path.parent.glob("state.json.corrupt-*"))) == 1


def test_kill_inside_batch_then_resume_matches_uninterrupted(tmp_path):
    reference = make(tmp_path / "ref", n_iterations=12).run()
    with pytest.raises(KeyboardInterrupt):
        make(tmp_path / "k", launcher=ToyLauncher(interrupt_on_batch=2), n_iterations=12).run()
    killed = load_state(tmp_path / "k")
    assert len(killed.nodes) == 4 and [c["job_num"] for c in killed.in_flight] == [4, 5, 6, 7]
    resumed = make(tmp_path / "k", resume=True, n_iterations=12).run()
    assert comparable(resumed.nodes) == comparable(reference.nodes)
    jobs = [n.job_num for n in resumed.nodes]
    assert jobs == [0, 1, 2, 3, 8, 9, 10, 11, 12, 13, 14, 15] and len(set(jobs)) == 12
    saved = json.loads((tmp_path / "k" / "exploration" / "state.json").read_text())
    assert saved["next_job_idx"] == 16 and saved["in_flight"] == []


def test_stop_between_batches_then_extend(tmp_path):
    make(tmp_path, n_iterations=4).run()
    with pytest.raises(SweepConfigError, match="resume=true"):
        make(tmp_path, n_iterations=8)
    state = make(tmp_path, resume=True, n_iterations=8).run()
    assert [n.job_num for n in state.nodes] == list(range(8))
    assert comparable(state.nodes) == comparable(make(tmp_path / "ref", n_iterations=8).run().nodes)


def test_bad_engine_settings_name_key():
    with pytest.raises(SweepConfigError, match="slot_roles.*exploit, explore"):
        EngineConfig(slot_roles=("exploit", "greedy")).check()
    with pytest.raises(SweepConfigError, match="n_parallel"):
        EngineConfig(n_parallel=0).check()
    with pytest.raises(
        SweepConfigError, match=r"^hydra\.sweeper\.memory_max_lines: 0; allowed: an integer >= 1$"
    ):
        EngineConfig(memory_max_lines=0).check()
    with pytest.raises(SweepConfigError, match="simulation_seed.*slot, iteration, fixed"):
        EngineConfig(simulation_seed="random").check()
    with pytest.raises(SweepConfigError, match=r"^hydra\.sweeper\.ucb\.c: -1\.0; allowed: a finite float"):
        EngineConfig.from_settings({"ucb": {"c": -1.0}})
    with pytest.raises(SweepConfigError, match=r"^hydra\.sweeper\.ucb\.lcb_kappa: nan; allowed"):
        EngineConfig.from_settings({"ucb": {"lcb_kappa": float("nan")}})
    assert EngineConfig.from_settings({"ucb": {"c": 0.0}}).ucb_c == 0.0  # greedy on R is allowed
    # a child's simulation seed, seed x 1000 + slot, must stay a seed numpy and Lightning accept
    with pytest.raises(
        SweepConfigError, match=r"^hydra\.sweeper\.seed: -1; allowed: an integer in \[0, 4294966\]$"
    ):
        EngineConfig(seed=-1).check()
    EngineConfig(seed=4294966, n_parallel=4).check()
    assert 4294966 * 1000 + 999 <= 2**32 - 1


HORIZONS = {"training.horizon": [4, 16, 32, 64]}


def test_slot_params_are_forced_recorded_hashed_and_never_proposed(tmp_path):
    sneaky = ProposerReply(
        observations=[],
        proposals=[Proposal(None, {"training.horizon": 8, "training.lr": 0.002}, "exploit")]
        + [Proposal(None, {}, "baseline")] * 3,
        memory="m",
    )
    proposer = Scripted([sneaky])
    launcher = ToyLauncher()
    roles = ["exploit", "exploit", "replicate", "replicate"]
    state = make(tmp_path, proposer, launcher, n_iterations=8, slot_params=HORIZONS, slot_roles=roles).run()
    assert proposer.feedback[1] == [
        "slot 0: training.horizon: fixed per slot by hydra.sweeper.slot_params "
        "(slot 0=4, slot 1=16, slot 2=32, slot 3=64) and never proposed; "
        "the sweeper sets it for every child of the slot"
    ]
    assert proposer.views[0].slot_params == {"training.horizon": (4, 16, 32, 64)}
    launched = [c for batch in launcher.batches for c in batch]
    assert len(launched) == 8
    assert all(c.overrides["training.horizon"] == HORIZONS["training.horizon"][c.slot] for c in launched)
    assert all("training.horizon" not in n.mutation for n in state.nodes)
    assert [n.overrides["training.horizon"] for n in state.nodes] == [4, 16, 32, 64] * 2
    # Batch 1's slots 2 and 3 both run the block root: the same config without slot_params, two
    # configs with them (their horizons differ), so they are not replicates of each other.
    plain = make(tmp_path / "plain", n_iterations=4, slot_roles=roles).run()
    assert plain.nodes[2].config_hash == plain.nodes[3].config_hash
    assert state.nodes[2].overrides == {"training.horizon": 32} and state.nodes[2].mutation == {}
    assert state.nodes[2].config_hash != state.nodes[3].config_hash
    saved = json.loads((tmp_path / "exploration" / "state.json").read_text())
    assert saved["search_space"]["slot_params"] == HORIZONS
    assert "training.horizon=32" in (tmp_path / "exploration" / "analysis.md").read_text()


@pytest.mark.parametrize(
    ("slot_params", "message"),
    [
        (
            {"training.horizon": [4, 16, 32]},
            r"slot_params.training.horizon: 3 value\(s\) \[4, 16, 32\] for n_parallel=4; "
            r"allowed: a list of exactly 4 values",
        ),
        ({"training.horizon": 4}, r"slot_params.training.horizon: 4 is not a list"),
        ({"training.lr": [0.1] * 4}, "slot_params.training.lr: also declared in params/block_params"),
        ({"training.seed": [1, 2, 3, 4]}, "slot_params.training.seed: seeds, hydra.* and sweep_node.*"),
    ],
)
def test_bad_slot_params_fail_before_anything_is_written(tmp_path, slot_params, message):
    with pytest.raises(SweepConfigError, match=message):
        make(tmp_path, slot_params=slot_params)
    assert not (tmp_path / "exploration").exists()


def test_slot_params_compose_check_runs_per_slot_at_start(tmp_path):
    checked = []

    def check(child):
        checked.append((child.slot, dict(child.overrides)))
        if child.overrides.get("training.horizon") == 64:
            return "the child config does not compose: horizon 64 is too long"
        return None

    with pytest.raises(SweepConfigError, match=r"slot_params \(slot 3\): the child config does not compose"):
        make(tmp_path, check_child=check, slot_params=HORIZONS)
    assert checked == [(s, {"training.horizon": h}) for s, h in enumerate([4, 16, 32, 64])]
    assert not (tmp_path / "exploration").exists()


def test_block_end_view_shows_the_finished_block_and_rules_may_cite_any_block(tmp_path):
    class BlockEndEditor(Proposer):
        name = "editor"
        rules_policy = RulesPolicy(min_evidence=3, max_rules=1)  # the engine enforces the proposer's policy

        def __init__(self):
            self.views = []

        def propose(self, view, feedback=None):
            self.views.append(view)
            reply = RulesProposer().propose(view, feedback)
            if view.is_block_end and view.block == 3:
                reply.protocol_rules = (
                    "- cites block one only [evidence: 1, 2, 3]\n- a second rule [evidence: 5, 6, 7]\n"
                )
            return reply

    editor = BlockEndEditor()
    engine = make(tmp_path, editor, n_iterations=12, n_parallel=2)
    state = engine.run()
    views = {v.first_iteration: v for v in editor.views if v.n_parallel}
    assert sorted(views) == [1, 3, 5, 7, 9, 11]
    for first, block_end in ((1, False), (3, False), (5, True), (7, False), (9, True), (11, False)):
        assert views[first].is_block_end is block_end
        assert (views[first].finished_block != ()) is block_end
    for first, finished in ((5, [1, 2, 3, 4]), (9, [5, 6, 7, 8])):
        view = views[first]
        assert view.ucb_table == () and sorted(r.node_id for r in view.finished_block) == finished
        ucbs = [r.ucb for r in view.finished_block]
        assert ucbs == sorted(ucbs, reverse=True)
        by_id = {n.id: n for n in state.nodes}
        assert all(r.metrics == by_id[r.node_id].metrics for r in view.finished_block)
    # Block 3's edit cites block 1 (not in the view's tables): accepted; the 2nd rule exceeds max_rules=1.
    assert split_protocol(state.protocol)[1] == "- cites block one only [evidence: 1, 2, 3]\n"
    assert any("a second rule" in e and "limited to 1 rules" in e for e in state.events)


def test_engine_config_from_plain_settings():
    assert EngineConfig.from_settings({}) == EngineConfig()
    config = EngineConfig.from_settings(
        {
            "n_parallel": 2,
            "seed_keys": {},  # an explicit empty mapping: the sweeper sets no seeds
            "ucb": {"formula": "puct", "c": 2.0},
            "objective": {"metric": "s", "direction": "target", "target": 1.0, "partial_band": [0.3, 3.0]},
            "slot_params": {"training.horizon": [4, 16]},
            "proposer": {"_target_": "ignored here"},
        }
    )
    assert (config.n_parallel, dict(config.seed_keys), config.ucb_formula, config.ucb_c) == (
        2,
        {},
        "puct",
        2.0,
    )
    assert config.objective.partial_band == (0.3, 3.0) and config.slot_values(1) == {"training.horizon": 16}
    with pytest.raises(SweepConfigError, match=r"hydra.sweeper.objective: objective.target: required"):
        EngineConfig.from_settings({"objective": {"direction": "target"}})
    with pytest.raises(SweepConfigError, match=r"hydra.sweeper.objective: .*unexpected keyword.*'goal'"):
        EngineConfig.from_settings({"objective": {"goal": 1}})
    with pytest.raises(SweepConfigError, match=r"slot_params.training.horizon: 1 value\(s\)"):
        EngineConfig.from_settings({"n_parallel": 2, "slot_params": {"training.horizon": [4]}})
