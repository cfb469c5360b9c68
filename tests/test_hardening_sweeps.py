"""Killed, doubled and interrupted sweeps through the real entry point (the toy app in subprocesses,
real signals): nothing lost, no job number reused, no child left running."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.test_sweeper_plugin import BASE, ROOT, SPACE, TOY, cli, comparable, load

JOBLIB = ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"]


def _foreground() -> None:
    # A shell starts a background job (`make test &`) with SIGINT ignored, and its children inherit
    # that; a foreground job, which these tests stand for, starts with the default, so Python's
    # KeyboardInterrupt is in place before the sweeper's own handler.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _background() -> None:
    # How a script's shell (no job control) starts `cmd &`: SIGINT ignored, so Ctrl-C is not for it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def start(sweep_dir: Path, *overrides: str, background: bool = False) -> subprocess.Popen:
    """The sweeper in its own session, as a shell starts a foreground job (signals go to its group), or
    with ``background`` as a script starts a background job."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", HYDRA_FULL_ERROR="0")
    cmd = [sys.executable, str(TOY), "-m", *BASE, SPACE, f"hydra.sweep.dir={sweep_dir}", *overrides]
    sweep_dir.mkdir(parents=True, exist_ok=True)
    err = open(sweep_dir.parent / f"{sweep_dir.name}.stderr", "a")  # noqa: SIM115 (closed by the process)
    return subprocess.Popen(
        cmd,
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=err,
        start_new_session=True,
        preexec_fn=_background if background else _foreground,  # between fork and exec: one signal
    )


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = Path(f"/proc/{pid}/status")
    return not (status.exists() and "State:\tZ" in status.read_text())  # a zombie has exited


def pids(folder: Path) -> dict[int, int]:
    return {int(p.stem): int(p.read_text()) for p in folder.glob("*.pid")} if folder.exists() else {}


def stderr_of(sweep_dir: Path) -> str:
    path = sweep_dir.parent / f"{sweep_dir.name}.stderr"
    return path.read_text() if path.exists() else ""


def test_a_second_sweeper_on_the_same_folder_stops_at_once(tmp_path):
    sweep = tmp_path / "sweep"
    first = start(sweep, "hydra.sweeper.n_iterations=8", "behaviour.sleep=1.5")  # ~12 s: time to collide
    try:
        wait_for(lambda: (sweep / "exploration" / "state.json").exists(), 60, "the first sweep's state")
        began = time.monotonic()
        second = cli(sweep, "hydra.sweeper.n_iterations=8", "hydra.sweeper.resume=true", check=False)
        assert time.monotonic() - began < 30 and second.returncode != 0
        assert f"is in use by another sweeper (PID {first.pid} on" in second.stderr, second.stderr[-2000:]
        assert first.wait(timeout=120) == 0, stderr_of(sweep)[-2000:]
    finally:
        if first.poll() is None:
            first.kill()
    state = load(sweep)
    assert [n["job_num"] for n in state["nodes"]] == list(range(8))
    for node in state["nodes"]:  # each job folder holds what the state says it does
        record = json.loads((sweep / "exploration" / "results" / f"{node['job_num']}.json").read_text())
        assert record["value"]["score"] == node["metrics"]["score"]


