"""Code edits, piece by piece: regions, the static check, the check run (import, smoke, blindness) on
real tiny trainings, and the editor's conversation with a scripted OpenAI-compatible server."""

from __future__ import annotations

import ast
import json
import subprocess
from pathlib import Path

import lightning.pytorch as pl
import pytest
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import open_dict

from hydra_llm.code_edits.loader import module_file, strategy, use_version
from hydra_llm.code_edits.regions import RegionError, find_regions, module_source, outside, splice
from hydra_llm.code_edits.review import CodeEditor, CodeEditSettings, client_completer
from hydra_llm.code_edits.static import check_region, top_level_names
from hydra_llm.explore.space import to_override_strings
from hydra_llm.explore.tree import Node
from hydra_llm.llm.client import LLMClient, LLMSettings
from hydra_llm.train import run
from hydra_plugins.llm_ucb_sweeper.llm_ucb_sweeper import CodeEditsConf
from tests import code_edit_bodies as bodies
from tests.fake_openai import FakeOpenAIServer, FakeReply

ROOT = Path(__file__).resolve().parents[1]
# The overrides each regime ships for its checks (one place: the regime's and the study's config).
SIGNAL_CHECK = yaml.safe_load((ROOT / "conf" / "exploration" / "signal.yaml").read_text())["code"]
PHASE2_STUDY = yaml.safe_load((ROOT / "conf" / "experiment" / "homeostasis_phase2.yaml").read_text())
PHASE2_CHECK = PHASE2_STUDY["hydra"]["sweeper"]["code_edits"]
SOURCE = module_source(bodies.MODULE)[1]
OUTSIDE_NAMES = top_level_names(ast.parse(outside(SOURCE, bodies.MODULE)))


def static_problems(body: str) -> list[str]:
    return check_region(body, bodies.ORIGINAL, OUTSIDE_NAMES, bodies.REGION)


class TruthHolder(pl.Callback):
    """An evaluation callback that holds the ground truth, like flyvis's R2 log does."""

    holds_ground_truth = True

    def __init__(self, observations, ground_truth, out_dir) -> None:
        self.truth = ground_truth


HOLD_TRUTH = "+evaluation.callbacks=[{_target_: tests.test_code_edits.TruthHolder, _partial_: true}]"


def in_process_check(cache: Path, *regime: str, check_overrides: list[str] | None = None):
    """The real check run (train.run with code.check=true), in this process."""
    check_overrides = SIGNAL_CHECK["check_overrides"] if check_overrides is None else check_overrides

    def run_check(folder: Path, simulation: dict) -> dict:
        overrides = [*regime, *to_override_strings(simulation), *check_overrides, f"paths.cache_dir={cache}"]
        overrides += [f"code.dir={folder}", "code.check=true"]
        with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
            cfg = compose(config_name="train", overrides=overrides)
        with open_dict(cfg):
            cfg.paths.output_dir = str(folder / "check")
        try:
            run(cfg)
        finally:
            use_version(None)
        return json.loads((folder / "check" / "code_check.json").read_text())

    return run_check


def version_folder(tmp_path: Path, name: str, module_text: str, module: str = bodies.MODULE) -> Path:
    folder = tmp_path / name
    folder.mkdir()
    module_file(folder, module).write_text(module_text)
    return folder


# ---------------------------------------------------------------------------------------------- regions
def test_shipped_regions_are_found_and_pass_their_own_checks():
    for module, name in (
        (bodies.MODULE, "signal_loss"),
        ("hydra_llm.strategies.metabolism_phase2", "metabolism_phase2_loss"),
    ):
        source = module_source(module)[1]
        region = find_regions(source, module)[name]
        names = top_level_names(ast.parse(outside(source, module)))
        assert check_region(region.body, region.body, names, name) == []
        assert splice(source, module, {name: region.body}) == source


def test_splice_replaces_only_the_region():
    edited = splice(SOURCE, bodies.MODULE, {bodies.REGION: bodies.GOOD})
    assert outside(edited, bodies.MODULE) == outside(SOURCE, bodies.MODULE)
    assert find_regions(edited, bodies.MODULE)[bodies.REGION].body.strip() == bodies.GOOD.strip()
    with pytest.raises(RegionError, match="region marker"):
        splice(SOURCE, bodies.MODULE, {bodies.REGION: bodies.OUTSIDE_REGION})
    with pytest.raises(RegionError, match="no region 'elsewhere'"):
        splice(SOURCE, bodies.MODULE, {"elsewhere": bodies.GOOD})


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("# region: a\nx = 1\n", "never closed"),
        ("x = 1\n# endregion\n", "without a region"),
        ("# region: a\n# region: b\n# endregion\n# endregion\n", "opens inside"),
        ("# region: a\n# endregion\n# region: a\n# endregion\n", "appears twice"),
        ("# region a\n# endregion\n", "malformed region marker"),
    ],
)
def test_malformed_markers_are_refused(source, message):
    with pytest.raises(RegionError, match=message):
        find_regions(source, "m")


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (bodies.SYNTAX_ERROR, "syntax error at line 4"),
        (bodies.IMPORTS_OS, "import of 'os'"),
        (bodies.IMPORTS_SOCKET, "import of 'socket'"),
        (bodies.READS_GROUND_TRUTH, "'ground_truth' points at ground truth"),
        (bodies.REBINDS_OUTSIDE, "rebinds torch, defined outside the region"),
        (bodies.RENAMED, "must still define loss_terms(model, u, target)"),
        (bodies.GOOD.replace("    b = u.shape[0]", "    b = open('x').read()"), "call of open()"),
        (bodies.GOOD.replace("    b = u.shape[0]", "    b = getattr(model, 'W')"), "call of getattr()"),
        (bodies.GOOD.replace("    b = u.shape[0]", "    b = torch.load('w.pt')"), "attribute .load"),
        (bodies.GOOD.replace("    b = u.shape[0]", "    b = model.__dict__"), "attribute .__dict__"),
        ("x = 1\n" * 300, "allowed: at most"),
    ],
)
def test_static_check_refuses(body, message):
    problems = static_problems(body)
    assert any(message in p for p in problems), problems


