"""Radar hand gestures: a physically grounded 60 GHz FMCW simulator.

The paper's data (Zhao et al., EuRAD 2023: a 60 GHz FMCW radar, 9 gestures, 1,363
training and 1,364 test samples) cannot be downloaded, so keras-egt simulates data of
the same kind from first principles. `load_data()` is the entry point; the physics
functions below it (`if_signal`, `range_doppler`, the map functions) are public so
that they can be tested and reused on a real radar's IF data.

## Radar (`RadarConfig`, defaults of the Infineon BGT60TR13C class)

| quantity | symbol | default |
|---|---|---|
| chirp start frequency | f_c | 58.5 GHz (sweep 58.5-62.5 GHz, "60 GHz radar") |
| bandwidth | B | 4 GHz -> range bin dR = c / 2B = 3.75 cm |
| samples per chirp | N_s | 64 at f_s = 2 MHz -> chirp T_c = N_s / f_s = 32 us |
| chirp slope | S = B / T_c | 125 MHz/us |
| chirps per frame | N_c | 32, repeated every T_rep = 500 us |
| velocity bin | dv = lambda / (2 N_c T_rep) | 0.16 m/s, unambiguous up to +-2.6 m/s |
| frame rate | | 33.3 Hz; 64 frames = a 1.92 s window |
| receivers | | 3, L-shaped, lambda/2 apart: Rx0-Rx1 horizontal (azimuth), Rx0-Rx2 vertical (elevation) |

## Signal model

Coordinates: the radar is at the origin looking along +z; x points to the user's
right, y up. A scatterer k at position p_k (range R_k = |p_k|, direction cosines
u_k = p_k / R_k), radial velocity v_k and radar cross-section sigma_k echoes with
amplitude a_k = sqrt(sigma_k) / R_k^2 (radar equation). After the mixer, sample n
of chirp m of frame f on receiver r is

    s[f, m, r, n] = sum_k a_k exp(j (2 pi (2 S R_k / c) n / f_s      # beat frequency
                                     + 4 pi R_k / lambda               # carrier phase
                                     + 4 pi v_k m T_rep / lambda       # Doppler
                                     + pi (u_k . e_r) + phi_k))        # receiver r

with e_r = (0, 0), (1, 0), (0, 1) the receiver offsets in units of lambda/2 and phi_k
a random scattering phase. R_k and v_k are taken at the start of each frame: within
a frame (16 ms) a 1 m/s hand moves under half a range bin, so range migration is kept in
the phase (the Doppler term) but not in the beat frequency, the usual
"stop-and-hop" approximation. The chip delivers the real part (a real-IF radar),
plus receiver noise. The noise is drawn uniform with the variance that gives the
requested SNR, because it is 5x faster to draw than Gaussian and the range DFT (64
samples) and Doppler DFT (32 chirps) make it Gaussian anyway (central limit).

Processing, as on a real gesture radar:

1. range FFT: Hann window over fast time; keep the N_s / 2 = 32 positive bins
   (bin k is range k dR). The positive bins of a real IF still carry the sign of
   the Doppler phase, so push and pull stay apart.
2. MTI clutter removal: subtract each range bin's mean over the frame's chirps,
   which removes static clutter (antenna leakage, the body, furniture).
3. Doppler FFT: Hann window over the chirps, zero-padded to 64 bins, zero velocity
   in the middle; positive = moving away.
4. Hand gating: per frame, the range bin with the most moving energy, +-2 bins.
5. Angle: per range-Doppler cell, the phase difference between Rx1 and Rx0 gives
   the azimuth direction cosine u_x = arg(Y1 Y0*) / pi, Rx2 vs Rx0 the elevation
   u_y; a histogram of these, weighted by the cross-power |Y1 Y0*| of the cells, is
   each frame's angle spectrum (a phase-comparison monopulse per cell, which
   resolves the few moving parts of a hand far better than beamforming 2 elements).

Both FFTs are computed as matrix products with the (windowed) DFT matrix: the same
transform, but faster than numpy's FFT for 64- and 32-point transforms in bulk.

## Representation: why these 2 channels

Each sample is a (64, 64, 2) float32 image, axis 0 = time (64 frames, oldest first):

* channel 0, Doppler-time: 64 velocity bins (-2.6 to +2.5 m/s, 0 in bin 32) summed
  over the hand's range gate and the receivers. Push and pull give opposite-sign
  bursts, swipes a sign flip (the arm's arc first nears then leaves the radar),
  circles a sinusoid, the wave a fast oscillation.
* channel 1, angle-time: bins 0-31 azimuth (u_x from -1 to +1), bins 32-63
  elevation (u_y). This is what separates the pairs that the Doppler channel cannot:
  swipe left/right sweep azimuth opposite ways, up/down sweep elevation, and the two
  circles trace azimuth and elevation with opposite phase order.

Range-time is left out by default: it adds little that the Doppler channel (its time
derivative) does not carry, and 2 channels keep the input of the paper-size model
small. Ask for it with `channels=("doppler", "angle", "range")`. Each map is
normalised the way a real pipeline does it: power in dB, per sample relative to the
map's maximum, clipped to a 40 dB dynamic range and scaled to [0, 1], then rounded
to 8-bit levels (k / 255) as an embedded pipeline would store it (this also makes
the cache 4x smaller).

## Gestures, users, variation

`CLASS_NAMES`: push, pull, swipe_left, swipe_right, swipe_up, swipe_down, circle_cw,
circle_ccw (as seen by the user), wave. Hand motions follow the minimum-jerk profile
s(t) = 10 t^3 - 15 t^4 + 6 t^5; swipes pivot on the elbow (an arc), circles lie in a
plane tilted towards the radar. The hand is a palm and 4 fingers (point scatterers
with RCS scaled by hand size, with small tremor), plus the forearm; clutter is the
leakage, the body (breathing) and 1-2 static objects.

Every user has a hand size, a speed, a preferred distance and direction, a gesture
amplitude and habits (circle start point and tilt, elbow radius). Each sample draws
its speed, start time, distance, direction, amplitude, SNR and clutter around those,
and a small share are sloppy (half-done, skewed, hesitant or drifting). Training and
test users are disjoint, as in real cross-user evaluations (`load_data(...,
return_users=True)` returns each sample's user), and `load_calibration_data` draws
further users seen in neither split, to calibrate the cascade on.

Determinism: every sample has its own `numpy.random.Generator`, seeded from
(seed, split, index), and users from (seed, split, user), so the arrays do not
depend on batching, and the test set does not depend on `num_train`. Outputs are
8-bit levels, so the last-bit differences that vectorised math libraries may show
between CPUs almost never reach the returned arrays.
"""