def test_job_numbers_never_go_backwards_and_a_corrupt_state_is_kept(tmp_path):
    cli(tmp_path, "hydra.sweeper.n_iterations=4")
    before = {j: (tmp_path / "exploration" / "results" / f"{j}.json").read_text() for j in range(4)}
    state_file = tmp_path / "exploration" / "state.json"
    state_file.write_text('{"version": 1, "nodes": [')
    proc = cli(tmp_path, "hydra.sweeper.n_iterations=4", "hydra.sweeper.resume=true", check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert f"{state_file} is unreadable (JSONDecodeError" in proc.stderr, proc.stderr[-2000:]
    assert "run again with hydra.sweeper.resume=true to start a new exploration" in proc.stderr
    (kept,) = (tmp_path / "exploration").glob("state.json.corrupt-*")
    assert kept.read_text() == '{"version": 1, "nodes": [' and not state_file.exists()
    cli(tmp_path, "hydra.sweeper.n_iterations=4", "hydra.sweeper.resume=true")
    assert [n["job_num"] for n in load(tmp_path)["nodes"]] == [4, 5, 6, 7]
    state_file.unlink()  # a deleted state: a fresh sweep that still continues the job numbers
    cli(tmp_path, "hydra.sweeper.n_iterations=4")
    assert [n["job_num"] for n in load(tmp_path)["nodes"]] == [8, 9, 10, 11]
    after = {j: (tmp_path / "exploration" / "results" / f"{j}.json").read_text() for j in range(4)}
    assert after == before
    assert (
        "job folders up to 7 exist: new jobs start at 8"
        in (tmp_path / "exploration" / "sweep.log").read_text()
    )


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_children_of_a_killed_joblib_sweeper_stop(tmp_path, sig):
    sweep, pid_dir = tmp_path / "sweep", tmp_path / "pids"
    settings = [*JOBLIB, "hydra.sweeper.n_iterations=8", "behaviour.sleep=4", f"behaviour.pid_dir={pid_dir}"]
    proc = start(sweep, *settings)
    try:
        wait_for(lambda: len(pids(pid_dir)) == 2, 90, "two children running")
        children = pids(pid_dir)
        assert all(pid != proc.pid for pid in children.values())
        os.kill(proc.pid, sig)
        rc = proc.wait(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert rc == (-signal.SIGKILL if sig == signal.SIGKILL else 128 + signal.SIGTERM), stderr_of(sweep)
    wait_for(lambda: not any(alive(p) for p in children.values()), 5, "the children to stop")
    time.sleep(4.5)  # longer than a child's sleep: a surviving child would record its result now
    assert not any((sweep / "exploration" / "results" / f"{j}.json").exists() for j in children)
    if sig == signal.SIGTERM:
        assert "stopped by SIGTERM" in (sweep / "exploration" / "sweep.log").read_text()
    cli(sweep, *settings, "hydra.sweeper.resume=true")
    jobs = [n["job_num"] for n in load(sweep)["nodes"]]
    assert len(jobs) == 8 and not set(jobs) & set(children) and len(set(jobs)) == 8


def processes_of(sweeper: int) -> list[int]:
    """The live processes started for the sweeper ``sweeper`` (they inherit its PID in the environment)."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            environ = (proc / "environ").read_bytes() if proc.name.isdigit() else b""
        except OSError:
            continue
        if f"HYDRA_LLM_SWEEPER_PID={sweeper}\0".encode() in environ + b"\0" and alive(int(proc.name)):
            found.append(int(proc.name))
    return found


def test_pool_workers_that_never_got_a_child_stop_with_a_killed_sweeper(tmp_path):
    """4 joblib workers and 2 children a batch: two workers never get a child. They used to idle on
    after a SIGKILL of the sweeper, at times for good (blocked on the dead pool's pipes); each now
    watches the sweeper from its start."""
    sweep, pid_dir = tmp_path / "sweep", tmp_path / "pids"
    settings = [
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=4",
        "hydra.sweeper.n_parallel=2",
        "hydra.sweeper.n_iterations=4",
        "behaviour.sleep=30",
        f"behaviour.pid_dir={pid_dir}",
    ]
    proc = start(sweep, *settings)
    try:
        wait_for(lambda: len(pids(pid_dir)) == 2, 90, "two children running")
        workers = [p for p in processes_of(proc.pid) if b"loky" in Path(f"/proc/{p}/cmdline").read_bytes()]
        assert len(workers) >= 4, workers  # the pool's four workers, two of them idle
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
    wait_for(lambda: not processes_of(proc.pid), 10, "every process of the killed sweeper to stop")


@pytest.mark.parametrize("launcher", ["basic", "joblib"])
def test_ctrl_c_stops_within_seconds_with_the_state_saved(tmp_path, launcher):
    sweep, pid_dir, release = tmp_path / "sweep", tmp_path / "pids", tmp_path / "release"
    extra = [*(JOBLIB if launcher == "joblib" else []), f"behaviour.release_file={release}"]
    proc = start(
        sweep, *extra, "hydra.sweeper.n_iterations=8", "behaviour.sleep=20", f"behaviour.pid_dir={pid_dir}"
    )
    try:
        wait_for(lambda: len(pids(pid_dir)) >= (2 if extra else 1), 90, "the first batch running")
        children = [p for p in pids(pid_dir).values() if p != proc.pid]
        began = time.monotonic()
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does: the foreground group
        rc = proc.wait(timeout=15)
        took = time.monotonic() - began
    finally:
        if proc.poll() is None:
            proc.kill()
    assert rc == 128 + signal.SIGINT and took < 6, (rc, took, stderr_of(sweep)[-2000:])
    wait_for(lambda: not any(alive(p) for p in children), 5, "the children to stop")
    time.sleep(0.5)  # joblib's resource tracker, which shares the terminal, cleans up after the stop
    lines = stderr_of(sweep).strip().splitlines()
    assert len(lines) == 1 and "state saved" in lines[0], lines  # not its "leaked semlock" warning
    assert lines[0].endswith("continue with hydra.sweeper.resume=true"), lines
    state = load(sweep)
    assert state["nodes"] == [] and [c["job_num"] for c in state["in_flight"]] == [0, 1, 2, 3]
    assert "stopped by SIGINT" in (sweep / "exploration" / "sweep.log").read_text()
    release.touch()
    cli(
        sweep,
        *extra,
        "hydra.sweeper.n_iterations=4",
        "behaviour.sleep=20",
        f"behaviour.pid_dir={pid_dir}",
        "hydra.sweeper.resume=true",
    )
    assert [n["job_num"] for n in load(sweep)["nodes"]] == [4, 5, 6, 7]


def test_a_second_ctrl_c_exits_at_once(tmp_path):
    sweep, pid_dir = tmp_path / "sweep", tmp_path / "pids"
    # a child that ignores the first interrupt for a while: it swallows KeyboardInterrupt-like stops
    proc = start(sweep, "hydra.sweeper.n_iterations=4", "behaviour.sleep=20", f"behaviour.pid_dir={pid_dir}")
    try:
        wait_for(lambda: len(pids(pid_dir)) == 1, 90, "the first child running")
        began = time.monotonic()
        os.killpg(proc.pid, signal.SIGINT)
        os.killpg(proc.pid, signal.SIGINT)
        rc = proc.wait(timeout=15)
        took = time.monotonic() - began
    finally:
        if proc.poll() is None:
            proc.kill()
    assert rc == 128 + signal.SIGINT and took < 3, (rc, took)


def test_resume_refuses_changed_settings(tmp_path):
    cli(tmp_path, "hydra.sweeper.n_iterations=4")
    proc = cli(
        tmp_path,
        "hydra.sweeper.n_iterations=8",
        "hydra.sweeper.resume=true",
        "hydra.sweeper.n_parallel=2",
        check=False,
    )
    assert proc.returncode != 0 and "n_parallel: 4 -> 2" in proc.stderr, proc.stderr[-2000:]
    assert "Resume with the original settings, or start a new sweep" in proc.stderr
    wider = SPACE.replace("interval(1e-5,1e-1)", "interval(1e-6,1e-1)")
    proc = cli(
        tmp_path, "hydra.sweeper.n_iterations=8", "hydra.sweeper.resume=true", check=False, space=wider
    )
    assert proc.returncode != 0 and "params: " in proc.stderr and "1e-06" in proc.stderr
    # the blocks the nodes fall in, the seeds their children drew from and their rewards stay too
    for changed, said in (
        ("hydra.sweeper.n_iter_block=2", "n_iter_block: 12 -> 2"),
        ("hydra.sweeper.seed=7", "seed: 0 -> 7"),
        ("hydra.sweeper.simulation_seed=fixed", 'simulation_seed: "slot" -> "fixed"'),
        ("hydra.sweeper.objective.direction=minimize", 'objective.direction: "maximize" -> "minimize"'),
    ):
        proc = cli(
            tmp_path, "hydra.sweeper.n_iterations=8", "hydra.sweeper.resume=true", changed, check=False
        )
        assert proc.returncode != 0 and f"({said})" in proc.stderr, proc.stderr[-2000:]
    assert len(load(tmp_path)["nodes"]) == 4  # nothing ran, nothing lost
    cli(tmp_path, "hydra.sweeper.n_iterations=8", "hydra.sweeper.resume=true")  # n_iterations may change
    assert [n["job_num"] for n in load(tmp_path)["nodes"]] == list(range(8))


def test_a_scripts_background_sweep_keeps_ignoring_ctrl_c_and_stops_on_sigterm(tmp_path):
    """A script's shell starts `cmd &` with SIGINT ignored, so that Ctrl-C in its terminal stops the
    script and not the job; the sweep keeps it ignored in its batch loop too (whose guard took SIGINT
    over), and SIGTERM still stops it with the state saved."""
    sweep, pid_dir = tmp_path / "sweep", tmp_path / "pids"
    proc = start(
        sweep,
        "hydra.sweeper.n_iterations=8",
        "behaviour.sleep=20",
        f"behaviour.pid_dir={pid_dir}",
        background=True,
    )
    try:
        wait_for(lambda: len(pids(pid_dir)) >= 1, 90, "the first batch running")
        os.killpg(proc.pid, signal.SIGINT)
        time.sleep(2.0)
        assert proc.poll() is None, stderr_of(sweep)[-2000:]
        os.killpg(proc.pid, signal.SIGTERM)
        rc = proc.wait(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert rc == 128 + signal.SIGTERM, (rc, stderr_of(sweep)[-2000:])
    log = (sweep / "exploration" / "sweep.log").read_text()
    assert "stopped by SIGTERM" in log and "SIGINT" not in log
    assert [c["job_num"] for c in load(sweep)["in_flight"]] == [0, 1, 2, 3]


def test_ctrl_c_in_the_preflight_is_one_line_and_writes_nothing(tmp_path):
    """Ctrl-C while the task's preflight runs (the imports of the training stack take seconds) comes
    before the batch loop's interrupt guard: one line, rc 130, no sweep folder, no traceback."""
    sweep, marker = tmp_path / "sweep", tmp_path / "preflight-started"
    proc = start(
        sweep, "+preflight=tests.apps.toy.toy_app.slow_preflight", f"+behaviour.preflight_marker={marker}"
    )
    try:
        wait_for(marker.exists, 90, "the preflight to start")
        os.killpg(proc.pid, signal.SIGINT)
        try:
            rc = proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"still running 15 s after SIGINT: {stderr_of(sweep)[-2000:]}") from None
    finally:
        if proc.poll() is None:
            proc.kill()
    lines = stderr_of(sweep).strip().splitlines()
    assert rc == 128 + signal.SIGINT, (rc, lines[-20:])
    assert lines == ["[llm_ucb] stopped by SIGINT before the first batch: nothing was written"], lines[-20:]
    assert not (sweep / "exploration").exists()


@pytest.mark.parametrize("launcher", ["basic", "joblib"])
def test_random_kills_and_resumes_lose_nothing(tmp_path, launcher):
    """SIGKILL at seeded random moments, resume until done: the same nodes as an uninterrupted sweep,
    job numbers unique, one analysis entry per node."""
    extra = JOBLIB if launcher == "joblib" else []
    settings = [*extra, "hydra.sweeper.n_iterations=8", "behaviour.sleep=0.3"]
    reference = load(cli(tmp_path / "reference", *settings) and tmp_path / "reference")["nodes"]
    rng = random.Random(1234 + len(launcher))
    for trial in range(3):
        sweep = tmp_path / f"trial{trial}"
        kills = 0
        while True:
            resume = ["hydra.sweeper.resume=true"] if (sweep / "exploration" / "state.json").exists() else []
            proc = start(sweep, *settings, *resume)
            try:
                rc = proc.wait(timeout=rng.uniform(1.0, 6.0)) if kills < 3 else proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)
                kills += 1
                continue
            assert rc == 0, stderr_of(sweep)[-2000:]
            break
        state = load(sweep)
        assert comparable(state["nodes"]) == comparable(reference), (trial, kills)
        jobs = [n["job_num"] for n in state["nodes"]]
        assert len(set(jobs)) == 8 and all(j < state["next_job_idx"] for j in jobs)
        text = (sweep / "exploration" / "analysis.md").read_text()
        assert [line.split(":")[0] for line in text.splitlines() if line.startswith("## Iter ")] == [
            f"## Iter {i}" for i in range(1, 9)
        ]


@pytest.mark.parametrize("launcher", ["basic", "joblib"])
def test_a_full_disk_stops_the_sweep_with_one_line_and_the_resume_loses_nothing(tmp_path, launcher):
    """The sweep folder on a small tmpfs: the disk fills while a job folder is made (200 KB) or while
    the sweep saves its state (400 KB; where it fills depends on the files' sizes, either way it must
    hold). One line, no traceback; after the disk grows, the resume ends as an uninterrupted sweep."""
    from tests.test_bare_command import small_disk

    settings = [*(JOBLIB if launcher == "joblib" else []), "hydra.sweeper.n_iterations=60"]
    reference = load(cli(tmp_path / "reference", *settings) and tmp_path / "reference")["nodes"]
    for size in ("200k", "400k"):
        with small_disk(tmp_path / f"disk-{size}", size) as disk:
            sweep = disk / "sweep"
            stopped = cli(sweep, *settings, check=False)
            lines = stopped.stderr.strip().splitlines()
            assert stopped.returncode == 1 and len(lines) == 1, stopped.stderr[-3000:]
            assert lines[0].startswith("[llm_ucb] stopping: a disk is full"), lines[0]
            assert lines[0].endswith("hydra.sweeper.resume=true") or "resume=true (state: " in lines[0]
            subprocess.run(["mount", "-o", "remount,size=20m", str(disk)], check=True)
            cli(sweep, *settings, "hydra.sweeper.resume=true")
            state = load(sweep)
            assert comparable(state["nodes"]) == comparable(reference), size
            jobs = [n["job_num"] for n in state["nodes"]]
            assert len(set(jobs)) == 60 and all(j < state["next_job_idx"] for j in jobs)
