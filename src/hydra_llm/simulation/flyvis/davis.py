"""DAVIS-2017-like natural videos, rendered onto the hex column lattice.

Layout: ``<root>/JPEGImages/480p/<video>/*.jpg`` (any DAVIS-like folder works, e.g. YouTube-VOS),
``root`` from ``simulation.stimulus.davis_root`` or the ``DATAVIS_ROOT`` environment variable.
Per frame: RGB -> luminance (0.299, 0.587, 0.114) in [0, 1]; centre crop; an optional 90-degree
rotation and mirror flip (augmented copies); resize so the lattice fits; mean over a
``kernel_px`` x ``kernel_px`` box at every column centre (integral image, no loops over columns).
Videos are resampled from ``fps`` to 1/dt by holding each frame (piecewise constant). The split is
**by source video**, so augmented copies of one video never straddle train and test: the official one
(``<root>/ImageSets/2017/train.txt`` and ``val.txt``) when the folder has it, else a seeded 80/20 draw.
Rendered clips are cached as ``.npy`` keyed by the video's files and the rendering settings.

No folder yet? ``python -m hydra_llm.simulation.flyvis.davis <folder>`` downloads the official
DAVIS-2017 trainval 480p archive (833 MB) with pooch, checks its sha256 and unpacks it there.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from hydra_llm.simulation.base import DataError, config_hash
from hydra_llm.simulation.flyvis.stimuli import LUMA, column_positions, grey_lead, held_out_split

ENV_VAR = "DATAVIS_ROOT"
# The official archive, its size and sha256 as TensorFlow Datasets records them (video/davis/checksums.tsv).
ARCHIVE_URL = "https://data.vision.ee.ethz.ch/csergi/share/davis/DAVIS-2017-trainval-480p.zip"
ARCHIVE_SHA256 = "e3d0b5b77c3d031b000a19e0e25e3e2cac65d183755601bc2cf066df1a2aa492"
ARCHIVE_BYTES = 832_766_765
SPLIT_FILES = ("ImageSets/2017/train.txt", "ImageSets/2017/val.txt")


def find_root(root: str | os.PathLike | None) -> Path:
    """The DAVIS folder from the config or ``DATAVIS_ROOT``; a clear error when it is missing."""
    chosen = root if root not in (None, "") else os.environ.get(ENV_VAR)
    hint = (
        "put a DAVIS-2017-like folder at <root>/JPEGImages/480p/<video>/*.jpg (or download the official "
        "one: python -m hydra_llm.simulation.flyvis.davis <folder>) and set "
        f"simulation.stimulus.davis_root=<root> or {ENV_VAR}=<root>; to run offline use "
        "simulation=flyvis_natural or flyvis_synthetic"
    )
    if chosen is None:
        raise FileNotFoundError(
            f"no DAVIS folder configured (simulation.stimulus.davis_root / {ENV_VAR}); {hint}"
        )
    frames_dir = Path(chosen) / "JPEGImages" / "480p"
    if not frames_dir.is_dir():
        raise FileNotFoundError(f"DAVIS folder {frames_dir} does not exist; {hint}")
    return Path(chosen)


def list_videos(root: Path) -> list[Path]:
    """Video folders that hold at least two JPEGs, sorted by name."""
    frames_dir = root / "JPEGImages" / "480p"
    videos = [d for d in sorted(frames_dir.iterdir()) if d.is_dir() and len(list(d.glob("*.jpg"))) >= 2]
    if not videos:
        raise FileNotFoundError(f"no video folder with >= 2 .jpg frames under {frames_dir}")
    return videos


def split_videos(
    videos: list[Path], test_fraction: float, seed: int, root: Path | None = None
) -> tuple[list[Path], list[Path]]:
    """(train, test) source videos: DAVIS's official split when ``root`` holds its ImageSets files,
    else a shuffle with ``seed`` that holds out ``test_fraction`` of them (at least one each)."""
    if root is not None and all((root / name).is_file() for name in SPLIT_FILES):
        by_name = {v.name: v for v in videos}
        train, test = (
            sorted(by_name[n] for n in (root / name).read_text().split() if n in by_name)
            for name in SPLIT_FILES
        )
        if not train or not test:
            raise ValueError(
                f"DAVIS split files {[str(root / n) for n in SPLIT_FILES]} leave "
                f"{len(train)} training and {len(test)} held-out videos among the {len(videos)} found; "
                "both need at least one"
            )
        return train, test
    if len(videos) < 2:
        raise ValueError(f"DAVIS needs >= 2 videos for a train/test split by video, found {len(videos)}")
    return held_out_split(videos, test_fraction, seed)


def lattice_pixels(columns: np.ndarray, kernel_px: int) -> tuple[np.ndarray, int]:
    """Pixel centres (C, 2) as (row, col) of the columns on a square frame, and the frame size."""
    pos = column_positions(columns) * kernel_px
    half = int(np.ceil(np.abs(pos).max() + kernel_px))
    size = 2 * half + 1
    rows = np.rint(half - pos[:, 1]).astype(np.int64)
    cols = np.rint(half + pos[:, 0]).astype(np.int64)
    return np.stack([rows, cols], axis=1), size


def box_sample(frames: np.ndarray, centres: np.ndarray, kernel_px: int) -> np.ndarray:
    """(T, C) mean over the kernel box around each centre of frames (T, H, W), via an integral image."""
    t, h, w = frames.shape
    integral = np.zeros((t, h + 1, w + 1))
    integral[:, 1:, 1:] = frames.cumsum(axis=1).cumsum(axis=2)
    lo = kernel_px // 2
    r0 = np.clip(centres[:, 0] - lo, 0, h)
    r1 = np.clip(centres[:, 0] - lo + kernel_px, 0, h)
    c0 = np.clip(centres[:, 1] - lo, 0, w)
    c1 = np.clip(centres[:, 1] - lo + kernel_px, 0, w)
    total = integral[:, r1, c1] - integral[:, r0, c1] - integral[:, r1, c0] + integral[:, r0, c0]
    return total / np.maximum((r1 - r0) * (c1 - c0), 1)


def load_luminance(path: Path, crop: float, size: int, rotation: int, flip: bool) -> np.ndarray:
    """(size, size) luminance in [0, 1] of one JPEG after centre crop, rotation (k*90 deg), flip, resize."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            rgb = np.asarray(img.convert("RGB"), dtype=np.float64) / 255.0
    except (OSError, ValueError, Image.DecompressionBombError) as err:  # a damaged or partial download
        raise DataError(
            f"{path}: not a readable image ({err}); download it again, or remove its video folder"
        ) from None
    lum = rgb @ LUMA
    h, w = lum.shape
    ch, cw = max(1, int(round(h * crop))), max(1, int(round(w * crop)))
    top, left = (h - ch) // 2, (w - cw) // 2
    lum = np.rot90(lum[top : top + ch, left : left + cw], k=rotation)
    if flip:
        lum = lum[:, ::-1]
    resized = Image.fromarray(np.ascontiguousarray(lum).astype(np.float32), mode="F").resize(
        (size, size), Image.BILINEAR
    )
    return np.clip(np.asarray(resized, dtype=np.float64), 0.0, 1.0)