import dataclasses
import hashlib
import io
import json
import math
import os
import stat
import tempfile
import warnings
import zipfile

import numpy as np

from keras_egt import atomic, defaults

FORMAT_VERSION = 1

CLASS_NAMES = (
    "push",
    "pull",
    "swipe_left",
    "swipe_right",
    "swipe_up",
    "swipe_down",
    "circle_cw",
    "circle_ccw",
    "wave",
)
NUM_CLASSES = len(CLASS_NAMES)
CHANNELS = ("doppler", "angle", "range")
MAP_BINS = 64
DYNAMIC_RANGE_DB = 40.0
SPEED_OF_LIGHT = 299_792_458.0

_SPLIT_CODES = {"train": 0, "test": 1, "calibration": 2}
_NUM_FINGERS = 4
# palm, fingers, forearm, body, leakage, 2 static objects
_NUM_SCATTERERS = 1 + _NUM_FINGERS + 1 + 1 + 1 + 2
_HAND = slice(0, 1 + _NUM_FINGERS)
_MIN_RANGE_BIN = 2  # below ~7 cm: antenna leakage, never a hand
_GATE_HALF_WIDTH = 2


@dataclasses.dataclass(frozen=True)
class RadarConfig:
    """Parameters of the simulated FMCW radar (1 transmitter, 3 L-shaped receivers).

    Args:
        start_frequency_hz: chirp start frequency f_c (the carrier of the phase term).
        bandwidth_hz: swept bandwidth B; range bin c / 2B.
        samples_per_chirp: N_s, ADC samples per chirp; N_s / 2 range bins are kept.
        sampling_rate_hz: ADC rate f_s; chirp duration T_c = N_s / f_s.
        chirps_per_frame: N_c (at most 64, the Doppler FFT size).
        chirp_repetition_s: T_rep, time between chirp starts.
        frame_rate_hz: frames per second.
        num_frames: frames per sample (the time axis of the maps).

    Example:
    >>> cfg = RadarConfig()
    >>> round(cfg.range_resolution_m, 4), round(cfg.velocity_resolution_mps, 3)
    (0.0375, 0.16)
    """

    start_frequency_hz: float = 58.5e9
    bandwidth_hz: float = 4.0e9
    samples_per_chirp: int = 64
    sampling_rate_hz: float = 2.0e6
    chirps_per_frame: int = 32
    chirp_repetition_s: float = 500e-6
    frame_rate_hz: float = 100.0 / 3.0
    num_frames: int = 64
    num_receivers = 3  # the L-shaped array is fixed: Rx0, Rx1 (azimuth), Rx2 (elevation)

    def __post_init__(self):
        if not 2 <= self.chirps_per_frame <= 64:
            raise ValueError(
                f"chirps_per_frame must be in 2..64 (the Doppler FFT has 64 bins), "
                f"got {self.chirps_per_frame}."
            )
        if self.samples_per_chirp < 8 or self.samples_per_chirp % 2:
            raise ValueError(
                f"samples_per_chirp must be an even number >= 8, got {self.samples_per_chirp}."
            )
        if self.num_frames < 8:
            raise ValueError(f"num_frames must be >= 8, got {self.num_frames}.")
        if self.chirps_per_frame * self.chirp_repetition_s > 1.0 / self.frame_rate_hz:
            raise ValueError("the chirps of a frame must fit in the frame period.")

    @property
    def wavelength_m(self):
        return SPEED_OF_LIGHT / self.start_frequency_hz

    @property
    def chirp_duration_s(self):
        return self.samples_per_chirp / self.sampling_rate_hz

    @property
    def slope_hz_per_s(self):
        return self.bandwidth_hz / self.chirp_duration_s

    @property
    def num_range_bins(self):
        return self.samples_per_chirp // 2

    @property
    def range_resolution_m(self):
        return SPEED_OF_LIGHT / (2.0 * self.bandwidth_hz)

    @property
    def velocity_resolution_mps(self):
        return self.wavelength_m / (2.0 * self.chirps_per_frame * self.chirp_repetition_s)

    @property
    def max_velocity_mps(self):
        return self.wavelength_m / (4.0 * self.chirp_repetition_s)

    def range_bins_m(self):
        """Range of each kept range bin, in metres: `k * c / 2B`."""
        return np.arange(self.num_range_bins) * self.range_resolution_m

    def doppler_bins_mps(self):
        """Radial velocity of each of the 64 Doppler bins (positive = receding)."""
        return (np.arange(MAP_BINS) - MAP_BINS // 2) * (
            self.wavelength_m / (2.0 * MAP_BINS * self.chirp_repetition_s)
        )