def test_good_edit_passes_the_static_check():
    assert static_problems(bodies.GOOD) == []
    assert static_problems(bodies.raises_above(16)) == []


# ---------------------------------------------------------------------------------------------- check run
def test_check_run_passes_a_clean_edit_and_catches_a_planted_leak(tmp_path):
    """The blindness stage bites: a loss that reads the ground truth through the Trainer's callbacks
    (planted here past the static check) learns other parameters when the truth is garbage."""
    run_check = in_process_check(tmp_path / "cache", HOLD_TRUTH)
    good = run_check(
        version_folder(tmp_path, "good", splice(SOURCE, bodies.MODULE, {"signal_loss": bodies.GOOD})), {}
    )
    assert good["ok"] is True and good["stage"] == "blindness" and good["final_loss"] > 0

    leak_source = splice(SOURCE, bodies.MODULE, {"signal_loss": bodies.LEAKS_THROUGH_CALLBACKS})
    leak = run_check(version_folder(tmp_path, "leak", leak_source), {})
    assert leak["ok"] is False and leak["stage"] == "blindness"
    assert "reads the ground truth" in leak["error"] and "W" in leak["error"]

    # The datamodule handed to Lightning holds no ground truth at all: that route fails outright.
    datamodule_route = splice(SOURCE, bodies.MODULE, {"signal_loss": bodies.READS_GROUND_TRUTH})
    blocked = run_check(version_folder(tmp_path, "datamodule", datamodule_route), {})
    assert (blocked["ok"], blocked["stage"]) == (False, "smoke")
    assert "AttributeError" in blocked["error"] and "ground_truth" in blocked["error"]


def test_metabolism_phase2_region_passes_its_check_and_a_planted_leak_is_caught(tmp_path):
    module, name = "hydra_llm.strategies.metabolism_phase2", "metabolism_phase2_loss"
    source = module_source(module)[1]
    body = find_regions(source, module)[name].body
    leaky = body.replace(
        "    return losses\n",
        '    truth = [c for c in model.trainer.callbacks if hasattr(c, "truth")][0].truth.tensors.values()\n'
        "    losses['leak'] = 1e-3 * model.embedding.sum() * sum(t.float().mean() for t in truth)\n"
        "    return losses\n",
    )
    assert leaky != body
    run_check = in_process_check(
        tmp_path / "cache",
        "experiment=homeostasis_phase2",
        HOLD_TRUTH,
        check_overrides=PHASE2_CHECK["check_overrides"],
    )
    clean = run_check(version_folder(tmp_path, "clean", source, module), {})
    assert clean["ok"] is True, clean
    leak = run_check(version_folder(tmp_path, "leak", splice(source, module, {name: leaky}), module), {})
    assert (leak["ok"], leak["stage"]) == (False, "blindness") and "embedding" in leak["error"]


def test_check_run_names_the_failed_stage(tmp_path):
    run_check = in_process_check(tmp_path / "cache")
    at_import = run_check(
        version_folder(tmp_path, "imp", SOURCE + "\nraise ValueError('broken at import')\n"), {}
    )
    assert (at_import["ok"], at_import["stage"]) == (False, "import")
    assert "broken at import" in at_import["error"]

    nan_source = splice(
        SOURCE, bodies.MODULE, {"signal_loss": bodies.replace_prediction("torch.mean(pred) * float('nan')")}
    )
    nan = run_check(version_folder(tmp_path, "nan", nan_source), {})
    assert (nan["ok"], nan["stage"]) == (False, "smoke") and "non-finite" in nan["error"]


def test_a_version_is_used_only_by_the_run_it_is_given_to(tmp_path):
    folder = version_folder(tmp_path, "v", splice(SOURCE, bodies.MODULE, {"signal_loss": bodies.GOOD}))
    installed = strategy(bodies.MODULE)
    try:
        use_version(folder)
        edited = strategy(bodies.MODULE)
        assert edited is not installed and edited.__file__ == str(
            module_file(folder.resolve(), bodies.MODULE)
        )
    finally:
        use_version(None)
    assert strategy(bodies.MODULE) is installed
    assert module_source(bodies.MODULE)[1] == SOURCE  # the installed package is untouched


