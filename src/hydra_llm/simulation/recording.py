"""What an experimenter records, shared by every regime: measurement noise on the recorded variables,
and the time derivative estimated from the (noisy) record.

Measurement (observation) noise is added to what is recorded, after the simulation: it does not
change the dynamics, only what training and evaluation see. Process noise, in contrast, is part of the
simulated dynamics (each regime's ``noise_model_level``).

Smoothing and derivative (``simulation.smoothing_window``), both computed from the record alone:

* ``1``: the record as it is, and the forward difference ``(x[t+1] - x[t]) / dt``. Exact for an
  Euler-integrated, noise-free record, and unbiased under process noise (the step's noise is
  independent of ``x[t]``). Under measurement noise it fails twice: it multiplies the noise by
  ``sqrt(2) / dt``, and its error ``(n[t+1] - n[t]) / dt`` is correlated with the input
  ``x[t] + n[t]``, which the model learns as a spurious decay ``-1/dt``.
* odd ``w >= 5``: Savitzky-Golay. A cubic is fitted by least squares to the ``w`` frames centred on
  each frame; its value is the activity training sees and its slope the derivative. The slope's
  weights are antisymmetric, so its error is uncorrelated with the smoothed value's; the derivative's
  noise falls as ``w^-3/2`` and the activity's as ``w^-1/2``, while the fit's bias grows with the
  curvature of the dynamics over ``w * dt``. On the default signal network (dt 0.01, tau 0.5 to 1)
  at measurement noise 0.1, the derivative's error is 0.95 of the true derivative's std at ``w = 31``
  and 0.23 at ``w = 81``; the activity's error falls from 0.10 to 0.016 of its std.
* ``auto``: chosen from the record (:func:`choose_window`). The measurement noise is estimated from the
  autocovariance of the record's increments: white measurement noise n adds ``-var(n)`` at lag 1 and
  nothing at lags >= 2, process noise adds nothing at lag >= 1, and the dynamics' own autocovariance
  is extrapolated to lag 1 from lags 2 to 4 (:func:`measurement_noise_estimate`). Below
  :data:`NOISE_FLOOR` the raw record is kept (window 1). Otherwise the window of
  :data:`WINDOW_GRID` with the smallest generalised cross-validation score of the smoothed record
  (``mean residual^2 / (1 - h)^2``, ``h`` the filter's weight on the centre frame) is lengthened by
  :data:`DERIVATIVE_WINDOW_FACTOR`, because the derivative is best over a longer window than the
  record.
  Both assume dynamics that are smooth over a few frames: true of the signal and metabolism regimes,
  not of flyvis (time constants down to one frame), which refuses ``auto``.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

log = logging.getLogger(__name__)

SAVGOL_ORDER = 3
_COLUMNS_PER_CHUNK = 2048  # savgol works in float64; chunks keep a (T, N) record of 13k neurons small
# Noise is drawn 1,024 frames at a time. torch's CPU randn fills blocks of 16 values, so chunks of
# 1,024 x N values continue one stream: the noise is the same as one draw of the whole record's shape
# (tests/test_recording.py checks it), and the cached and published figures stay reproducible.
_FRAMES_PER_CHUNK = 1024


def add_measurement_noise(
    record: torch.Tensor, level: float, seed: int, *, inplace: bool = False
) -> torch.Tensor:
    """``record`` (T, N) plus Gaussian noise of ``level`` times each column's standard deviation.

    The noise comes from its own generator (seeded by ``seed``), so the simulated trajectory is the
    same at every noise level and a noise table compares like with like. Returns a new tensor of the
    record's dtype, or ``record`` itself, noisy, when ``inplace`` (the same values either way);
    ``level == 0`` returns ``record`` untouched.
    """
    if level <= 0:
        return record
    gen = torch.Generator().manual_seed(int(seed) + 7919)  # a stream apart from the simulation's
    std = torch.cat(  # float64 per column chunk: no float64 copy of a whole (T, N) record
        [
            record[:, c : c + _COLUMNS_PER_CHUNK].double().std(dim=0)
            for c in range(0, record.shape[1], _COLUMNS_PER_CHUNK)
        ]
    )
    scale = std.to(record.dtype) * float(level)
    out = record if inplace else torch.empty_like(record)
    for t in range(0, record.shape[0], _FRAMES_PER_CHUNK):  # no (T, N) temporary when in place
        rows = slice(t, t + _FRAMES_PER_CHUNK)
        noise = torch.randn(record[rows].shape, generator=gen, dtype=record.dtype).mul_(scale)
        torch.add(record[rows], noise, out=out[rows])
    return out


AUTO = "auto"
# Candidate windows of ``smoothing_window: auto`` (frames, ~1.2x apart; those longer than the record
# are skipped).
WINDOW_GRID = (5, 7, 9, 11, 13, 15, 19, 23, 27, 33, 41, 49, 59, 71, 85, 101, 121, 145, 175, 211, 253, 303)
# The derivative's best window over the smoothed record's (GCV) best window: 1.13-1.39 on 14 records
# of the signal and metabolism regimes at noise 0.01-0.2 (BENCHMARKS.md, "Measurement noise").
DERIVATIVE_WINDOW_FACTOR = 1.3
# Estimated measurement noise (units of each variable's std) below which ``auto`` keeps the raw record.
NOISE_FLOOR = 0.005


def _sample(record: torch.Tensor, max_frames: int, max_columns: int) -> np.ndarray:
    """The first ``max_frames`` frames of up to ``max_columns`` evenly spaced columns that vary, each
    standardised, float64 (F, C)."""
    frames = record[:max_frames]
    columns = np.unique(np.linspace(0, record.shape[1] - 1, min(max_columns, record.shape[1])).astype(int))
    x = frames[:, torch.from_numpy(columns)].detach().cpu().double().numpy()
    std = x.std(axis=0)
    x = x[:, std > 0]
    return (x - x.mean(axis=0)) / x.std(axis=0)


def measurement_noise_estimate(
    record: torch.Tensor, max_frames: int = 20_000, max_columns: int = 256
) -> float:
    """The record's measurement noise in units of each column's std (median over sampled columns),
    from the autocovariance c(k) of the increments: ``var(n) ~ c_dyn(1) - c(1)`` with the dynamics'
    ``c_dyn(1) ~ 3 c(2) - 3 c(3) + c(4)``. Needs no ground truth and no noise-free record."""
    x = _sample(record, max_frames, max_columns)
    if x.shape[0] < 8 or x.shape[1] == 0:
        return 0.0
    steps = np.diff(x, axis=0)
    c = [np.mean(steps[k:] * steps[: len(steps) - k], axis=0) for k in range(5)]
    variance = float(np.median(3 * c[2] - 3 * c[3] + c[4] - c[1]))
    return float(np.sqrt(max(variance, 0.0)))


def choose_window(record: torch.Tensor, max_frames: int = 20_000, max_columns: int = 64) -> int:
    """``smoothing_window: auto`` for ``record`` (T, N): 1 when its estimated measurement noise is below
    :data:`NOISE_FLOOR`; else :data:`DERIVATIVE_WINDOW_FACTOR` times the window of :data:`WINDOW_GRID`
    with the smallest generalised cross-validation score of the Savitzky-Golay fit (on sampled,
    standardised columns), as an odd number of frames in [5, T]. GCV finds the best window for the
    smoothed record; the derivative, which training fits, is best over a longer one."""
    from scipy.signal import savgol_coeffs, savgol_filter

    noise = measurement_noise_estimate(record, max_frames)
    x = _sample(record, max_frames, max_columns)
    windows = [w for w in WINDOW_GRID if w <= x.shape[0]]
    if noise < NOISE_FLOOR or not windows:
        log.info("smoothing_window=auto: measurement noise ~%.4f of the std -> 1 (the raw record)", noise)
        return 1
    scores = {}
    for w in windows:
        residual = x - savgol_filter(x, w, SAVGOL_ORDER, axis=0, mode="interp")
        centre = savgol_coeffs(w, SAVGOL_ORDER)[w // 2]
        scores[w] = float(np.mean(residual**2)) / (1.0 - centre) ** 2
    best = min(scores, key=scores.__getitem__)
    longest = record.shape[0] if record.shape[0] % 2 else record.shape[0] - 1
    window = min(2 * round(DERIVATIVE_WINDOW_FACTOR * best / 2) + 1, longest)
    log.info("smoothing_window=auto: measurement noise ~%.4f of the std -> %d frames", noise, window)
    return window


def resolve_window(record: torch.Tensor, window: int | str) -> int:
    """The number of frames ``smoothing_window`` stands for on ``record`` (T, N): ``window`` itself, or
    for ``"auto"`` the one :func:`choose_window` picks. Regimes store it in
    :attr:`~hydra_llm.simulation.base.Observations.smoothing_window`, so a cached record keeps it."""
    return choose_window(record) if window == AUTO else int(window)


def smooth_and_differentiate(
    record: torch.Tensor,
    dt: float,
    window: int | str = 1,
    *,
    out: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The activity (T, N) training sees and its time derivative (T, N), from the record (T, N) alone.

    ``window == 1``: the record itself and its forward difference (the last frame repeats the one
    before). Otherwise the Savitzky-Golay cubic over ``window`` frames (odd, >= 5: the schemas check
    it, :func:`~hydra_llm.schemas.simulation.check_recording`), the edge frames
    taken from the cubic fitted to the first and last ``window`` frames; ``"auto"``: the window
    :func:`choose_window` picks. Both in the record's dtype.
    ``out``: CPU tensors (T, N) to write the activity and the derivative into; the activity's may be
    ``record`` itself, so that a long record costs one more (T, N) array and no temporary.
    """
    window = resolve_window(record, window)
    activity, derivative = out if out is not None else (None, torch.empty_like(record))
    if window == 1 or record.shape[0] < 2:
        if activity is not None and activity is not record:
            activity.copy_(record)
        if record.shape[0] >= 2:
            torch.sub(record[1:], record[:-1], out=derivative[:-1])
            derivative[:-1].div_(dt)
            derivative[-1] = derivative[-2]
        else:
            derivative.zero_()
        return (record if activity is None else activity), derivative
    from scipy.signal import savgol_filter

    values = record.detach().cpu().numpy()
    smooth = np.empty_like(values) if activity is None else activity.numpy()
    slope = derivative.numpy()
    for start in range(0, values.shape[1], _COLUMNS_PER_CHUNK):
        columns = slice(start, start + _COLUMNS_PER_CHUNK)
        chunk = values[:, columns].astype(np.float64)  # a copy, so ``smooth`` may be ``values``
        smooth[:, columns] = savgol_filter(chunk, window, SAVGOL_ORDER, axis=0, mode="interp")
        slope[:, columns] = savgol_filter(
            chunk, window, SAVGOL_ORDER, deriv=1, delta=dt, axis=0, mode="interp"
        )
    return (torch.from_numpy(smooth) if activity is None else activity), derivative