def angle_bins(num_bins=MAP_BINS // 2):
    """Centres of the angle bins, as direction cosines (sin of the angle) in [-1, 1).

    Args:
        num_bins: number of bins spanning u = -1 to +1.

    Returns:
        A float64 array of `num_bins` bin centres.

    Example:
    >>> angle_bins(4)
    array([-0.75, -0.25,  0.25,  0.75])
    """
    return -1.0 + (np.arange(num_bins) + 0.5) * (2.0 / num_bins)


def minimum_jerk(tau):
    """Minimum-jerk progress s = 10 t^3 - 15 t^4 + 6 t^5 of `tau`, clipped to [0, 1]."""
    tau = np.clip(tau, 0.0, 1.0)
    return tau**3 * (10.0 + tau * (-15.0 + 6.0 * tau))


# ---------------------------------------------------------------------------------
# Physics


def if_signal(positions, velocities, rcs, config=None, phases=None, noise_std=0.0, rng=None):
    """Simulates the real IF (beat) signal of point scatterers.

    Args:
        positions: `(batch, frames, K, 3)` scatterer positions in metres (x right,
            y up, z away from the radar) at each frame's start.
        velocities: `(batch, frames, K, 3)` velocities in m/s.
        rcs: `(batch, K)` radar cross-sections in m^2 (0 switches a scatterer off).
        config: a `RadarConfig`; default `RadarConfig()`.
        phases: `(batch, K)` scattering phases in radians; default 0.
        noise_std: scalar or `(batch,)` standard deviation of the receiver noise
            added to each real IF sample.
        rng: a `numpy.random.Generator` or a list of one per batch item; needed
            when `noise_std` is not 0.

    Returns:
        A float32 array `(batch, frames, chirps, receivers, samples)`.

    Example:
    >>> p = np.zeros((1, 64, 1, 3)); p[..., 2] = 0.3
    >>> if_signal(p, np.zeros_like(p), np.ones((1, 1))).shape
    (1, 64, 32, 3, 64)
    """
    config = config or RadarConfig()
    positions = np.asarray(positions, np.float64)
    velocities = np.asarray(velocities, np.float64)
    rcs = np.asarray(rcs, np.float64)
    batch, frames, k = positions.shape[:3]
    lam = config.wavelength_m
    ranges = np.linalg.norm(positions, axis=-1)  # (B, F, K)
    ranges = np.maximum(ranges, 1e-3)
    direction = positions / ranges[..., None]
    radial_velocity = np.sum(velocities * direction, axis=-1)
    amplitude = np.sqrt(rcs)[:, None, :] / ranges**2
    if phases is None:
        phases = np.zeros((batch, k))
    # The carrier phase reaches ~1e3 rad: it is wrapped in float64 (on the small
    # (B, F, K) array) so that float32 keeps the Doppler phase's precision.
    carrier = np.mod(4.0 * np.pi * ranges / lam, 2.0 * np.pi)
    carrier += np.asarray(phases, np.float64)[:, None, :]
    rx_offsets = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])  # units of lambda / 2
    rx_phase = np.pi * np.einsum("bfkd,rd->bfkr", direction[..., :2], rx_offsets)
    beat_frequency = 2.0 * config.slope_hz_per_s * ranges / SPEED_OF_LIGHT
    n = np.arange(config.samples_per_chirp, dtype=np.float32)
    # Fast-time x receiver factor G[b, f, k, r, n] and slow-time factor D[b, f, m, k]:
    # the cube is their product summed over scatterers, i.e. one matrix product per frame.
    step = (2.0 * np.pi * beat_frequency / config.sampling_rate_hz).astype(np.float32)
    offset = (carrier[..., None] + rx_phase).astype(np.float32)
    fast = step[..., None, None] * n + offset[..., None]  # |phase| < ~250 rad
    g = amplitude[..., None, None].astype(np.float32)
    g_re = (g * np.cos(fast)).reshape(batch, frames, k, -1)
    g_im = (g * np.sin(fast)).reshape(batch, frames, k, -1)
    m = np.arange(config.chirps_per_frame, dtype=np.float32)
    doppler_step = (4.0 * np.pi / lam * config.chirp_repetition_s * radial_velocity)
    slow = doppler_step.astype(np.float32)[:, :, None, :] * m[:, None]  # (B, F, M, K)
    # Re(D G) = Re(D) Re(G) - Im(D) Im(G): one real matrix product with 2K terms.
    left = np.concatenate([np.cos(slow), -np.sin(slow)], axis=-1)
    right = np.concatenate([g_re, g_im], axis=-2)
    cube = np.matmul(left, right).reshape(
        batch, frames, config.chirps_per_frame, config.num_receivers, config.samples_per_chirp
    )
    noise_std = np.broadcast_to(np.asarray(noise_std, np.float64), (batch,))
    if np.any(noise_std > 0):
        rngs = rng if isinstance(rng, (list, tuple)) else [rng] * batch
        uniform = np.empty(cube.shape[1:], np.float32)
        for i in range(batch):
            rngs[i].random(out=uniform, dtype=np.float32)
            # Uniform on [-sqrt(3), sqrt(3)] has unit variance.
            half_width = np.float32(noise_std[i] * math.sqrt(3.0))
            cube[i] += (uniform - np.float32(0.5)) * (2 * half_width)
    return cube


def _range_dft_matrix(config):
    n = config.samples_per_chirp
    window = np.hanning(n + 2)[1:-1]  # no zero end points: every sample counts
    k = np.arange(config.num_range_bins)
    w = window[:, None] * np.exp(-2j * np.pi * np.arange(n)[:, None] * k / n)
    # Interleaved (re, im) columns so that the real product views as complex64.
    out = np.empty((n, 2 * len(k)), np.float32)
    out[:, 0::2] = w.real
    out[:, 1::2] = w.imag
    return out


def _doppler_dft_matrix(config):
    m = config.chirps_per_frame
    window = np.hanning(m + 2)[1:-1]
    d = np.arange(MAP_BINS) - MAP_BINS // 2  # zero velocity in the middle
    w = np.exp(-2j * np.pi * d[:, None] * np.arange(m) / MAP_BINS) * window
    return w.astype(np.complex64)


def range_spectrum(cube, config=None, mti=True):
    """Range FFT (Hann window, positive bins) and MTI of a real IF cube.

    Args:
        cube: `(batch, frames, chirps, receivers, samples)` real IF signal, as from
            `if_signal`.
        config: the `RadarConfig` of the cube.
        mti: subtract each range bin's mean over the chirps of its frame (removes
            static clutter; turn off to see static targets).

    Returns:
        complex64 `(batch, frames, chirps, receivers, range bins)`; range bin k is at
        `k * range_resolution_m`.
    """
    config = config or RadarConfig()
    cube = np.asarray(cube, np.float32)
    b, f, m, r, n = cube.shape
    spectrum = np.matmul(cube.reshape(-1, n), _range_dft_matrix(config))
    spectrum = spectrum.view(np.complex64).reshape(b, f, m, r, config.num_range_bins)
    if mti:
        spectrum -= spectrum.mean(axis=2, keepdims=True)
    return spectrum


def doppler_fft(spectrum, config=None):
    """Doppler FFT over the chirps (axis 2): Hann window, 64 bins, zero velocity at 32."""
    config = config or RadarConfig()
    b, f, m = spectrum.shape[:3]
    rest = spectrum.shape[3:]
    rd = np.matmul(_doppler_dft_matrix(config), spectrum.reshape(b, f, m, -1))
    return rd.reshape((b, f, MAP_BINS) + rest)


def range_doppler(cube, config=None, mti=True):
    """Range FFT, MTI clutter removal and Doppler FFT of a real IF cube.

    Args:
        cube: `(batch, frames, chirps, receivers, samples)` real IF signal, as from
            `if_signal`.
        config: the `RadarConfig` of the cube.
        mti: subtract each range bin's mean over the chirps of its frame (removes
            static clutter; turn off to see static targets).

    Returns:
        A complex64 array `(batch, frames, 64 Doppler bins, receivers, range bins)`;
        Doppler bin 32 is zero velocity (see `RadarConfig.doppler_bins_mps`), range
        bin k is at `k * range_resolution_m`.

    Example:
    >>> rd = range_doppler(np.zeros((1, 64, 32, 3, 64), np.float32))
    >>> rd.shape
    (1, 64, 64, 3, 32)
    """
    return doppler_fft(range_spectrum(cube, config, mti), config)


