"""A whole code-editing sweep: ``train.py -m`` on the tiny signal regime, the LLM proposer and code
editor on the loopback scripted server, real check runs, a stop in the middle of a code block and its
resume, a version that raises at run time (repaired, then reverted), and the sweep folder's git history.

One slot, blocks of two iterations. The script of code replies:

- end of block 1: a syntax error, then ``import os`` (both sent back with their error), then a good
  edit (the prediction term times 1000) -> v001. The first invocation stops after node 3 (block 2).
- resumed: node 4 still runs v001 and block 1 is not reviewed again.
- end of block 2: KEEP v001, and an edit that raises on networks above 50 neurons (the checks run 50,
  the sweep 60) -> v002. Node 5 fails inside the region -> repair -> v003 (raises above 51); node 6
  fails again -> max_repairs=1 reached: v003 and v002 are reverted, the code falls back to v001.
- end of block 3: nothing to judge, no edit; nodes 7 and 8 run v001.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import deque
from pathlib import Path

import yaml

from tests import code_edit_bodies as bodies
from tests.fake_openai import FakeError, FakeOpenAIServer, FakeReply, RecordedRequest, SweepResponder
from tests.test_llm_sweep import SECRET, llm_args
from tests.test_report_html import browser  # noqa: F401 (the headless Chromium fixture)

ROOT = Path(__file__).resolve().parents[1]


def code_reply(code: str | None = None, verdicts: list[dict] | None = None) -> FakeReply:
    edits = [{"region": "signal_loss", "code": code, "rationale": "scripted rationale"}] if code else []
    return FakeReply({"verdicts": verdicts or [], "edits": edits})


class CodeScript:
    """Code review and repair requests get the scripted replies in order; proposal requests a valid
    scripted proposal."""

    def __init__(self, *replies: FakeReply) -> None:
        self.replies = deque(replies)
        self.proposals = SweepResponder()
        self.code_prompts: list[str] = []

    def __call__(self, req: RecordedRequest) -> FakeReply | FakeError:
        text = req.text()
        if "CODE REVIEW <<<" in text or "CODE REPAIR <<<" in text:
            self.code_prompts.append(text)
            return self.replies.popleft() if self.replies else FakeError(500, "no scripted code reply left")
        return self.proposals(req)


def code_sweep(tmp_path: Path, server: FakeOpenAIServer, *overrides: str) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "HYDRA_LLM_FAKE_KEY": SECRET,
        "HYDRA_LLM_CACHE": str(tmp_path / "cache"),
        "OMP_NUM_THREADS": "1",
        "WANDB_MODE": "disabled",
    }
    command = [
        sys.executable,
        "train.py",
        "-m",
        "hydra/sweeper=llm_ucb",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
        "hydra.sweeper.n_parallel=1",
        "hydra.sweeper.n_iter_block=2",
        "hydra.sweeper.slot_roles=[exploit]",
        "hydra.sweeper.tree_plot=false",
        "hydra.sweeper.code_edits.enabled=true",
        "hydra.sweeper.code_edits.max_reasks=2",
        "hydra.sweeper.code_edits.max_repairs=1",
        *llm_args(server.base_url, timeout=30, max_retries=0),
        "simulation.n_neurons=60",
        "simulation.n_frames=600",
        "simulation.burn_in_frames=50",
        "training.data_augmentation_loop=2",
        "logger=none",
        "evaluation.make_plots=false",
        "trainer.enable_progress_bar=false",
        *overrides,
    ]
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)


def git(sweep: Path, *args: str) -> str:
    history = sweep / "exploration" / "code" / "history"
    return subprocess.run(["git", *args], cwd=history, capture_output=True, text=True, check=True).stdout


def test_code_editing_sweep_with_resume_repair_and_revert(tmp_path, browser):  # noqa: F811
    sweep = tmp_path / "sweep"
    script = CodeScript(
        code_reply(bodies.SYNTAX_ERROR),
        code_reply(bodies.IMPORTS_OS),
        code_reply(bodies.GOOD),
        code_reply(
            bodies.raises_above(50),
            verdicts=[{"version": 1, "decision": "KEEP", "evidence": "final_loss x1000 as predicted"}],
        ),
        code_reply(bodies.raises_above(51)),  # the repair of v002, still broken
        code_reply(),  # end of block 3: nothing to judge, no edit
    )
    with FakeOpenAIServer(default=script) as server:
        first = code_sweep(tmp_path, server, "hydra.sweeper.n_iterations=3")
        assert first.returncode == 0, first.stderr[-4000:]
        assert len(script.code_prompts) == 3
        second = code_sweep(tmp_path, server, "hydra.sweeper.n_iterations=8", "hydra.sweeper.resume=true")
        assert second.returncode == 0, second.stderr[-4000:]
        # Its nodes' children must run their recorded versions: no resume without code edits.
        third = code_sweep(
            tmp_path,
            server,
            "hydra.sweeper.n_iterations=9",
            "hydra.sweeper.resume=true",
            "hydra.sweeper.code_edits.enabled=false",
        )
        assert third.returncode == 1
        assert "the sweep being resumed has edited code versions" in third.stderr.strip().splitlines()[-1]

    # ---- the conversation: rejections go back with their error; each block reviewed once
    prompts = script.code_prompts
    assert len(prompts) == 6 and not script.replies
    assert "syntax error at line 4" in prompts[1] and "import of 'os'" in prompts[2]
    assert "| v001 | candidate | v000 | 2 |" in prompts[3]  # block 2's review sees v001's two runs
    assert ">>> CODE REPAIR <<<" in prompts[4] and "RuntimeError: loss_terms: shape (" in prompts[4]
    assert "Candidate versions: none" in prompts[5]

    # ---- the nodes ran the versions the engine assigned
    state = json.loads((sweep / "exploration" / "state.json").read_text())
    nodes = {n["id"]: n for n in state["nodes"]}
    assert [nodes[i]["code_version"] for i in range(1, 9)] == [0, 0, 1, 1, 2, 3, 1, 1]
    assert [i for i in nodes if nodes[i]["status"] == "failed"] == [5, 6]
    assert "RuntimeError" in nodes[5]["error"]
    error = json.loads((Path(nodes[5]["output_dir"]) / "code_error.json").read_text())
    assert error["region"] == "signal_loss" and error["version"] == "v002"

    # ---- the good edit changed the results (the prediction term is 1000 times larger)
    loss = {i: nodes[i]["metrics"]["final_loss"] for i in (1, 2, 3, 4, 7, 8)}
    assert min(loss[i] for i in (3, 4, 7, 8)) > 100 * max(loss[1], loss[2]), loss
    for i in (3, 4, 7, 8):
        overrides = yaml.safe_load((Path(nodes[i]["output_dir"]) / ".hydra" / "overrides.yaml").read_text())
        assert f"code.dir='{sweep / 'exploration' / 'code' / 'v001'}'" in overrides
        config = yaml.safe_load((Path(nodes[i]["output_dir"]) / ".hydra" / "config.yaml").read_text())
        assert config["code"]["dir"] == str(sweep / "exploration" / "code" / "v001")
    overrides = yaml.safe_load((Path(nodes[1]["output_dir"]) / ".hydra" / "overrides.yaml").read_text())
    assert not any(o.startswith("code.dir") for o in overrides)

    # ---- verdicts, repairs and reverts, enforced
    versions = {v["id"]: v for v in state["code"]["versions"]}
    assert {i: v["status"] for i, v in versions.items()} == {
        0: "installed",
        1: "kept",
        2: "reverted",
        3: "reverted",
    }
    assert versions[2]["replaced_by"] == 3 and versions[3]["parent"] == 2 and versions[3]["repairs"] == 1
    assert versions[2]["parent"] == 1 and state["code"]["active"] == 1
    assert state["code"]["reviewed_blocks"] == [1, 2, 3]

    # ---- provenance: folders, git history, analysis.md
    for vid in (1, 2, 3):
        folder = sweep / "exploration" / "code" / f"v{vid:03d}"
        text = (folder / f"{bodies.MODULE}.py").read_text()
        assert git(sweep, "show", f"v{vid:03d}:{bodies.MODULE}.py") == text
        assert json.loads((folder / "version.json").read_text())["status"] == versions[vid]["status"]
    assert git(sweep, "rev-parse", "v003^").strip() == git(sweep, "rev-parse", "v002").strip()
    assert git(sweep, "rev-parse", "v002^").strip() == git(sweep, "rev-parse", "v001").strip()
    assert git(sweep, "rev-parse", "v001^").strip() == git(sweep, "rev-parse", "v000").strip()
    subjects = git(sweep, "log", "--format=%s", "v003").splitlines()
    assert subjects == [
        "v003: block 3, node 5 failed: repair of v002 (signal_loss)",
        "v002: end of block 2 (after node 4): edit of signal_loss",
        "v001: end of block 1 (after node 2): edit of signal_loss",
        "v000: installed code (baseline)",
    ]
    assert set(git(sweep, "tag").split()) >= {"kept/v001", "reverted/v002", "reverted/v003"}
    assert '+    terms = {"prediction": 1000.0' in git(sweep, "log", "-p", "v001")
    analysis = (sweep / "exploration" / "analysis.md").read_text()
    assert "## Code versions" in analysis and "```diff" in analysis and "1000.0 * torch.mean" in analysis

    # ---- the report shows each version, the nodes that ran it and its diff
    page = browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda err: errors.append(str(err)))
    page.goto((sweep / "exploration" / "report.html").as_uri())
    page.wait_for_selector("body[data-ready='1']")
    assert page.locator("#code h3").count() == 3
    assert "v001 (kept, edit of v000, block 1; nodes 3, 4, 7, 8)" in page.inner_text("#code")
    assert "v003 (reverted, edit of v002, block 3; nodes 6)" in page.inner_text("#code")
    assert page.locator("#code span.add", has_text="1000.0 * torch.mean").count() == 1  # v001's diff
    assert (
        page.locator("#code span.add", has_text="raise RuntimeError").count() == 1
    )  # v002's (v003: context)
    page.close()
    assert errors == []

    # ---- the terminal shows the code story; no secret anywhere in the sweep folder
    log = (sweep / "exploration" / "sweep.log").read_text()
    assert "KEEP v001" in log and "v003 reverted" in log and "passed the checks" in log
    assert "job 2, code v001): " in log  # the node line names the version it ran
    for path in sweep.rglob("*"):
        if path.is_file() and ".git" not in path.parts:
            assert SECRET not in path.read_text(errors="ignore"), path


def bad_setting(tmp_path: Path, *overrides: str, app: str = "train.py") -> str:
    """The sweep's one-line error for a bad code_edits setting (no child may run)."""
    env = {**os.environ, "HYDRA_LLM_FAKE_KEY": SECRET, "HYDRA_LLM_CACHE": str(tmp_path / "cache")}
    command = [
        sys.executable,
        app,
        "-m",
        "hydra/sweeper=llm_ucb",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
        "hydra.sweeper.code_edits.enabled=true",
        *overrides,
    ]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stderr[-2000:]
    assert not list((tmp_path / "sweep").glob("[0-9]*")), "a child ran"
    lines = done.stderr.strip().splitlines()
    return lines[-1]


