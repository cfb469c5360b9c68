"""The DAVIS-like loader on a generated folder of small JPEGs."""

from __future__ import annotations

import os
import subprocess
import sys
from functools import partial
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hydra_llm.simulation.base import DataError
from hydra_llm.simulation.flyvis import FlyvisDataModule, davis
from hydra_llm.simulation.flyvis.connectome import hex_columns
from hydra_llm.simulation.flyvis.dynamics import GREY

TINY = Path(__file__).parent / "data" / "flyvis_tiny_connectome.json"


@pytest.fixture()
def davis_root(tmp_path) -> Path:
    """5 videos x 6 frames of 64 x 48 px: video k is a uniform grey of level k/5 with a bright square."""
    root = tmp_path / "DAVIS"
    for k in range(5):
        folder = root / "JPEGImages" / "480p" / f"video{k}"
        folder.mkdir(parents=True)
        for f in range(6):
            img = np.full((48, 64, 3), int(255 * k / 5), dtype=np.uint8)
            img[10:20, 5 + 5 * f : 15 + 5 * f] = 255
            Image.fromarray(img).save(folder / f"{f:05d}.jpg", quality=95)
    return root


def test_missing_folder_says_where_and_how_to_run_offline(tmp_path, monkeypatch):
    monkeypatch.delenv(davis.ENV_VAR, raising=False)
    with pytest.raises(FileNotFoundError, match="JPEGImages/480p.*flyvis_synthetic"):
        davis.find_root(None)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        davis.find_root(tmp_path / "nothing")
    with pytest.raises(FileNotFoundError, match="DATAVIS_ROOT"):
        FlyvisDataModule(
            connectome={"source": "file", "path": str(TINY), "extent": 1},
            parameters={"mode": "flyvis_init"},
            stimulus={"source": "davis", "families": ["moving_edge"], "ood_families": ["grating"]},
        )


def test_env_var_is_used(davis_root, monkeypatch):
    monkeypatch.setenv(davis.ENV_VAR, str(davis_root))
    assert davis.find_root(None) == davis_root
    assert [v.name for v in davis.list_videos(davis_root)] == [f"video{k}" for k in range(5)]


def test_split_is_by_video_80_20(davis_root):
    videos = davis.list_videos(davis_root)
    train, test = davis.split_videos(videos, 0.2, seed=0)
    assert len(train) == 4 and len(test) == 1 and not set(train) & set(test)
    assert davis.split_videos(videos, 0.2, seed=0) == (train, test)


def test_official_split_files_are_used_when_present(davis_root):
    videos = davis.list_videos(davis_root)
    sets = davis_root / "ImageSets" / "2017"
    sets.mkdir(parents=True)
    (sets / "train.txt").write_text("video0\nvideo2\nvideo4\nnot_here\n")
    (sets / "val.txt").write_text("video1\nvideo3\n")
    train, test = davis.split_videos(videos, 0.2, seed=0, root=davis_root)
    assert [v.name for v in train] == ["video0", "video2", "video4"]
    assert [v.name for v in test] == ["video1", "video3"]
    (sets / "val.txt").write_text("gone\n")
    with pytest.raises(ValueError, match="leave 3 training and 0 held-out videos"):
        davis.split_videos(videos, 0.2, seed=0, root=davis_root)


def test_download_checks_the_sha256_and_unpacks_a_davis_root(davis_root, tmp_path):
    """The download helper against an archive served from the loopback (pooch, as for the real one)."""
    import hashlib
    import shutil
    import threading
    from functools import partial
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    served = tmp_path / "served"
    served.mkdir()
    archive = Path(
        shutil.make_archive(str(served / "DAVIS-2017-trainval-480p"), "zip", davis_root.parent, "DAVIS")
    )
    sha256 = hashlib.sha256(archive.read_bytes()).hexdigest()
    handler = partial(SimpleHTTPRequestHandler, directory=str(served))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/{archive.name}"
    try:
        root = davis.download(tmp_path / "cache", url=url, sha256=sha256)
        assert [v.name for v in davis.list_videos(root)] == [f"video{k}" for k in range(5)]
        served_archive = tmp_path / "cache" / archive.name
        stamp = served_archive.stat().st_mtime_ns
        assert davis.download(tmp_path / "cache", url=url, sha256=sha256) == root
        assert served_archive.stat().st_mtime_ns == stamp  # kept: no second download
        with pytest.raises(ValueError, match="SHA256 hash of downloaded file"):
            davis.download(tmp_path / "other", url=url, sha256="0" * 64)
        # the command line checks the official archive's checksum, which this one is not
        with pytest.raises(ValueError, match=davis.ARCHIVE_SHA256):
            davis.main([str(tmp_path / "third"), "--url", url])
        assert not list((tmp_path / "third").glob("*.zip"))  # nothing unchecked is kept
    finally:
        server.shutdown()