def _gate(profile):
    """Per frame, the indices of the 5 range bins around the strongest moving echo."""
    profile = profile.copy()
    profile[..., :_MIN_RANGE_BIN] = 0.0
    num_bins = profile.shape[-1]
    centre = np.clip(np.argmax(profile, axis=-1), _MIN_RANGE_BIN + _GATE_HALF_WIDTH,
                     num_bins - 1 - _GATE_HALF_WIDTH)
    return centre[..., None] + np.arange(-_GATE_HALF_WIDTH, _GATE_HALF_WIDTH + 1)


def _power(z):
    return z.real**2 + z.imag**2


def _gated(rd):
    """The hand's range gate of a range-Doppler cube: `(B, F, D, R, 5)`."""
    index = _gate(_power(rd).sum(axis=(2, 3)))
    return np.take_along_axis(rd, index[:, :, None, None, :], axis=-1)


def _doppler_map(gated):
    return _power(gated).sum(axis=(3, 4))


def _angle_map(gated, num_bins):
    b, f = gated.shape[:2]
    frame_index = np.arange(b * f).reshape(b, f, 1, 1)
    maps = []
    for rx in (1, 2):
        cross = gated[:, :, :, rx] * np.conj(gated[:, :, :, 0])  # (B, F, D, gate)
        u = np.angle(cross) * (num_bins / (2.0 * np.pi)) + num_bins / 2.0
        idx = np.minimum(u.astype(np.int64), num_bins - 1)  # u >= 0: truncation = floor
        flat = (frame_index * num_bins + idx).ravel()
        hist = np.bincount(flat, weights=np.abs(cross).ravel(), minlength=b * f * num_bins)
        maps.append(hist.reshape(b, f, num_bins))
    return np.concatenate(maps, axis=-1)


def doppler_time_map(rd):
    """Doppler-time power map: the hand's range gate, summed over range and receivers.

    The gate is, per frame, the 5 range bins around the one with the most (moving)
    energy.

    Args:
        rd: output of `range_doppler`.

    Returns:
        A float32 `(batch, frames, 64)` power map (linear scale).
    """
    return _doppler_map(_gated(rd)).astype(np.float32)


def range_time_map(rd):
    """Range-time power map (moving energy per range bin), summed over Doppler and receivers.

    Returns:
        A float32 `(batch, frames, range bins)` power map, bins below ~7 cm zeroed.
    """
    profile = _power(rd).sum(axis=(2, 3))
    profile[..., :_MIN_RANGE_BIN] = 0.0
    return profile.astype(np.float32)