# ---------------------------------------------------------------------------------------------- editor
def code_reply(*edits: tuple[str, str], verdicts: list[dict] | None = None) -> FakeReply:
    return FakeReply(
        {
            "verdicts": verdicts or [],
            "edits": [
                {"region": region, "code": code, "rationale": f"scripted: {region}"} for region, code in edits
            ],
        }
    )


# The sweeper's defaults (hydra.sweeper.code_edits), read from its schema.
DEFAULTS = {k: getattr(CodeEditsConf(), k) for k in ("max_reasks", "max_repairs", "max_edits")}


def editor(tmp_path: Path, server: FakeOpenAIServer, **settings) -> tuple[CodeEditor, list[str]]:
    client = LLMClient(
        LLMSettings(model="fake", base_url=server.base_url, api_key_env="NO_SUCH_KEY_VAR", max_retries=0),
        tmp_path / "llm",
    )
    events: list[str] = []
    code_editor = CodeEditor(
        CodeEditSettings(**{"modules": (bodies.MODULE,), **DEFAULTS, **settings}),
        tmp_path / "exploration",
        client_completer(lambda: client),
        in_process_check(tmp_path / "cache"),
        events.append,
    )
    code_editor.attach({})
    return code_editor, events


def node(node_id: int, version: int, value: float, status: str = "completed") -> Node:
    return Node(
        id=node_id,
        parent=None,
        block=1,
        slot=0,
        strategy="exploit",
        overrides={},
        mutation={},
        simulation={},
        seeds={},
        job_num=node_id,
        status=status,
        metrics={"connectivity_R2": value} if status == "completed" else {},
        code_version=version,
    )


OBJECTIVE = {"metric": "connectivity_R2", "direction": "maximize", "target": None}


def test_rejected_edits_go_back_with_their_error_then_are_dropped(tmp_path):
    with FakeOpenAIServer() as server:
        server.push(
            code_reply(("signal_loss", bodies.SYNTAX_ERROR)),
            code_reply(("signal_loss", bodies.IMPORTS_SOCKET)),
            code_reply(("signal_loss", bodies.OUTSIDE_REGION)),
        )
        code_editor, events = editor(tmp_path, server, max_reasks=2)
        code_editor.block_end(1, [node(1, 0, 0.5)], OBJECTIVE, {})
        prompts = [r.text() for r in server.requests]
    assert len(prompts) == 3
    assert ">>> BLOCK END + CODE REVIEW <<<" in prompts[0] and "region signal_loss" in prompts[0]
    assert "syntax error at line 4" in prompts[1]  # each re-ask carries the failed stage's error
    assert "import of 'socket'" in prompts[2]
    assert any("region marker" in e for e in events) and any("dropped" in e for e in events)
    assert code_editor.active == 0 and sorted(code_editor.versions) == [0]
    assert not (tmp_path / "exploration" / "code" / "v001").exists()
    assert code_editor.code["reviewed_blocks"] == [1]
    code_editor.block_end(1, [], OBJECTIVE, {})  # a resumed sweep never reviews a block twice
    assert len(server.requests) == 3


def test_a_passing_edit_becomes_a_version_and_verdicts_are_enforced(tmp_path):
    with FakeOpenAIServer() as server:
        server.push(code_reply(("signal_loss", bodies.GOOD)))
        code_editor, events = editor(tmp_path, server)
        code_editor.block_end(1, [node(1, 0, 0.5), node(2, 0, 0.6)], OBJECTIVE, {})
        assert code_editor.active == 1 and code_editor.versions[1].status == "candidate"
        folder = Path(code_editor.folder(1))
        assert "1000.0 * torch.mean" in module_file(folder, bodies.MODULE).read_text()
        assert '+    terms = {"prediction": 1000.0' in (folder / "diff.patch").read_text()

        server.push(
            code_reply(verdicts=[{"version": 1, "decision": "REVERT", "evidence": "mean 0.40 < 0.55"}])
        )
        code_editor.block_end(2, [node(3, 1, 0.4), node(4, 1, 0.4)], OBJECTIVE, {})
        review = server.requests[-1].text()
    assert "| v001 | candidate | v000 | 2 | 0 | 0.4 | 0.4 |" in review
    assert "| v000 | installed | - | 0 |" not in review  # only versions that ran or await a verdict
    assert code_editor.versions[1].status == "reverted" and code_editor.active == 0
    assert code_editor.resolve(1) == 0  # a child of a reverted version's node runs the installed code
    assert json.loads((folder / "version.json").read_text())["status"] == "reverted"
    tags = subprocess.run(
        ["git", "tag"], cwd=tmp_path / "exploration" / "code" / "history", capture_output=True, text=True
    ).stdout.split()
    assert sorted(tags) == ["reverted/v001", "v000", "v001"]
    assert any("REVERT v001" in e for e in events)