def test_render_luminance_sampling_resampling_and_cache(davis_root, tmp_path):
    columns = hex_columns(2)
    video = davis.list_videos(davis_root)[3]  # grey level 3/5 = 0.6
    movie = davis.render_video(video, columns, dt=0.02, cache_dir=tmp_path / "cache")
    # 6 frames at 24 fps = 0.25 s -> 12 frames at 50 Hz, each source frame held 2-3 frames
    assert movie.shape == (12, len(columns)) and movie.dtype == np.float32
    assert movie.min() >= 0.0 and movie.max() <= 1.0
    assert abs(float(np.median(movie)) - 0.6) < 0.03  # luminance of the grey background
    assert movie.max() > 0.8  # the bright square reaches some columns
    assert np.array_equal(movie[0], movie[1])  # piecewise-constant hold
    cached = list((tmp_path / "cache" / "davis").glob("video3-*.npy"))
    assert len(cached) == 1
    assert np.array_equal(np.load(cached[0]), movie)


def test_box_sample_is_the_mean_over_the_kernel():
    frames = np.arange(2 * 20 * 20, dtype=float).reshape(2, 20, 20)
    centres = np.array([[10, 10], [5, 7]])
    got = davis.box_sample(frames, centres, 3)
    assert np.allclose(got[1, 0], frames[1, 9:12, 9:12].mean())
    assert np.allclose(got[0, 1], frames[0, 4:7, 6:9].mean())


def test_rotation_flip_augment_and_bad_rotation(davis_root):
    columns = hex_columns(2)
    video = davis.list_videos(davis_root)[0]
    plain = davis.render_video(video, columns, dt=0.02)
    turned = davis.render_video(video, columns, dt=0.02, rotation=1, flip=True)
    assert plain.shape == turned.shape and not np.allclose(plain, turned)
    with pytest.raises(ValueError, match="rotations"):
        davis.augmentations([5], [False])


def test_a_grey_lead_comes_before_every_davis_clip(davis_root):
    columns, videos = hex_columns(2), davis.list_videos(davis_root)
    movie = partial(davis.davis_sequence, videos, columns, 120, 0.02, rotations=[0], flips=[False])
    plain = movie(np.random.default_rng(0), max_clip_frames=8)
    assert np.array_equal(plain, movie(np.random.default_rng(0), max_clip_frames=8, blank_s=(0, 0)))
    led = movie(np.random.default_rng(0), max_clip_frames=8, blank_s=(0.1, 0.1))
    frame = np.arange(120) % 13  # 5 grey frames (0.1 s), then a clip of 8
    assert led.shape == plain.shape
    assert np.all(led[frame < 5] == GREY) and not np.any(np.all(led[frame >= 5] == GREY, axis=1))


def test_datamodule_on_davis_folder(davis_root, tmp_path):
    dm = FlyvisDataModule(
        connectome={"source": "file", "path": str(TINY), "extent": 1},
        parameters={"mode": "flyvis_init"},
        stimulus={
            "source": "davis",
            "davis_root": str(davis_root),
            "families": ["moving_edge"],
            "ood_families": ["grating"],
            "rotations": [0, 2],
            "flips": [False],
        },
        n_frames=100,
        n_ood_frames=20,
        noise_model_level=0.0,
        cache_dir=str(tmp_path / "cache"),
    )
    dm.setup()
    obs = dm.observations
    assert obs.activity.shape == (100, 29) and obs.n_train_frames == 80
    photo = obs.external_input[:, :14]
    assert float(photo.std()) > 0.01  # video luminance drives the photoreceptors
    assert len(list((tmp_path / "cache" / "davis").glob("*.npy"))) >= 2


def test_a_damaged_jpeg_is_one_line_naming_it(davis_root, tmp_path):
    """A half-downloaded frame (its first 300 bytes) gave PIL's "Truncated File Read" without a path,
    in a traceback from deep in the simulation."""
    bad = davis_root / "JPEGImages" / "480p" / "video2" / "00003.jpg"
    bad.write_bytes(bad.read_bytes()[:300])
    with pytest.raises(DataError, match=rf"^{bad}: not a readable image \(.+\); download it again"):
        davis.render_video(bad.parent, hex_columns(2), dt=0.02)
    tiny = [
        f"simulation.connectome.path={TINY}",
        "simulation.connectome.source=file",
        "simulation.connectome.extent=1",
        "simulation.parameters.mode=random_trained_like",
        "simulation.n_frames=300",
        "simulation.n_ood_frames=50",
    ]
    cmd = [
        sys.executable,
        "train.py",
        "simulation=flyvis_davis",
        f"simulation.stimulus.davis_root={davis_root}",
    ]
    cmd += [
        *tiny,
        "logger=none",
        f"paths.cache_dir={tmp_path / 'cache'}",
        f"hydra.run.dir={tmp_path / 'run'}",
    ]
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run(
        cmd, cwd=root, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True
    )
    assert proc.returncode == 1 and proc.stderr.strip().splitlines() == [
        f"error: {bad}: not a readable image (Truncated File Read); download it again, or remove its "
        "video folder"
    ], proc.stderr[-2000:]
