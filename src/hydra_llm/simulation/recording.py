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
"""

from __future__ import annotations

import numpy as np
import torch

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


def smooth_and_differentiate(
    record: torch.Tensor,
    dt: float,
    window: int = 1,
    *,
    out: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The activity (T, N) training sees and its time derivative (T, N), from the record (T, N) alone.

    ``window == 1``: the record itself and its forward difference (the last frame repeats the one
    before). Otherwise the Savitzky-Golay cubic over ``window`` frames (odd, >= 5: the schemas check
    it, :func:`~hydra_llm.schemas.simulation.check_recording`), the edge frames
    taken from the cubic fitted to the first and last ``window`` frames. Both in the record's dtype.
    ``out``: CPU tensors (T, N) to write the activity and the derivative into; the activity's may be
    ``record`` itself, so that a long record costs one more (T, N) array and no temporary.
    """
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