def test_bad_code_edit_settings_stop_the_sweep_with_one_line(tmp_path):
    llm = llm_args("http://127.0.0.1:9/v1")  # never called: the settings fail first
    assert bad_setting(tmp_path / "a", "hydra/sweeper/proposer=rules").startswith(
        "[llm_ucb] hydra.sweeper.code_edits.enabled=true needs the llm proposer"
    )
    line = bad_setting(tmp_path / "b", *llm, "hydra.sweeper.code_edits.modules=[hydra_llm.models.mlp]")
    assert line.startswith("[llm_ucb] hydra.sweeper.code_edits.modules: hydra_llm.models.mlp: no '# region")
    line = bad_setting(tmp_path / "c", *llm, "hydra.sweeper.code_edits.modules=[hydra_llm.no_such]")
    assert "hydra_llm.no_such: not an importable module" in line
    line = bad_setting(tmp_path / "e", *llm, "hydra.sweeper.code_edits.check_timeout_s=nan")
    assert line.endswith("code_edits.check_timeout_s: nan; allowed: a finite number of seconds > 0")
    toy = str(ROOT / "tests" / "apps" / "toy" / "toy_app.py")
    line = bad_setting(
        tmp_path / "d",
        *llm,
        "hydra.sweeper.code_edits.modules=[hydra_llm.strategies.signal_loss]",
        "+hydra.sweeper.params={training.lr:'tag(log,interval(1e-5,1e-1))'}",
        app=toy,
    )
    assert "the task config has no `code` node" in line
