"""What a new code version costs before any child runs it: the check run (import, smoke, blindness).

For each shipped editable region, the check run is the command the sweeper runs
(``train.py <regime> <check overrides> code.dir=<version> code.check=true``, one process, two tiny
trainings), timed against a plain run of the same tiny regime in the same session (one training plus
evaluation): the baseline a user would otherwise pay to try the edit by hand. The version is a copy of
the installed module (the check's cost does not depend on what the edit does). Median of ``--repeat``
runs each, simulated data cached before timing.

Usage: python bench/bench_code_check.py [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hydra_llm.code_edits.loader import module_file  # noqa: E402
from hydra_llm.code_edits.regions import module_source  # noqa: E402


def regimes() -> dict[str, tuple[list[str], str, list[str]]]:
    """name -> (regime overrides, strategy module, check overrides), from the shipped configs."""
    signal = yaml.safe_load((ROOT / "conf" / "exploration" / "signal.yaml").read_text())["code"]
    study = yaml.safe_load((ROOT / "conf" / "experiment" / "homeostasis_phase2.yaml").read_text())
    phase2 = study["hydra"]["sweeper"]["code_edits"]
    return {
        "signal_loss": ([], signal["modules"][0], signal["check_overrides"]),
        "metabolism_phase2_loss": (
            ["experiment=homeostasis_phase2"],
            phase2["modules"][0],
            phase2["check_overrides"],
        ),
    }


def timed(command: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, cwd=ROOT, env=env, check=True, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, HYDRA_LLM_CACHE=str(Path(tmp) / "cache"), OMP_NUM_THREADS="1")
        print("| region | plain tiny run (s) | check run (s) | ratio |")
        print("|---|---|---|---|")
        for name, (regime, module, check) in regimes().items():
            version = Path(tmp) / name / "v001"
            version.mkdir(parents=True)
            module_file(version, module).write_text(module_source(module)[1])
            base = [sys.executable, "train.py", *regime, *check]
            plain = [*base, f"hydra.run.dir={Path(tmp) / name / 'plain'}"]
            checked = [*base, f"code.dir={version}", "code.check=true", f"hydra.run.dir={version / 'check'}"]
            timed(plain, env)  # simulate (and for phase 2: train phase 1) once, into the cache
            plains, checks = [], []
            for _ in range(args.repeat):
                plains.append(timed(plain, env))
                checks.append(timed(checked, env))
            p, c = statistics.median(plains), statistics.median(checks)
            print(f"| {name} | {p:.1f} | {c:.1f} | {c / p:.2f} |", flush=True)


if __name__ == "__main__":
    main()