def angle_time_map(rd, num_bins=MAP_BINS // 2):
    """Azimuth-time and elevation-time maps by per-cell phase comparison.

    Each range-Doppler cell in the hand's range gate votes for the direction cosine
    `u = arg(Y_j conj(Y_0)) / pi` (j = 1 azimuth, 2 elevation), with weight its
    cross-power `|Y_j conj(Y_0)|`.

    Args:
        rd: output of `range_doppler`.
        num_bins: angle bins per plane over u in [-1, 1) (see `angle_bins`).

    Returns:
        A float32 `(batch, frames, 2 * num_bins)` map: azimuth bins then elevation bins.
    """
    return _angle_map(_gated(rd), num_bins).astype(np.float32)


def normalize_map(power, dynamic_range_db=DYNAMIC_RANGE_DB):
    """Log-scales a power map per sample: 0 dB (the sample's max) -> 1, -range -> 0.

    Args:
        power: `(batch, ...)` non-negative powers.
        dynamic_range_db: the span of dB below the maximum that maps to [0, 1].

    Returns:
        uint8 levels `(batch, ...)`: `round(255 * clip(1 + dB / range, 0, 1))`.
    """
    power = np.asarray(power, np.float64)
    axes = tuple(range(1, power.ndim))
    db = 10.0 * np.log10(power + 1e-30)
    db -= db.max(axis=axes, keepdims=True)
    level = np.clip(1.0 + db / dynamic_range_db, 0.0, 1.0)
    return np.round(level * 255.0).astype(np.uint8)


def _resize_bins(power, size):
    """Linear interpolation of the last axis to `size` bins (for the range map)."""
    old = power.shape[-1]
    if old == size:
        return power
    pos = (np.arange(size) + 0.5) * old / size - 0.5
    lo = np.clip(np.floor(pos).astype(int), 0, old - 1)
    hi = np.clip(lo + 1, 0, old - 1)
    frac = np.clip(pos - lo, 0.0, 1.0)
    return power[..., lo] * (1 - frac) + power[..., hi] * frac


def maps_from_cube(cube, config=None, channels=("doppler", "angle")):
    """The representation of `load_data` from a real IF cube.

    The same as `range_doppler` followed by the map functions, but the Doppler FFT
    runs only on each frame's range gate (the hand), which is most of the saving
    that makes the default set quick to generate. The gate is found from the
    range spectrum's energy over the chirps, equal by Parseval to the energy over
    the Doppler bins.

    Args:
        cube: `(batch, frames, chirps, receivers, samples)` real IF signal.
        config: the `RadarConfig` of the cube.
        channels: names from `CHANNELS`.

    Returns:
        uint8 levels `(batch, frames, 64, len(channels))`.
    """
    config = config or RadarConfig()
    spectrum = range_spectrum(cube, config)
    window = np.hanning(config.chirps_per_frame + 2)[1:-1].astype(np.float32)
    profile = np.einsum("bfmrk,m->bfk", _power(spectrum), window**2)
    index = _gate(profile)
    gated = doppler_fft(np.take_along_axis(spectrum, index[:, :, None, None, :], axis=-1), config)
    out = []
    for name in channels:
        if name == "doppler":
            power = _doppler_map(gated)
        elif name == "angle":
            power = _angle_map(gated, MAP_BINS // 2)
        elif name == "range":
            profile[..., :_MIN_RANGE_BIN] = 0.0
            power = _resize_bins(profile, MAP_BINS)
        else:
            raise ValueError(f"unknown channel {name!r}; choose from {CHANNELS}.")
        out.append(normalize_map(power))
    return np.stack(out, axis=-1)


# ---------------------------------------------------------------------------------
# Users and gestures

_NOMINAL_DURATION_S = {
    "push": 0.55,
    "pull": 0.55,
    "swipe_left": 0.6,
    "swipe_right": 0.6,
    "swipe_up": 0.6,
    "swipe_down": 0.6,
    "circle_cw": 1.0,
    "circle_ccw": 1.0,
    "wave": 1.0,
}


def _draw_user(rng):
    return {
        "hand_size": rng.uniform(0.8, 1.2),
        "speed": rng.uniform(0.75, 1.35),
        "distance": rng.uniform(0.18, 0.45),
        "azimuth": np.deg2rad(rng.uniform(-20.0, 20.0)),
        "elevation": np.deg2rad(rng.uniform(-15.0, 15.0)),
        "amplitude": rng.uniform(0.8, 1.2),
        "circle_start": np.deg2rad(rng.normal(90.0, 35.0)),
        "circle_tilt": np.deg2rad(rng.uniform(15.0, 50.0)),
        "elbow": rng.uniform(0.25, 0.45),
        "finger_spread": rng.uniform(0.8, 1.2),
    }


def _users(seed, split, count):
    return [
        _draw_user(np.random.default_rng([seed, 7, _SPLIT_CODES[split], u])) for u in range(count)
    ]


def _palm_path(name, tau, g):
    """Palm offset (T, 3) from its rest point and finger flap (T,) at progress tau."""
    s = minimum_jerk(tau)
    zero = np.zeros_like(s)
    flap = zero
    a = g["amplitude"]
    if name in ("push", "pull"):
        sign = -1.0 if name == "push" else 1.0  # push approaches: z decreases
        offset = np.stack([zero, zero, sign * a * 0.16 * (s - 0.5)], axis=-1)
    elif name.startswith("swipe"):
        # Elbow pivot: the hand sweeps an arc, nearest to the radar mid-swipe.
        span = a * 0.26
        half_angle = np.arcsin(min(0.95, span / 2 / g["elbow"]))
        sign = {"swipe_left": -1.0, "swipe_right": 1.0, "swipe_up": 1.0, "swipe_down": -1.0}[name]
        phi = sign * half_angle * (2.0 * s - 1.0)
        lateral = g["elbow"] * np.sin(phi)
        depth = g["elbow"] * (1.0 - np.cos(phi))
        if name in ("swipe_left", "swipe_right"):
            offset = np.stack([lateral, zero, depth], axis=-1)
        else:
            offset = np.stack([zero, lateral, depth], axis=-1)
    elif name.startswith("circle"):
        # As seen by the user (facing the radar, x to their right): clockwise runs
        # from the top to the right, i.e. decreasing polar angle.
        sign = -1.0 if name == "circle_cw" else 1.0
        phi = g["circle_start"] + sign * 2.0 * np.pi * g["turns"] * s
        radius = a * 0.08
        tilt = g["circle_tilt"]
        offset = radius * np.stack(
            [np.cos(phi), np.sin(phi) * np.cos(tilt), np.sin(phi) * np.sin(tilt)], axis=-1
        )
    elif name == "wave":
        active = (tau > 0) & (tau < 1)
        envelope = np.sin(np.pi * np.clip(tau, 0, 1)) ** 0.5
        phase = 2.0 * np.pi * g["cycles"] * np.clip(tau, 0, 1)
        lateral = a * 0.06 * envelope * np.sin(phase)
        offset = np.stack([lateral, zero, 0.01 * envelope * np.cos(phase)], axis=-1)
        flap = np.where(active, 0.025 * envelope * np.cos(phase), 0.0)
    else:  # pragma: no cover - guarded by CLASS_NAMES
        raise ValueError(name)
    return offset, flap


def _scene(label, user, rng, config, snr_db, sloppy_fraction):
    """Scatterer trajectories of one sample; returns positions, velocities, rcs, phases, noise std."""
    name = CLASS_NAMES[label]
    window = config.num_frames / config.frame_rate_hz
    speed = float(np.clip(user["speed"] * np.exp(rng.normal(0.0, 0.15)), 0.5, 2.0))
    duration = min(_NOMINAL_DURATION_S[name] / speed, 0.8 * window)
    start = rng.uniform(0.05 * window, window - duration - 0.05 * window)
    g = {
        "amplitude": user["amplitude"] * rng.uniform(0.85, 1.15),
        "elbow": user["elbow"] * rng.uniform(0.9, 1.1),
        "circle_start": user["circle_start"] + rng.normal(0.0, 0.35),
        "circle_tilt": user["circle_tilt"] + rng.normal(0.0, 0.1),
        "turns": rng.uniform(0.85, 1.15),
        "cycles": rng.uniform(2.0, 3.0),
    }
    distance = float(np.clip(user["distance"] + rng.normal(0.0, 0.03), 0.12, 0.7))
    azimuth = user["azimuth"] + np.deg2rad(rng.normal(0.0, 4.0))
    elevation = user["elevation"] + np.deg2rad(rng.normal(0.0, 4.0))
    skew = 0.0
    pause = None
    drift = np.zeros(3)
    if rng.random() < sloppy_fraction:
        kind = rng.integers(4)
        if kind == 0:  # half-hearted
            g["amplitude"] *= rng.uniform(0.35, 0.6)
        elif kind == 1:  # skewed direction / plane
            skew = np.deg2rad(rng.uniform(25.0, 40.0)) * rng.choice([-1.0, 1.0])
        elif kind == 2:  # hesitation mid-gesture
            pause = (rng.uniform(0.3, 0.6), rng.uniform(0.15, 0.3))
        else:  # the whole hand drifts
            drift = rng.normal(0.0, 0.08, size=3)

    # Central differences give velocities without deriving every path by hand.
    dt = 1e-3
    t0 = np.arange(config.num_frames) / config.frame_rate_hz
    times = np.concatenate([t0 - dt, t0, t0 + dt])
    tau = (times - start) / duration
    if pause is not None:
        at, length = pause
        # Progress stalls for `length` of the duration at `at`, then resumes.
        tau = np.where(tau < at, tau, np.where(tau < at + length, at, tau - length))
        tau = tau / (1.0 - length)
    offset, flap = _palm_path(name, tau, g)
    if skew:
        c, s = math.cos(skew), math.sin(skew)
        offset = offset @ np.array([[c, s, 0.0], [-s, c, 0.0], [0.0, 0.0, 1.0]])
    offset = offset + np.clip((times - start) / window, 0.0, 1.0)[:, None] * drift

    rest = distance * np.array(
        [math.sin(azimuth) * math.cos(elevation), math.sin(elevation),
         math.cos(azimuth) * math.cos(elevation)]
    )
    size = user["hand_size"]
    spread = user["finger_spread"] * size
    n_t = len(times)
    pos = np.zeros((n_t, _NUM_SCATTERERS, 3))
    palm = rest + offset
    pos[:, 0] = palm
    # Fingers above the palm, spread sideways; tremor of a few mm gives micro-Doppler.
    finger_x = np.array([-0.03, -0.01, 0.01, 0.03]) * spread
    finger_y = np.array([0.06, 0.075, 0.075, 0.065]) * size
    tremor_f = rng.uniform(3.0, 9.0, size=_NUM_FINGERS)
    tremor_a = rng.uniform(0.0005, 0.002, size=_NUM_FINGERS)
    tremor_p = rng.uniform(0.0, 2 * np.pi, size=_NUM_FINGERS)
    tremor = tremor_a * np.sin(2 * np.pi * tremor_f * times[:, None] + tremor_p)
    pos[:, 1:5, 0] = palm[:, None, 0] + finger_x
    pos[:, 1:5, 1] = palm[:, None, 1] + finger_y
    pos[:, 1:5, 2] = palm[:, None, 2] + flap[:, None] * (finger_y / 0.07) + tremor
    # Forearm: behind and below the hand, following half of its motion.
    pos[:, 5] = rest + 0.5 * offset + np.array([0.0, -0.15, 0.12]) * size
    # Body: breathing at 0.2-0.4 Hz, a few mm, well behind the hand.
    body = rest * (1.0 + rng.uniform(0.8, 1.6))
    breath = rng.uniform(0.002, 0.006) * np.sin(
        2 * np.pi * rng.uniform(0.2, 0.4) * times + rng.uniform(0, 2 * np.pi)
    )
    pos[:, 6] = body + np.array([0.0, -0.1, 0.0]) + breath[:, None] * np.array([0, 0, 1.0])
    pos[:, 7] = np.array([0.0, 0.0, rng.uniform(0.01, 0.03)])  # Tx-Rx leakage
    for k in (8, 9):  # furniture, walls: static, anywhere in view
        r = rng.uniform(0.2, 1.2)
        u = rng.uniform(-0.6, 0.6, size=2)
        pos[:, k] = r * np.array([u[0], u[1], math.sqrt(max(0.0, 1 - u @ u))])

    rcs = np.empty(_NUM_SCATTERERS)
    rcs[0] = 0.01 * size**2  # palm
    rcs[1:5] = 0.0015 * size**2 * rng.uniform(0.6, 1.4, size=_NUM_FINGERS)
    rcs[5] = 0.006 * size**2
    rcs[6] = rng.uniform(0.2, 1.0)
    rcs[7] = rng.uniform(1e-7, 1e-6)
    rcs[8:] = rng.uniform(0.0, 0.5, size=2) * (rng.random(2) < 0.7)
    phases = rng.uniform(0.0, 2 * np.pi, size=_NUM_SCATTERERS)

    pos_m, pos_0, pos_p = np.split(pos, 3)
    vel = (pos_p - pos_m) / (2 * dt)

    # SNR of the hand's echo in one chirp's range profile (after the windowed range
    # DFT), at the rest point: |a/2 sum(w)|^2 / (sigma^2 sum(w^2)) for a real IF a cos().
    snr = 10.0 ** (rng.uniform(*snr_db) / 10.0)
    hand_amplitude2 = rcs[_HAND].sum() / distance**4
    window_fn = np.hanning(config.samples_per_chirp + 2)[1:-1]
    noise_var = hand_amplitude2 * window_fn.sum() ** 2 / (4.0 * (window_fn**2).sum() * snr)
    return pos_0, vel, rcs, phases, math.sqrt(noise_var)


def simulate(labels, users, seed=0, split="train", snr_db=(5.0, 25.0), sloppy_fraction=0.05,
             channels=("doppler", "angle"), config=None, batch_size=16, start_index=0,
             progress=None):
    """Simulates samples of given labels, users and indices; the core of `load_data`.

    Args:
        labels: int array of class indices (see `CLASS_NAMES`).
        users: one user dict (from the split's user list) per label.
        seed: base seed; sample i draws from `default_rng([seed, 11, split, i])`.
        split: "train", "test" or "calibration" (part of each sample's seed).
        snr_db: (low, high) range of the per-sample SNR in dB.
        sloppy_fraction: share of sloppy executions.
        channels: names from `CHANNELS`.
        config: a `RadarConfig`.
        batch_size: samples processed together (does not change the result).
        start_index: index of the first sample, for its seed.
        progress: a `keras.utils.Progbar` advanced by every sample simulated, or None.

    Returns:
        uint8 levels `(len(labels), frames, 64, len(channels))`.
    """
    config = config or RadarConfig()
    labels = np.asarray(labels)
    out = np.empty((len(labels), config.num_frames, MAP_BINS, len(channels)), np.uint8)
    code = _SPLIT_CODES[split]
    for lo in range(0, len(labels), batch_size):
        hi = min(lo + batch_size, len(labels))
        rngs = [np.random.default_rng([seed, 11, code, start_index + i]) for i in range(lo, hi)]
        scenes = [
            _scene(int(labels[i]), users[i], rngs[i - lo], config, snr_db, sloppy_fraction)
            for i in range(lo, hi)
        ]
        pos, vel, rcs, phases, noise_std = (np.stack(v) for v in zip(*scenes))
        cube = if_signal(pos, vel, rcs, config, phases, noise_std, rngs)
        out[lo:hi] = maps_from_cube(cube, config, channels)
        if progress is not None:
            progress.add(hi - lo)
    return out


def _assignment(seed, split, num_samples, num_users):
    """Each sample's label and user id in a split (cheap: no simulation)."""
    rng = np.random.default_rng([seed, 13, _SPLIT_CODES[split]])
    labels = np.arange(num_samples) % NUM_CLASSES  # balanced
    rng.shuffle(labels)
    user_ids = rng.integers(0, num_users, size=num_samples)
    return labels, user_ids


def _split(seed, split, num_samples, num_users, **kwargs):
    labels, user_ids = _assignment(seed, split, num_samples, num_users)
    users = _users(seed, split, num_users)
    levels = simulate(labels, [users[u] for u in user_ids], seed=seed, split=split, **kwargs)
    return levels, labels.astype(np.int32)


def _progress(count, verbose):
    if not verbose:
        return None
    import keras

    return keras.utils.Progbar(count, unit_name="simulated sample")


def _to_float(levels):
    # The one conversion used for fresh and cached data, so both are byte-identical.
    return levels.astype(np.float32) / np.float32(255.0)


# ---------------------------------------------------------------------------------
# Cache


def cache_dir():
    """Folder of the cached sets: `$KERAS_HOME/datasets/keras_egt` (default `~/.keras`).

    Like `keras.utils.get_file`, falls back to `/tmp/.keras` when the Keras home is not
    writable.
    """
    base = os.path.expanduser(os.environ.get("KERAS_HOME", os.path.join("~", ".keras")))
    try:
        os.makedirs(base, exist_ok=True)
    except OSError:
        pass
    if not os.access(base, os.W_OK):
        base = os.path.join("/tmp" if os.path.isdir("/tmp") else tempfile.gettempdir(), ".keras")
    return os.path.join(base, "datasets", "keras_egt")


def _checksum(arrays):
    digest = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        digest.update(f"{name}:{a.dtype.str}:{a.shape}".encode())
        digest.update(a.data)
    return digest.hexdigest()


_ARRAY_KEYS = ("x_train", "y_train", "x_test", "y_test")


def _shared(folder):
    """Whether `folder` or a folder above it is world-writable (e.g. `/tmp`)."""
    folder = os.path.abspath(folder)
    while True:
        try:
            if os.stat(folder).st_mode & stat.S_IWOTH:
                return True
        except OSError:
            pass
        parent = os.path.dirname(folder)
        if parent == folder:
            return False
        folder = parent


def _distrust(path):
    """Why a cache file in a shared folder cannot be trusted, or None.

    The checksum only catches damage: anyone who can write the file can recompute it
    (e.g. flip the labels). In a folder others can write (the `/tmp/.keras` fallback),
    trust only a file of the current user that only they can write.
    """
    if os.name != "posix" or not _shared(os.path.dirname(path)):
        return None
    info = os.lstat(path)
    if not stat.S_ISREG(info.st_mode):
        return "it is not a regular file"
    if info.st_uid != os.getuid():
        return f"it is owned by user id {info.st_uid}, not you, in a shared folder"
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return "others can write it, in a shared folder"
    return None


def _read_cache(path, key, names=_ARRAY_KEYS):
    """The cached arrays, or None with a warning if the file is damaged or untrusted."""
    try:
        untrusted = _distrust(path)
    except OSError as error:
        untrusted = f"unreadable ({type(error).__name__}: {error})"
    if untrusted:
        warnings.warn(f"Cached radar gesture set {path} is not trusted ({untrusted}); "
                      "regenerating it. Point KERAS_HOME at a folder of your own to keep a "
                      "cache.", stacklevel=3)
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {name: data[name] for name in names}
            stored_sum = str(data["sha256"])
            stored_key = str(data["key"])
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as error:
        reason = f"unreadable ({type(error).__name__}: {error})"
    else:
        if stored_key != key:
            reason = "it belongs to other parameters"
        elif _checksum(arrays) != stored_sum:
            reason = "checksum mismatch"
        else:
            return arrays
    warnings.warn(f"Cached radar gesture set {path} is corrupted ({reason}); regenerating it.",
                  stacklevel=3)
    return None


def _write_cache(path, key, arrays):
    folder = os.path.dirname(path)
    try:
        os.makedirs(folder, exist_ok=True)
        buffer = io.BytesIO()
        np.savez(buffer, sha256=np.array(_checksum(arrays)), key=np.array(key), **arrays)
        atomic.write_bytes(path, buffer.getvalue())
        if os.name == "posix" and _shared(folder):  # else it is distrusted when read back
            os.chmod(path, os.stat(path).st_mode & ~(stat.S_IWGRP | stat.S_IWOTH))
    except OSError as error:
        warnings.warn(f"Could not cache the radar gesture set at {path}: {error}", stacklevel=3)


# ---------------------------------------------------------------------------------
# Public loader


def _check_count(name, value, minimum=1):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}.")
    return int(value)


def _check_args(num_train, num_test, seed, snr_db, num_train_users, num_test_users,
                sloppy_fraction, channels, config):
    num_train = _check_count("num_train", num_train)
    num_test = _check_count("num_test", num_test)
    seed = _check_count("seed", seed, minimum=0)
    num_train_users = _check_count("num_train_users", num_train_users)
    num_test_users = _check_count("num_test_users", num_test_users)
    if isinstance(snr_db, (int, float)) and not isinstance(snr_db, bool):
        snr_db = (snr_db, snr_db)
    try:
        low, high = (float(v) for v in snr_db)
    except (TypeError, ValueError):
        raise ValueError(
            f"snr_db must be a (low, high) pair of dB values or one number, got {snr_db!r}."
        ) from None
    if not (math.isfinite(low) and math.isfinite(high)):
        raise ValueError(f"snr_db must be finite, got {snr_db!r}.")
    if low > high:
        raise ValueError(
            f"snr_db=({low:g}, {high:g}) is reversed: give (low, high), e.g. ({high:g}, {low:g})."
        )
    if low < -30.0 or high > 80.0:
        raise ValueError(f"snr_db must lie in [-30, 80] dB, got {snr_db!r}.")
    sloppy_fraction = float(sloppy_fraction)
    if not 0.0 <= sloppy_fraction <= 1.0:
        raise ValueError(f"sloppy_fraction must be in [0, 1], got {sloppy_fraction!r}.")
    if isinstance(channels, str):
        channels = (channels,)
    channels = tuple(channels)
    if not channels or any(c not in CHANNELS for c in channels) or len(set(channels)) < len(channels):
        raise ValueError(
            f"channels must be distinct names from {CHANNELS}, got {channels!r}."
        )
    if config is None:
        config = RadarConfig()
    if not isinstance(config, RadarConfig):
        raise ValueError(f"config must be a RadarConfig, got {type(config).__name__}.")
    return (num_train, num_test, seed, (low, high), num_train_users, num_test_users,
            sloppy_fraction, channels, config)


def load_data(num_train=defaults.NUM_TRAIN, num_test=defaults.NUM_TEST, seed=0, snr_db=(5.0, 25.0), num_train_users=16,
              num_test_users=8, sloppy_fraction=0.05, channels=("doppler", "angle"),
              config=None, cache=True, return_users=False, verbose=0):
    """Loads the simulated 60 GHz radar gesture set (generated once, then cached).

    The defaults mirror the paper's data: 9 classes, 1,363 training and 1,364 test
    samples, here from 16 training and 8 other test users. See the module docstring
    for the physics and the representation.

    Args:
        num_train: number of training samples (classes balanced to within one).
        num_test: number of test samples.
        seed: non-negative integer; the same arguments and seed give the same arrays.
        snr_db: (low, high) range in dB from which each sample's SNR is drawn (the
            hand's echo in one chirp's range profile), or one number for all.
        num_train_users: number of simulated training users.
        num_test_users: number of simulated test users (never seen in training).
        sloppy_fraction: share of sloppy executions (half-done, skewed, hesitant,
            drifting).
        channels: map names from `CHANNELS`: "doppler" (Doppler-time), "angle"
            (azimuth-time and elevation-time, 32 bins each), "range" (range-time).
        config: a `RadarConfig`; default the BGT60TR13C-like one.
        cache: read and write the cache under `$KERAS_HOME/datasets/keras_egt`.
        return_users: also return each sample's user id (see Returns).
        verbose: 1 shows a progress bar while samples are simulated (not when cached).

    Returns:
        `(x_train, y_train), (x_test, y_test)`: x float32 in [0, 1] of shape
        `(n, num_frames, 64, len(channels))` (default `(n, 64, 64, 2)`), y int32
        class indices in `0..8`. With `return_users=True`,
        `(x_train, y_train, users_train), (x_test, y_test, users_test)`: int32 user
        ids, `0..num_train_users - 1` and `0..num_test_users - 1`; the two splits'
        users are different people even where their ids coincide.

    Example:
    >>> (x_train, y_train), (x_test, y_test) = load_data()
    >>> x_train.shape, CLASS_NAMES[y_train[0]]
    ((1363, 64, 64, 2), ...)
    """
    (num_train, num_test, seed, snr_db, num_train_users, num_test_users, sloppy_fraction,
     channels, config) = _check_args(num_train, num_test, seed, snr_db, num_train_users,
                                     num_test_users, sloppy_fraction, channels, config)
    params = {
        "format_version": FORMAT_VERSION,
        "num_train": num_train,
        "num_test": num_test,
        "seed": seed,
        "snr_db": list(snr_db),
        "num_train_users": num_train_users,
        "num_test_users": num_test_users,
        "sloppy_fraction": sloppy_fraction,
        "channels": list(channels),
        "config": dataclasses.asdict(config),
    }
    key = json.dumps(params, sort_keys=True)
    path = os.path.join(
        cache_dir(), f"radar_gestures-{hashlib.sha256(key.encode()).hexdigest()[:20]}.npz"
    )
    arrays = None
    if cache and os.path.exists(path):
        arrays = _read_cache(path, key)
    if arrays is None:
        common = dict(snr_db=snr_db, sloppy_fraction=sloppy_fraction, channels=channels,
                      config=config, progress=_progress(num_train + num_test, verbose))
        x_train, y_train = _split(seed, "train", num_train, num_train_users, **common)
        x_test, y_test = _split(seed, "test", num_test, num_test_users, **common)
        arrays = {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test}
        if cache:
            _write_cache(path, key, arrays)
    train = (_to_float(arrays["x_train"]), arrays["y_train"])
    test = (_to_float(arrays["x_test"]), arrays["y_test"])
    if return_users:
        # Re-derived from the split's seed (the cache stays as it was).
        train += (_assignment(seed, "train", num_train, num_train_users)[1].astype(np.int32),)
        test += (_assignment(seed, "test", num_test, num_test_users)[1].astype(np.int32),)
    return train, test


def load_calibration_data(num_users=100, samples_per_user=9, seed=0, snr_db=(5.0, 25.0),
                          sloppy_fraction=0.05, channels=("doppler", "angle"), config=None,
                          cache=True, verbose=0):
    """Samples of fresh users, in neither `load_data`'s training nor its test split.

    For calibrating the cascade's thresholds (`egt.calibrate_thresholds(...,
    groups=users)`) on users the model has never seen, as a deployment meets them,
    without touching the test set. Users are drawn like `load_data`'s (same
    population, same `snr_db` and `sloppy_fraction`) from seeds of their own; each
    performs `samples_per_user` gestures, the classes balanced within the user.
    User u's samples do not depend on `num_users`, so more users only add samples.

    Args:
        num_users: number of users.
        samples_per_user: gestures per user.
        seed: non-negative integer, as `load_data`'s (same seed: same population
            parameters, still other people).
        snr_db, sloppy_fraction, channels, config, cache, verbose: as `load_data`.

    Returns:
        `(x, y, users)`: x float32 `(num_users * samples_per_user, frames, 64,
        len(channels))`, y int32 labels, users int32 ids `0..num_users - 1`
        (sample i belongs to user `i // samples_per_user`).

    Example:
    >>> x_cal, y_cal, users = load_calibration_data(num_users=200)
    >>> cal = egt.calibrate_thresholds(model, x_cal, y_cal, 0.01, groups=users)
    """
    num_users = _check_count("num_users", num_users)
    samples_per_user = _check_count("samples_per_user", samples_per_user)
    (_, _, seed, snr_db, _, _, sloppy_fraction, channels, config) = _check_args(
        1, 1, seed, snr_db, 1, 1, sloppy_fraction, channels, config)
    params = {
        "format_version": FORMAT_VERSION, "kind": "calibration", "num_users": num_users,
        "samples_per_user": samples_per_user, "seed": seed, "snr_db": list(snr_db),
        "sloppy_fraction": sloppy_fraction, "channels": list(channels),
        "config": dataclasses.asdict(config),
    }
    key = json.dumps(params, sort_keys=True)
    path = os.path.join(
        cache_dir(), f"radar_calibration-{hashlib.sha256(key.encode()).hexdigest()[:20]}.npz"
    )
    names = ("x", "y", "users")
    arrays = None
    if cache and os.path.exists(path):
        arrays = _read_cache(path, key, names)
    if arrays is None:
        users = np.repeat(np.arange(num_users), samples_per_user)
        labels = np.empty(len(users), np.int64)
        for u in range(num_users):
            rng = np.random.default_rng([seed, 13, _SPLIT_CODES["calibration"], u])
            own = (np.arange(samples_per_user) + rng.integers(NUM_CLASSES)) % NUM_CLASSES
            rng.shuffle(own)
            labels[u * samples_per_user:(u + 1) * samples_per_user] = own
        people = _users(seed, "calibration", num_users)
        x = simulate(labels, [people[u] for u in users], seed=seed, split="calibration",
                     snr_db=snr_db, sloppy_fraction=sloppy_fraction, channels=channels,
                     config=config, progress=_progress(len(labels), verbose))
        arrays = {"x": x, "y": labels.astype(np.int32), "users": users.astype(np.int32)}
        if cache:
            _write_cache(path, key, arrays)
    return _to_float(arrays["x"]), arrays["y"], arrays["users"]
