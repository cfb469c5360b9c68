"""The llm_ucb plugin through Hydra: discovery, in-process and CLI sweeps (basic, joblib), kill + resume."""

import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from omegaconf import OmegaConf

from hydra_llm.explore.engine_config import SweepConfigError
from hydra_llm.explore.reports import best_config
from hydra_llm.explore.tree import Node

ROOT = Path(__file__).resolve().parents[1]
TOY = ROOT / "tests" / "apps" / "toy" / "toy_app.py"
SPACE = (
    '+hydra.sweeper.params={training.lr:"tag(log,interval(1e-5,1e-1))",'
    'training.width:"range(1,17)",training.act:"choice(relu,tanh)"}'
)
BASE = [
    "hydra/sweeper=llm_ucb",
    "hydra/sweeper/proposer=rules",
    "hydra.sweeper.objective.metric=score",
    "hydra.sweeper.tree_plot=false",
]


def load(sweep_dir):
    return json.loads((Path(sweep_dir) / "exploration" / "state.json").read_text())


def comparable(nodes):
    keys = (
        "id",
        "parent",
        "block",
        "slot",
        "strategy",
        "overrides",
        "simulation",
        "seeds",
        "status",
        "metrics",
    )
    return [{k: n[k] for k in keys} for n in nodes]