def resample(movie: np.ndarray, fps: float, dt: float) -> np.ndarray:
    """Hold each source frame: (T_src, C) at ``fps`` -> (T, C) at 1/dt."""
    n_out = max(1, int(np.floor(movie.shape[0] / fps / dt)))
    index = np.minimum(np.floor(np.arange(n_out) * dt * fps).astype(np.int64), movie.shape[0] - 1)
    return movie[index]


def render_video(
    video: Path,
    columns: np.ndarray,
    dt: float,
    fps: float = 24.0,
    kernel_px: int = 13,
    crop: float = 0.6,
    rotation: int = 0,
    flip: bool = False,
    cache_dir: str | os.PathLike | None = None,
) -> np.ndarray:
    """(T, C) float32 column luminance of one (augmented) video at 1/dt, cached when ``cache_dir`` is set."""
    files = sorted(video.glob("*.jpg"))
    key = config_hash(
        {
            "video": str(video.resolve()),
            "files": [(f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files],
            "columns": columns.tolist(),
            "dt": dt,
            "fps": fps,
            "kernel_px": kernel_px,
            "crop": crop,
            "rotation": rotation,
            "flip": flip,
        }
    )
    cache = Path(cache_dir) / "davis" / f"{video.name}-{key}.npy" if cache_dir is not None else None
    if cache is not None and cache.is_file():
        return np.load(cache)
    centres, size = lattice_pixels(columns, kernel_px)
    frames = np.stack([load_luminance(f, crop, size, rotation, flip) for f in files])
    movie = resample(box_sample(frames, centres, kernel_px), fps, dt).astype(np.float32)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.save(cache, movie)
    return movie


def augmentations(rotations: list[int], flips: list[bool]) -> list[tuple[int, bool]]:
    for r in rotations:
        if r not in (0, 1, 2, 3):
            raise ValueError(f"simulation.stimulus.rotations has {r}; allowed: 0, 1, 2, 3 (quarter turns)")
    return [(r, f) for r in rotations for f in flips]


def davis_sequence(
    videos: list[Path],
    columns: np.ndarray,
    n_frames: int,
    dt: float,
    rng: np.random.Generator,
    rotations: list[int],
    flips: list[bool],
    max_clip_frames: int = 80,
    blank_s: tuple[float, float] = (0.0, 0.0),
    **render_kwargs,
) -> np.ndarray:
    """(n_frames, C): shuffled clips (<= ``max_clip_frames``) of the videos' augmented copies, repeated
    as needed, each after a grey lead of ``blank_s`` seconds
    (:func:`~hydra_llm.simulation.flyvis.stimuli.grey_lead`)."""
    variants = [(v, r, f) for v in videos for r, f in augmentations(rotations, flips)]
    clips, total = [], 0
    while total < n_frames:
        for i in rng.permutation(len(variants)):
            video, rotation, flip = variants[i]
            movie = render_video(video, columns, dt, rotation=rotation, flip=flip, **render_kwargs)
            start = int(rng.integers(0, max(1, movie.shape[0] - max_clip_frames + 1)))
            lead = grey_lead(len(columns), blank_s, dt, rng)
            clips += [lead, movie[start : start + max_clip_frames]]
            total += len(lead) + len(clips[-1])
            if total >= n_frames:
                break
    return np.concatenate(clips)[:n_frames]


def download(folder: str | os.PathLike, url: str = ARCHIVE_URL, sha256: str = ARCHIVE_SHA256) -> Path:
    """Download the DAVIS archive into ``folder`` (kept there: a second call downloads nothing), check
    its sha256, unpack it, and return the root to set as ``simulation.stimulus.davis_root``."""
    import pooch

    folder = Path(folder)
    unzip = pooch.Unzip(extract_dir="unpacked")  # relative to the archive's folder; unpacked once
    pooch.retrieve(
        url, known_hash=f"sha256:{sha256}", fname=Path(ARCHIVE_URL).name, path=folder, processor=unzip
    )
    roots = sorted(frames.parents[1] for frames in (folder / "unpacked").glob("**/JPEGImages/480p"))
    if not roots:
        raise FileNotFoundError(f"the archive {url} holds no JPEGImages/480p folder")
    return find_root(roots[0])


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m hydra_llm.simulation.flyvis.davis",
        description=f"Download the DAVIS-2017 trainval 480p videos ({ARCHIVE_BYTES / 1e6:.0f} MB), check the "
        "archive's sha256 and unpack them into FOLDER.",
    )
    parser.add_argument("folder")
    parser.add_argument("--url", default=ARCHIVE_URL, help="a mirror of the official archive")
    args = parser.parse_args(argv)
    root = download(args.folder, args.url)
    print(f"DAVIS is in {root}: run with simulation=flyvis_davis simulation.stimulus.davis_root={root}")


if __name__ == "__main__":
    main()