def cli(sweep_dir, *overrides, check=True, timeout=240, space=SPACE, base=BASE, env=None):
    env = dict(env or os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", HYDRA_FULL_ERROR="0")
    cmd = [sys.executable, str(TOY), "-m", *base, space, f"hydra.sweep.dir={sweep_dir}", *overrides]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"rc={proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def test_discovered_and_import_light():
    names = [cls.__name__ for cls in Plugins.instance().discover(Sweeper)]
    assert "LLMUCBSweeper" in names
    # of hydra_llm only the (torch-free) schemas: nothing heavy on a Hydra start
    code = (
        "import sys, hydra_plugins.llm_ucb_sweeper.llm_ucb_sweeper; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & "
        "{'torch', 'matplotlib', 'openai', 'wandb', 'lightning', 'numpy'}), "
        "sorted({m.split('.')[1] for m in sys.modules if m.startswith('hydra_llm.')}))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[] ['schemas']"


def test_in_process_sweep_records_raise_and_nan(hydra_sweep_runner, tmp_path):
    sys.path.insert(0, str(TOY.parent))
    try:
        import toy_app
    finally:
        sys.path.remove(str(TOY.parent))
    sweep = hydra_sweep_runner(
        calling_file=str(TOY),
        calling_module=None,
        task_function=toy_app.run,
        config_path="conf",
        config_name="config",
        overrides=[
            *BASE,
            SPACE,
            "hydra.sweeper.n_iterations=8",
            "hydra.sweeper.max_failure_rate=1.0",
            "behaviour.raise_if_lr_above=0.015",
            "behaviour.nan_if_width=2",
        ],
        temp_dir=str(tmp_path),
    )
    with sweep:  # the runner deletes the sweep folder on exit: check everything inside
        returns = sweep.returns
        assert [len(batch) for batch in returns] == [4, 4]
        state = load(tmp_path)
        nodes = state["nodes"]
        assert [n["job_num"] for n in nodes] == list(range(8))
        raised = [n for n in nodes if n["status"] == "failed" and "ValueError: lr" in (n["error"] or "")]
        nan = [n for n in nodes if n["status"] == "failed" and "is nan" in (n["error"] or "")]
        assert raised and nan, [(n["overrides"], n["error"]) for n in nodes]
        assert all(n["overrides"].get("training.lr", 0.01) > 0.015 for n in raised)
        assert all({**n["overrides"]}.get("training.width") == 2 for n in nan)
        done = [n for n in nodes if n["status"] == "completed"]
        assert done and all(n["output_dir"].startswith(str(tmp_path)) for n in done)
        assert all(n["plots"] and n["plots"][0].endswith("plots/activity.png") for n in done)
        # each child was told its node and seeds (W&B grouping reads sweep_node.*)
        child = yaml.safe_load((tmp_path / "1" / ".hydra" / "config.yaml").read_text())
        assert child["sweep_node"]["node"] == 2 and child["sweep_node"]["slot"] == 1
        assert child["sweep_node"]["sweep_id"] == state["sweep_id"]
        assert child["training"]["seed"] == 2 * 1000 + 1 + 500 and child["simulation"]["seed"] == 1
        results = yaml.safe_load((tmp_path / "optimization_results.yaml").read_text())
        # the best config is named with all its runs and judged on their mean
        runs = [n for n in nodes if n["id"] in results["best_config_replicates"]["nodes"]]
        assert runs and len({json.dumps(n["overrides"], sort_keys=True) for n in runs}) == 1
        best = max((n for n in runs if n["status"] == "completed"), key=lambda n: n["metrics"]["score"])
        assert results["best_node"] == best["id"] and results["best_job_num"] == best["job_num"]
        scores = [n["metrics"]["score"] for n in runs if n["status"] == "completed"]
        assert results["best_value"] == pytest.approx(sum(scores) / len(scores))
        for name in ("analysis.md", "memory.md", "ucb_scores.txt", "variance.md"):
            assert (tmp_path / "exploration" / name).stat().st_size > 0
        assert (tmp_path / "multirun.yaml").exists()


def test_cli_kill_inside_batch_then_resume(tmp_path):
    reference = tmp_path / "ref"
    cli(reference, "hydra.sweeper.n_iterations=12")
    killed = tmp_path / "killed"
    marker = tmp_path / "killed.marker"
    kill = ["behaviour.kill_at_job=5", f"behaviour.kill_marker={marker}"]
    proc = cli(killed, "hydra.sweeper.n_iterations=12", *kill, check=False)
    assert proc.returncode == -signal.SIGKILL
    state = load(killed)
    assert len(state["nodes"]) == 4 and [c["job_num"] for c in state["in_flight"]] == [4, 5, 6, 7]
    assert comparable(state["nodes"]) == comparable(load(reference)["nodes"][:4])
    proc = cli(killed, "hydra.sweeper.n_iterations=12", "hydra.sweeper.resume=true", *kill, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    state = load(killed)
    assert comparable(state["nodes"]) == comparable(load(reference)["nodes"])
    jobs = [n["job_num"] for n in state["nodes"]]
    assert jobs == [0, 1, 2, 3, *range(8, 16)]
    assert "re-proposing" in (killed / "exploration" / "sweep.log").read_text()


def test_cli_between_batches_resume_extends(tmp_path):
    cli(tmp_path, "hydra.sweeper.n_iterations=4")
    proc = cli(tmp_path, "hydra.sweeper.n_iterations=8", check=False)
    assert proc.returncode != 0 and "hydra.sweeper.resume=true" in proc.stderr
    cli(tmp_path, "hydra.sweeper.n_iterations=8", "hydra.sweeper.resume=true")
    assert [n["job_num"] for n in load(tmp_path)["nodes"]] == list(range(8))


def test_a_sweep_folder_moved_before_its_resume_reads_its_jobs_in_the_new_place(tmp_path):
    """A sweep moved (or copied) elsewhere, as from a cluster's scratch to project space, and resumed
    there reads its earlier nodes' job folders and plots in the new place: the report shows every
    node's plot, where it dropped those of the nodes run before the move."""
    first, moved = tmp_path / "scratch" / "sweep", tmp_path / "project" / "sweep"
    cli(first, "hydra.sweeper.n_iterations=4")
    moved.parent.mkdir()
    first.rename(moved)
    cli(moved, "hydra.sweeper.n_iterations=8", "hydra.sweeper.resume=true")
    state = load(moved)
    assert state["sweep_dir"] == str(moved) and [n["job_num"] for n in state["nodes"]] == list(range(8))
    for n in state["nodes"]:
        folder = moved / str(n["job_num"])
        assert n["output_dir"] == str(folder) and n["plots"] == [str(folder / "plots" / "activity.png")]
    log = (moved / "exploration" / "sweep.log").read_text()
    assert f"resume: the sweep folder was {first}; the job folders and plots of 4 nodes are read from" in log
    report = (moved / "exploration" / "report.html").read_text()
    assert all(f"../{job}/plots/activity.png" in report for job in range(8))


def test_cli_sweep_keys_start_from_their_config_values(tmp_path):
    # The space as command-line sweeps (as Optuna users write it): each key's default is its config value.
    space = "training.lr=tag(log,interval(1e-5,1e-1))"
    cli(tmp_path, "training.width=range(1,17)", "hydra.sweeper.n_iterations=4", space=space)
    state = load(tmp_path)
    defaults = {p["key"]: p["default"] for p in state["search_space"]["params"]}
    assert defaults == {"training.lr": 0.01, "training.width": 4}
    moved = [n for n in state["nodes"] if n["mutation"]]
    assert moved and all("None" not in n["mutation_text"] for n in moved)
    for n in moved:  # a move from the root is one step from the config's value
        ((key, value),) = n["mutation"].items()
        steps = {"training.lr": (0.01 / 3, 0.03), "training.width": (2, 6)}[key]  # x/÷3; 16/8
        assert any(value == pytest.approx(step, rel=1e-5) for step in steps)


def test_cli_joblib_raise_nan_and_hard_crash_fails_alone(tmp_path):
    proc = cli(
        tmp_path,
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
        "hydra.sweeper.n_iterations=8",
        "hydra.sweeper.max_failure_rate=1.0",
        "behaviour.raise_if_lr_above=0.015",
        "behaviour.nan_if_width=2",
        "behaviour.exit_at_node=6",
        "behaviour.sleep=0.5",
    )
    assert proc.returncode == 0
    state = load(tmp_path)
    nodes = state["nodes"]
    errors = [n["error"] or "" for n in nodes]
    # batch 1 (rules, seed 0): node 1 sets lr=0.03 (raises), node 2 act=tanh, node 3 width=2 (NaN),
    # node 4 runs the root config
    assert errors[0].startswith("ValueError: lr 0.03") and "is nan" in errors[2]
    assert [nodes[1]["status"], nodes[3]["status"]] == ["completed", "completed"]
    # node 6 calls os._exit in a loky worker: launch() raises for the whole batch. Its mates keep their
    # results (recorded, or re-run alone); node 6 crashes again alone and is the only failed node.
    assert [n["status"] for n in nodes[4:]] == ["completed", "failed", "completed", "completed"]
    assert errors[5].startswith("launcher error: TerminatedWorkerError"), errors[5]
    assert all(math.isfinite(n["metrics"]["score"]) for n in nodes[4:] if n["id"] != 6)
    jobs = [n["job_num"] for n in nodes]
    assert len(set(jobs)) == 8 and min(jobs[4:]) >= 4 and nodes[5]["job_num"] >= 8  # none reused
    assert state["next_job_idx"] == max(jobs) + 1
    log = (tmp_path / "exploration" / "sweep.log").read_text()
    assert "the launcher crashed" in log and "re-running nodes" in log
    assert "so a hard crash fails alone" in log
    assert len(state["batches"]) == 2


def test_cli_joblib_a_child_past_the_launchers_timeout_fails_alone_and_says_so(tmp_path):
    """joblib's per-child ``timeout`` stops the whole pool with a bare TimeoutError: the batch mates
    keep their results (recorded, or re-run alone) and the slow node fails alone, naming the limit."""
    proc = cli(
        tmp_path,
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
        "hydra.launcher.timeout=3",
        "hydra.sweeper.n_iterations=4",
        "behaviour.sleep_at_node=2",
        "behaviour.sleep_at_job_s=30",
    )
    assert proc.returncode == 0
    nodes = load(tmp_path)["nodes"]
    assert [n["status"] for n in nodes] == ["completed", "failed", "completed", "completed"]
    assert nodes[1]["error"] == (
        "launcher error: time limit reached (hydra.launcher.timeout=3.0 s per child): TimeoutError:"
    )
    assert "re-running nodes [2]" in (tmp_path / "exploration" / "sweep.log").read_text()


def test_a_sweep_folder_that_cannot_be_written_stops_the_sweep_with_one_line(tmp_path):
    """Before, the engine's lock raised a 35-line traceback (mkdir: read-only file system)."""
    (tmp_path / "file").write_text("")
    sweep = tmp_path / "file" / "sweep"
    proc = cli(sweep, check=False)
    assert proc.returncode == 1 and proc.stderr.strip().splitlines() == [
        f"[llm_ucb] hydra.sweep.dir={sweep}: {tmp_path / 'file'} is not a folder; "
        "choose a folder you can write"
    ]
    read_only = tmp_path / "ro"
    read_only.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,ro", "tmpfs", str(read_only)]).returncode:
        pytest.skip("no root here to mount a read-only tmpfs; the case above passed")
    try:
        proc = cli(read_only / "sweep", check=False)
    finally:
        subprocess.run(["umount", str(read_only)], check=True)
    assert proc.returncode == 1 and proc.stderr.strip().splitlines() == [
        f"[llm_ucb] hydra.sweep.dir={read_only / 'sweep'}: {read_only} is not writable (a read-only file "
        "system); choose a folder you can write"
    ]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ('+hydra.sweeper.params={training.seed:"range(1,5)"}', "training.seed: cannot be explored: seeds"),
        (
            '+hydra.sweeper.params={training.nope:"choice(1,2)"}',
            "training.nope is not a key of the composed config",
        ),
        ("hydra.sweeper.objective.direction=up", "objective.direction: 'up' is not allowed"),
        ("hydra.sweeper.slot_roles=[exploit,greedy]", "slot_roles"),
        (
            "hydra.sweeper.protocol=instructions/none.md",
            "hydra.sweeper.protocol: 'instructions/none.md' is not a file",
        ),
    ],
)
def test_cli_bad_settings_fail_before_any_child(tmp_path, override, message):
    space = override if override.startswith("+hydra.sweeper.params") else SPACE
    proc = cli(
        tmp_path, override if space == SPACE else "hydra.sweeper.n_iterations=4", check=False, space=space
    )
    assert proc.returncode != 0
    assert message in proc.stderr, proc.stderr[-2000:]
    assert not (tmp_path / "0").exists()


def test_a_protocol_that_is_not_utf8_is_one_line(tmp_path):
    protocol = tmp_path / "protocol.md"
    protocol.write_bytes(b"# Protocol\nCaf\xe9 first.\n")  # saved by a Latin-1 editor
    proc = cli(tmp_path / "sweep", f"hydra.sweeper.protocol={protocol}", check=False)
    assert proc.returncode == 1 and proc.stderr.strip().splitlines() == [
        f"[llm_ucb] hydra.sweeper.protocol: {protocol} is not UTF-8 text (byte 0xe9 at position 14); "
        "save it as UTF-8"
    ]
    assert not (tmp_path / "sweep").exists()


def test_auto_proposer_says_which_it_chose(tmp_path):
    auto = [o for o in BASE if not o.startswith("hydra/sweeper/proposer")]
    env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
    cli(tmp_path / "offline", "hydra.sweeper.n_iterations=4", base=auto, env=env)
    first = (tmp_path / "offline" / "exploration" / "sweep.log").read_text().splitlines()[0]
    assert first.endswith("proposer: rules (auto: no $OPENAI_API_KEY in the environment and no base_url)")
    # an endpoint that refuses connections: auto picks llm, the sweep still completes (rules fallback)
    env["OPENAI_API_KEY"] = "sk-test-not-a-real-key"
    endpoint = [
        "hydra.sweeper.proposer.base_url=http://127.0.0.1:9/v1",
        "hydra.sweeper.proposer.max_retries=0",
    ]
    cli(tmp_path / "llm", "hydra.sweeper.n_iterations=4", *endpoint, base=auto, env=env)
    log = (tmp_path / "llm" / "exploration" / "sweep.log").read_text()
    assert log.splitlines()[0].endswith("proposer: llm (auto: $OPENAI_API_KEY is set)")
    assert len(load(tmp_path / "llm")["nodes"]) == 4
    assert "sk-test-not-a-real-key" not in (tmp_path / "llm" / "exploration" / "state.json").read_text()


def test_non_number_return_is_a_failed_node(tmp_path):
    cli(
        tmp_path,
        "hydra.sweeper.n_iterations=4",
        "hydra.sweeper.max_failure_rate=1.0",
        "behaviour.return_text=true",
    )
    nodes = load(tmp_path)["nodes"]
    assert [n["status"] for n in nodes] == ["failed"] * 4
    assert all(n["error"] == "task returned str; expected a dict of floats or a float" for n in nodes)
    proc = cli(tmp_path / "stop", "hydra.sweeper.n_iterations=8", "behaviour.return_text=true", check=False)
    assert proc.returncode != 0 and "4/4 children failed" in proc.stderr
    assert (proc.stdout + proc.stderr).count("children failed") == 1  # one line in the terminal
    assert "4/4 children failed" in (tmp_path / "stop" / "exploration" / "sweep.log").read_text()
    assert len(load(tmp_path / "stop")["nodes"]) == 4  # stopped after the first batch, state kept


def test_llm_proposer_conf_exposes_every_constructor_argument():
    import dataclasses
    import inspect

    from hydra_llm.explore.proposers.llm import LLMProposer
    from hydra_plugins.llm_ucb_sweeper.llm_ucb_sweeper import AutoProposerConf, LLMProposerConf

    params = inspect.signature(LLMProposer.__init__).parameters
    wanted = {k: p.default for k, p in params.items() if k not in ("self", "fallback")}
    for conf in (LLMProposerConf, AutoProposerConf):
        fields = {f.name: f.default for f in dataclasses.fields(conf) if f.name != "_target_"}
        assert sorted(fields) == sorted(wanted), conf.__name__
        # same defaults, except the model (required by the constructor) and the record folder
        differ = {k for k in wanted if fields[k] != wanted[k]}
        assert differ == {"model", "record_dir"}, (conf.__name__, differ)


@pytest.mark.parametrize("choice", ["llm", "auto"])
def test_llm_proposer_limits_compose_without_plus(choice, monkeypatch):
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from hydra_llm.explore.proposers.llm import LLMProposer
    from hydra_llm.explore.proposers.rules import RulesProposer

    overrides = [
        "hydra/sweeper=llm_ucb",
        f"hydra/sweeper/proposer={choice}",
        "hydra.sweeper.proposer.max_rules=5",
        "hydra.sweeper.proposer.min_rule_evidence=4",
        "hydra.sweeper.proposer.max_rules_chars=900",
        "hydra.sweeper.proposer.memory_max_lines=60",
        "hydra.sweeper.proposer.max_reasks=0",
        "hydra.sweeper.proposer.structured_output=json_object",
        "hydra.sweeper.proposer.max_tokens=2000",
    ]
    with initialize_config_dir(config_dir=str(TOY.parent / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=overrides, return_hydra_config=True)
        node = cfg.hydra.sweeper.proposer
        assert node.max_rules == 5 and node.min_rule_evidence == 4 and node.max_tokens == 2000
        monkeypatch.delenv("OPENAI_API_KEY", raising=False)
        if choice == "auto":  # no endpoint: the rules proposer, the LLM limits are ignored
            assert isinstance(instantiate(node), RulesProposer)
        node.base_url = "http://127.0.0.1:9/v1"
        proposer = instantiate(node)
    assert isinstance(proposer, LLMProposer)
    policy = proposer.rules_policy
    assert (policy.min_evidence, policy.max_rules, policy.max_chars) == (4, 5, 900)
    assert proposer.builder.limits.memory_lines == 60
    settings = proposer.settings
    assert (settings.max_reasks, settings.structured_output, settings.max_tokens) == (0, "json_object", 2000)


SLOTS = "+hydra.sweeper.slot_params={training.horizon:[4,16,32,64]}"  # + adds keys to the dict


def test_cli_slot_params_reach_every_child(tmp_path):
    cli(tmp_path, "hydra.sweeper.n_iterations=8", SLOTS)
    nodes = load(tmp_path)["nodes"]
    horizons = [4, 16, 32, 64]
    assert [n["overrides"]["training.horizon"] for n in nodes] == horizons * 2
    assert [n["metrics"]["horizon"] for n in nodes] == [float(h) for h in horizons * 2]  # what the child ran
    assert all("training.horizon" not in n["mutation"] for n in nodes)
    job5 = yaml.safe_load((tmp_path / "5" / ".hydra" / "overrides.yaml").read_text())
    assert "training.horizon=16" in job5


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            "+hydra.sweeper.slot_params={training.horizon:[4,16]}",
            "slot_params.training.horizon: 2 value(s) [4, 16] for n_parallel=4",
        ),
        (
            "+hydra.sweeper.slot_params={training.nope:[1,2,3,4]}",
            "hydra.sweeper.slot_params (slot 0): the child config does not compose",
        ),
    ],
)
def test_cli_bad_slot_params_fail_before_any_child(tmp_path, override, message):
    proc = cli(tmp_path, "hydra.sweeper.n_iterations=4", override, check=False)
    assert proc.returncode != 0 and message in proc.stderr, proc.stderr[-2000:]
    assert not (tmp_path / "0").exists() and not (tmp_path / "exploration" / "state.json").exists()


def test_cli_sigkill_between_batches_then_resume(tmp_path):
    """A real SIGKILL while the sweeper proposes batch 2 (batch 1 persisted, nothing of batch 2 launched)."""
    reference = tmp_path / "ref"
    cli(reference, "hydra.sweeper.n_iterations=12")
    killed, marker = tmp_path / "killed", tmp_path / "paused.marker"
    pause = [
        "hydra.sweeper.proposer._target_=toy_proposer.PausingProposer",
        "+hydra.sweeper.proposer.pause_at_iteration=5",
        f"+hydra.sweeper.proposer.marker={marker}",
    ]
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", HYDRA_FULL_ERROR="0")
    cmd = [sys.executable, str(TOY), "-m", *BASE, SPACE, f"hydra.sweep.dir={killed}"]
    proc = subprocess.Popen(
        [*cmd, "hydra.sweeper.n_iterations=12", *pause],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert marker.exists(), f"the sweeper never reached batch 2's proposer step (rc={proc.poll()})"
        assert int(marker.read_text()) == proc.pid  # the basic launcher: the sweeper process itself
        os.kill(proc.pid, signal.SIGKILL)
        _, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL, stderr[-2000:]
    state = load(killed)
    assert len(state["nodes"]) == 4 and state["in_flight"] == [] and state["next_job_idx"] == 4
    assert comparable(state["nodes"]) == comparable(load(reference)["nodes"][:4])
    assert sorted(p.name for p in killed.iterdir() if p.name.isdigit()) == ["0", "1", "2", "3"]
    assert (killed / "exploration" / "analysis.md").read_text().count("## Iter ") == 4

    cli(killed, "hydra.sweeper.n_iterations=12", "hydra.sweeper.resume=true", *pause)
    state = load(killed)
    assert comparable(state["nodes"]) == comparable(load(reference)["nodes"])
    assert [n["job_num"] for n in state["nodes"]] == list(range(12))  # none lost, none reused
    assert state["batches"] == load(reference)["batches"]
    log = (killed / "exploration" / "sweep.log").read_text()
    assert "resumed at iteration 5, next job 4" in log and "re-proposing" not in log


@pytest.mark.parametrize("launcher", ["basic", "joblib"])
def test_console_shows_the_exploration_not_the_children(tmp_path, launcher):
    extra = ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"] if launcher == "joblib" else []
    proc = cli(tmp_path, *extra, "hydra.sweeper.n_iterations=8", "behaviour.chatter=true")
    out = proc.stdout + proc.stderr
    assert "toy child" not in out, out[-3000:]
    lines = [line for line in out.splitlines() if line.strip()]
    node_lines = [line for line in lines if "[llm_ucb] node " in line]
    batch_lines = [line for line in lines if "[llm_ucb] batch iters " in line]
    assert len(node_lines) == 8 and len(batch_lines) == 2, out[-3000:]
    assert all(" -> score=" in line and "| best " in line and "(parent " in line for line in node_lines)
    assert all("runs in" in line and "0 failed" in line for line in batch_lines)
    # the last line names the best config with its spread over replicates (none for a single run)
    best = best_config([Node.from_dict(n) for n in load(tmp_path)["nodes"]])
    done = [line for line in lines if "[llm_ucb] done: best config " in line]
    assert len(done) == 1 and f"score={best.summary('score')}; best run node {best.node.id} (" in done[0]
    assert len(lines) <= 8 + 2 + 6, "\n".join(lines)  # plus a few sweep-level lines (proposer, done)
    for job in range(8):
        log = (tmp_path / str(job) / "child.log").read_text()
        assert "toy child chatter on stdout" in log and "toy child warning on stderr" in log
        assert "toy child subprocess output" in log


def test_a_child_killed_at_a_launcher_limit_says_which_limit_and_setting():
    """The error of a child that SLURM or submitit killed leads with the limit and the override that
    sets it (the real messages: submitit's handler, submitit's missing result, SLURM's out-of-memory
    state); any other error is kept as it was, and every one stays within 1,000 characters."""
    from hydra import compose, initialize_config_dir

    from hydra_plugins.llm_ucb_sweeper._impl import limit_reached, limit_settings

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        cfg = compose("train", ["hydra/launcher=slurm", "resources.timeout_min=7"], return_hydra_config=True)
    settings = limit_settings(cfg.hydra.launcher)  # the preset takes its limits from resources.*
    assert settings == {
        "timeout_min": "resources.timeout_min=7",
        "mem_gb": f"resources.mem_gb={cfg.resources.mem_gb}",
    }
    plain = OmegaConf.create({"hydra": {"launcher": {"timeout_min": 1, "partition": "cpu"}}})
    assert limit_settings(plain.hydra.launcher) == {"timeout_min": "hydra.launcher.timeout_min=1"}

    handler = "UncompletedJobError: Job not requeued because: timed-out and not checkpointable."
    assert limit_reached(handler, settings) == f"time limit reached (resources.timeout_min=7): {handler}"
    missing = "launcher error: UncompletedJobError: Job 12 (task: 1) with path /x/12_1_result.pkl has not "
    killed = limit_reached(missing + "produced any output (state: TIMEOUT) " + "x" * 2000, settings)
    assert killed.startswith("time limit reached (resources.timeout_min=7): launcher error: ")
    assert len(killed) == 1000
    oom = limit_reached(missing + "produced any output (state: OUT_OF_MEMORY)", settings)
    assert oom.startswith(f"memory limit reached (resources.mem_gb={cfg.resources.mem_gb}): launcher error: ")
    # a launcher without the key (joblib): the limit without a setting
    assert limit_reached(handler, {}).startswith("time limit reached: UncompletedJobError")
    assert limit_reached("ValueError: bad lr", settings) == "ValueError: bad lr"


def test_a_sweep_to_slurm_from_where_no_cluster_answers_stops_before_the_first_batch(tmp_path, monkeypatch):
    """Without sbatch on the PATH, or with a controller that does not answer ``scontrol ping`` (here a
    SLURM_CONF naming no file: scontrol retries for 60 s), the sweep stops with one line instead of
    sending every child of its first batch to a failing sbatch; a primary controller that answers is
    enough (a stand-in scontrol reports a backup down). The other launchers are not asked;
    tests/test_slurm.py runs the sweeps against a real controller that answers."""
    from hydra import compose, initialize_config_dir

    from hydra_plugins.llm_ucb_sweeper._impl import check_slurm

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        slurm = compose("train", ["hydra/launcher=slurm"], return_hydra_config=True)
        joblib = compose("train", ["hydra/launcher=joblib"], return_hydra_config=True)
    check_slurm(joblib, timeout_s=2)
    with monkeypatch.context() as bare:
        bare.setenv("PATH", str(tmp_path))
        with pytest.raises(
            SweepConfigError, match=r"^hydra/launcher=slurm: sbatch is not on this machine's PATH; "
        ):
            check_slurm(slurm)
    # A primary that answers is enough (scontrol ping exits 1 while a backup controller is down)
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "sbatch").write_text("#!/bin/sh\nexit 0\n")
    for primary in ("UP", "DOWN"):
        (fake / "scontrol").write_text(
            f"#!/bin/sh\necho 'Slurmctld(primary) at head is {primary}'\n"
            "echo 'Slurmctld(backup) at spare is DOWN'\nexit 1\n"
        )
        for tool in ("sbatch", "scontrol"):
            (fake / tool).chmod(0o755)
        with monkeypatch.context() as faked:
            faked.setenv("PATH", str(fake))
            if primary == "UP":
                check_slurm(slurm)
            else:
                with pytest.raises(
                    SweepConfigError, match=r"scontrol ping: Slurmctld\(primary\) at head is DOWN\)"
                ):
                    check_slurm(slurm)
    if shutil.which("scontrol") is None:
        pytest.skip("needs SLURM's client commands (tests/slurm/cluster.sh install)")
    monkeypatch.setenv("SLURM_CONF", str(tmp_path / "missing" / "slurm.conf"))
    started = time.monotonic()
    with pytest.raises(SweepConfigError) as refused:
        check_slurm(slurm, timeout_s=2)
    assert time.monotonic() - started < 10
    assert str(refused.value).startswith(
        "hydra/launcher=slurm: the SLURM controller does not answer (scontrol ping: no answer in 2 s; "
    )
    assert f"{tmp_path / 'missing' / 'slurm.conf'}" in str(refused.value)
    assert str(refused.value).endswith("or choose hydra/launcher=joblib")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["hydra/launcher=joblib", "hydra.launcher.n_jobs=0"], "hydra.launcher.n_jobs=0: must be a nonzero"),
        (["hydra/launcher=slurm", "hydra.launcher.array_parallelism=0"], "hydra.launcher.array_parallelism"),
        (["hydra/launcher=slurm", "resources.cpus_per_task=0"], "resources.cpus_per_task=0: must be an"),
        (["hydra/launcher=slurm", "hydra.launcher.timeout_min=-5"], "hydra.launcher.timeout_min=-5: must be"),
        (["hydra/launcher=slurm", "resources.mem_gb=7.5"], "resources.mem_gb=7.5: must be an integer >= 0"),
        (
            ["hydra/launcher=joblib", "hydra.launcher.timeout=0"],
            "hydra.launcher.timeout=0.0: must be a number",
        ),
        (["hydra/launcher=joblib", "hydra.launcher.timeout=nan"], "hydra.launcher.timeout=nan: must be"),
        (["hydra/launcher=joblib", "hydra.launcher.n_jobs=-1"], None),
        (["hydra/launcher=joblib", "hydra.launcher.timeout=3600"], None),
        (["hydra/launcher=slurm", "resources.mem_gb=0", "resources.gpus_per_node=0"], None),
        (["hydra/launcher=slurm", "hydra.launcher.cpus_per_task=null"], None),
    ],
)
def test_launcher_counts_are_checked_before_the_first_batch(overrides, message):
    """A count the launcher would refuse when it starts the first batch stops the sweep, named by the
    override that sets it; the launchers' own special values pass."""
    from hydra import compose, initialize_config_dir

    from hydra_plugins.llm_ucb_sweeper._impl import check_launcher

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        cfg = compose("train", overrides, return_hydra_config=True)
    if message is None:
        check_launcher(cfg)
    else:
        with pytest.raises(SweepConfigError, match="^" + re.escape(message)):
            check_launcher(cfg)
