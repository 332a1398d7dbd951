"""Diffusion samplers in plain numpy (DDIM, DPM-Solver++ 2M and its SDE variant, Euler), step for step equal to
diffusers 0.42.

Why numpy: the run-time path must not import torch, yet the models are trained and evaluated with diffusers'
schedulers, so a sampler that drifts from them silently degrades every image. tests/test_samplers.py runs
whole trajectories here and in diffusers with the same fake model and asserts they agree to 1e-5.

How they stay equal: the schedule holds diffusers' float32 values (its betas and alphas_cumprod are float32
tensors, reproduced bit for bit on x86); every per-step coefficient (sqrt of alphas_cumprod, sigmas, lambdas,
step sizes) is computed in float32 with diffusers' operations, and the images are updated in float64 in its
operation order. Coefficients then differ at most in the last float32 bit (torch's float32 sqrt is not always
correctly rounded); measured trajectories agree to < 1e-6 relative. Array results are float32 for float32
inputs (the run-time path) and float64 when an input is float64 (diffusers returns the model output's dtype).

Elementwise contract: `step`, `predict_x0`, `add_noise` and `scale_model_input` apply per-step scalar
coefficients pixel by pixel and never reduce over the image (no dynamic thresholding, no clipping by
percentiles). The large-area path relies on this: it fuses the model outputs of overlapping windows into one
canvas and steps the whole canvas, which must equal stepping each pixel on its own. DPM-Solver++ 2M keeps the
previous x0 prediction (one array the size of x) between calls, so call `step` once per index, in order.
An x0_hook given to `step` (guide consistency, core.engine.guideproj) is the caller's and may reduce over the image;
the large-area path passes one per block, whose canvas it steps as a whole.

Stochastic samplers (DPM-Solver++ 2M SDE) add fresh noise at every step. They never draw it themselves: the
caller binds a function of the step index (`with_step_noise`) that returns world-anchored noise for the canvas
(core.engine.tiling.world_noise with stream = index + 1), so the same place and seed still give the same pixels and
overlapping requests and blocks agree.

Deliberate differences from diffusers, both at its edges:
- 'trailing' spacing: for 62 step counts in 1..1000 at 1000 training steps (61, 103, 121, ...), diffusers'
  np.arange overshoots and appends a timestep -1 (one step more than asked, the model told t=-1; DDIM then reads
  alphas_cumprod[-1]). Here that spurious last entry is dropped; every other timestep is identical.
- strength: kept steps = min(int(steps * strength), steps), diffusers' truncation (so 100 * 0.29 keeps 28);
  keeping none raises ParameterError where diffusers would run an empty loop.
"""
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Tuple

import numpy as np

from ..errors import ModelPackageError, ParameterError

SAMPLER_LABELS: Dict[str, str] = {"dpmpp_2m": "DPM-Solver++ 2M", "ddim": "DDIM", "euler": "Euler",
                                  "dpmpp_2m_sde": "DPM-Solver++ 2M SDE"}
# What each is for, for users (the dock's tooltips, Processing's parameter help).
SAMPLER_HELP: Dict[str, str] = {
    "dpmpp_2m_sde": "Default. Adds fresh noise at every step (drawn from the seed and the place, so results repeat): "
                    "finer texture; with rsgen-base, scenes are recognised more often.",
    "dpmpp_2m": "Deterministic (ODE) solver: smoother images; the default before rsgen-base 0.4.2.",
    "ddim": "Deterministic DDIM; needs more steps than DPM-Solver++ for the same quality.",
    "euler": "Euler (no noise added); needs more steps than DPM-Solver++ for the same quality.",
}
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
TIMESTEP_SPACINGS = ("leading", "trailing", "linspace")
_F32 = np.float32
X0Hook = Optional[Callable[[np.ndarray], np.ndarray]]
StepNoise = Callable[[int], np.ndarray]


def _linspace32(start: float, end: float, n: int) -> np.ndarray:
    """torch.linspace(start, end, n, dtype=float32) as x86 builds compute it (fused multiply-add, symmetric
    halves). np.linspace rounds differently in about a third of the entries, enough to move Euler's sigma."""
    a, b = np.float64(_F32(start)), np.float64(_F32(end))
    step = np.float64(_F32((b - a) / max(n - 1, 1)))
    i = np.arange(n)
    return np.where(i < n // 2, a + step * i, b - step * (n - 1 - i)).astype(_F32)


def _cosine_betas(n: int, max_beta: float = 0.999) -> np.ndarray:
    """diffusers' betas_for_alpha_bar('cosine'): computed in float64, stored as float32."""
    f = lambda t: np.cos((t + 0.008) / 1.008 * np.pi / 2) ** 2  # noqa: E731
    t = np.arange(n, dtype=np.float64)
    return np.minimum(1 - f((t + 1) / n) / f(t / n), max_beta).astype(_F32)


@dataclass(frozen=True, eq=False)
class Schedule:
    """The noise schedule a model was trained with: all a sampler needs, as plain data from the manifest.

    alphas_cumprod is float64 holding diffusers' float32 values (or an explicit list from the manifest).
    set_alpha_to_one only affects DDIM's last step (diffusers' DDIMScheduler option; Stable Diffusion's configs
    set it false, which makes the last step land on alphas_cumprod[0] instead of the clean image)."""
    alphas_cumprod: np.ndarray
    prediction_type: str
    timestep_spacing: str
    steps_offset: int = 0
    set_alpha_to_one: bool = True

    def __post_init__(self) -> None:
        a = np.array(self.alphas_cumprod, dtype=np.float64).reshape(-1)
        if a.size < 2 or not np.all(np.isfinite(a)) or np.any(a <= 0) or np.any(a > 1) or np.any(np.diff(a) > 0):
            raise ModelPackageError("The model's noise schedule is invalid: alphas_cumprod must be a decreasing "
                                    "list of at least 2 values in (0, 1].")
        if self.prediction_type not in PREDICTION_TYPES:
            raise ModelPackageError(f"The model predicts {self.prediction_type!r}, which this plugin does not "
                                    f"support; expected one of: {', '.join(PREDICTION_TYPES)}.")
        if self.timestep_spacing not in TIMESTEP_SPACINGS:
            raise ModelPackageError(f"Unknown timestep spacing {self.timestep_spacing!r} in the model's schedule; "
                                    f"expected one of: {', '.join(TIMESTEP_SPACINGS)}.")
        a.setflags(write=False)
        object.__setattr__(self, "alphas_cumprod", a)
        object.__setattr__(self, "steps_offset", int(self.steps_offset))
        object.__setattr__(self, "set_alpha_to_one", bool(self.set_alpha_to_one))

    @property
    def num_train_timesteps(self) -> int:
        return int(self.alphas_cumprod.size)

    @classmethod
    def from_config(cls, d: dict) -> "Schedule":
        """From a diffusers-style scheduler config (the manifest's "scheduler"); missing keys take diffusers'
        DDPM/DDIM defaults. An explicit 'alphas_cumprod' (or diffusers' 'trained_betas') wins over beta_schedule."""
        for key in ("rescale_betas_zero_snr", "thresholding"):
            if d.get(key):
                raise ModelPackageError(f"The model's schedule uses {key}, which this plugin does not support.")
        n = int(d.get("num_train_timesteps", 1000))
        kind = d.get("beta_schedule", "linear")
        if d.get("alphas_cumprod") is not None:
            acp = np.asarray(d["alphas_cumprod"], dtype=np.float64)
        else:
            if d.get("trained_betas") is not None:
                betas = np.asarray(d["trained_betas"], dtype=_F32)
            elif kind == "linear":
                betas = _linspace32(d.get("beta_start", 0.0001), d.get("beta_end", 0.02), n)
            elif kind == "scaled_linear":
                betas = _linspace32(d.get("beta_start", 0.0001) ** 0.5, d.get("beta_end", 0.02) ** 0.5, n) ** 2
            elif kind == "squaredcos_cap_v2":
                betas = _cosine_betas(n)
            else:
                raise ModelPackageError(f"Unknown beta_schedule {kind!r} in the model's schedule; expected linear, "
                                        "scaled_linear or squaredcos_cap_v2.")
            # torch.cumprod on CPU accumulates float32 in float64 and rounds each entry to float32
            acp = np.cumprod((_F32(1) - betas).astype(np.float64)).astype(_F32).astype(np.float64)
        return cls(acp, d.get("prediction_type", "epsilon"), d.get("timestep_spacing", "leading"),
                   int(d.get("steps_offset", 0)), bool(d.get("set_alpha_to_one", True)))

    def to_config(self) -> dict:
        """A JSON-ready dict that from_config turns back into an equal Schedule."""
        return {"num_train_timesteps": self.num_train_timesteps, "alphas_cumprod": self.alphas_cumprod.tolist(),
                "prediction_type": self.prediction_type, "timestep_spacing": self.timestep_spacing,
                "steps_offset": self.steps_offset, "set_alpha_to_one": self.set_alpha_to_one}

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Schedule) and self.to_config() == other.to_config()

    def __hash__(self) -> int:
        return hash((self.alphas_cumprod.tobytes(), self.prediction_type, self.timestep_spacing, self.steps_offset,
                     self.set_alpha_to_one))


def _trailing(n_train: int, steps: int) -> np.ndarray:
    """diffusers' 'trailing' timesteps, without the spurious -1 its float arange appends for some step counts."""
    return np.round(np.arange(n_train, 0, -n_train / steps))[:steps].astype(np.int64) - 1


def _out(*arrays: np.ndarray) -> type:
    """float64 when any input is float64 (tests), else float32 (run time)."""
    return np.float64 if any(np.asarray(a).dtype == np.float64 for a in arrays) else _F32


class Sampler:
    """Common part: timestep selection (incl. img2img truncation), the float32 schedule, the public API."""
    name = ""

    def __init__(self, schedule: Schedule, steps: int, strength: float) -> None:
        self.schedule = schedule
        self.num_inference_steps = steps
        self._acp32 = schedule.alphas_cumprod.astype(_F32)
        self._sigma_table = np.sqrt((_F32(1) - self._acp32) / self._acp32)  # float32, as diffusers computes it
        full = self._full_timesteps(schedule, steps)
        if len(np.unique(full)) != len(full) or full.min() < 0 or full.max() > schedule.num_train_timesteps - 1:
            raise ParameterError(f"{steps} steps are too many for this model's noise schedule with the "
                                 f"{self.name} sampler; use fewer steps.")
        keep = min(int(steps * strength), steps)  # diffusers' get_timesteps: truncation, not rounding
        if keep < 1:
            raise ParameterError(f"Strength {strength} with {steps} steps leaves no denoising step; "
                                 "raise the strength or the number of steps.")
        self._full, self._begin = full, steps - keep
        self.timesteps: np.ndarray = full[self._begin:].copy()
        self.start_timestep = self.timesteps[0]
        self.init_noise_sigma: float = 1.0
        self._step_noise: Optional[StepNoise] = None

    def with_step_noise(self, fn: StepNoise) -> "Sampler":
        """Bind the noise a stochastic sampler adds at step index i: fn(i) -> an array shaped like the state
        (standard normal, world-anchored by the caller). Deterministic samplers never call it."""
        self._step_noise = fn
        return self

    def _noise(self, i: int, shape) -> np.ndarray:
        if self._step_noise is None:
            raise RuntimeError(f"The {self.name} sampler adds noise at every step and needs the caller's "
                               "world-anchored step noise (with_step_noise).")  # a caller's bug, not the user's
        z = np.asarray(self._step_noise(i))
        if z.shape != tuple(shape):
            raise ValueError(f"step noise {z.shape} does not match the state {tuple(shape)}")
        return z

    def _full_timesteps(self, s: Schedule, n: int) -> np.ndarray:
        """DDIM's (and Euler's) set_timesteps, as integers."""
        T = s.num_train_timesteps
        if s.timestep_spacing == "linspace":
            return np.linspace(0, T - 1, n).round()[::-1].astype(np.int64)
        if s.timestep_spacing == "leading":
            return (np.arange(0, n) * (T // n)).round()[::-1].astype(np.int64) + s.steps_offset
        return _trailing(T, n)

    def _sigma32(self, t: float) -> np.float32:
        """Karras sigma at (possibly fractional) timestep t, interpolated like diffusers' set_timesteps."""
        return _F32(np.interp(t, np.arange(self._sigma_table.size), self._sigma_table))

    def scale_model_input(self, x: np.ndarray, i: int) -> np.ndarray:
        """What the network sees at step i; the identity except for Euler."""
        return x

    def predict_x0(self, model_output: np.ndarray, t: float, x: np.ndarray) -> np.ndarray:
        """The clean-image estimate implied by the model output at timestep t for the state x (in this
        sampler's space), e.g. to fuse windows or preview in image space."""
        raise NotImplementedError

    def add_noise(self, x0: np.ndarray, noise: np.ndarray, t: float) -> np.ndarray:
        """x0 noised to timestep t in this sampler's space; img2img starts from add_noise(.., start_timestep)."""
        raise NotImplementedError

    def step(self, model_output: np.ndarray, i: int, x: np.ndarray, x0_hook: X0Hook = None) -> np.ndarray:
        """The state after the i-th entry of self.timesteps, given the model's output for
        scale_model_input(x, i) at that timestep. x0_hook, when given, replaces the step's clean-image estimate
        (e.g. core.engine.guideproj's guide consistency); the step then moves towards the replaced estimate, with the
        noise direction implied by it and x (x0-consistent, as DPM-Solver++'s data prediction is anyway)."""
        raise NotImplementedError


class DDIMSampler(Sampler):
    """DDIMScheduler with eta=0 and clip_sample=False; set_alpha_to_one from the schedule (diffusers' default
    True: the last step lands on the clean image)."""
    name = "ddim"

    def _coefs(self, t: int) -> Tuple[np.float32, np.float32]:
        a = self._acp32[int(t)]
        return np.sqrt(a), np.sqrt(_F32(1) - a)

    def _x0_eps(self, mo: np.ndarray, t: int, x: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        sa, sb = (float(c) for c in self._coefs(t))
        p = self.schedule.prediction_type
        if p == "epsilon":
            return (x - sb * mo) / sa, mo
        if p == "sample":
            return mo, (x - sa * mo) / sb
        return sa * x - sb * mo, sa * mo + sb * x

    def predict_x0(self, model_output: np.ndarray, t: float, x: np.ndarray) -> np.ndarray:
        dt = _out(model_output, x)
        return self._x0_eps(np.asarray(model_output, np.float64), int(t), np.asarray(x, np.float64))[0].astype(dt)

    def add_noise(self, x0: np.ndarray, noise: np.ndarray, t: float) -> np.ndarray:
        a = self.schedule.alphas_cumprod[int(t)]  # diffusers casts the schedule to the sample's dtype first
        return (np.sqrt(a) * np.asarray(x0, np.float64) + np.sqrt(1 - a) * np.asarray(noise, np.float64)).astype(
            _out(x0, noise))

    def step(self, model_output: np.ndarray, i: int, x: np.ndarray, x0_hook: X0Hook = None) -> np.ndarray:
        t = int(self.timesteps[i])
        # diffusers steps back by T // n whatever the spacing (with 'trailing' or 'linspace' this need not be the
        # next scheduled timestep)
        prev = t - self.schedule.num_train_timesteps // self.num_inference_steps
        final = _F32(1.0) if self.schedule.set_alpha_to_one else self._acp32[0]
        ap = self._acp32[prev] if prev >= 0 else final
        x0, eps = self._x0_eps(np.asarray(model_output, np.float64), t, np.asarray(x, np.float64))
        if x0_hook is not None:
            x0 = np.asarray(x0_hook(x0), np.float64)
            sa, sb = (float(c) for c in self._coefs(t))
            eps = (np.asarray(x, np.float64) - sa * x0) / sb
        out = float(np.sqrt(ap)) * x0 + float(np.sqrt(_F32(1) - ap - _F32(0))) * eps
        return out.astype(_out(model_output, x))


class DPMSolverPP2MSampler(Sampler):
    """DPMSolverMultistepScheduler(algorithm_type='dpmsolver++', solver_order=2, solver_type='midpoint',
    lower_order_final=True, final_sigmas_type='zero', use_karras_sigmas=False): first order on the first step
    (also after img2img truncation) and on the last (sigma 0, so it returns the x0 prediction), second order
    between."""
    name = "dpmpp_2m"

    def __init__(self, schedule: Schedule, steps: int, strength: float) -> None:
        super().__init__(schedule, steps, strength)
        sig = np.array([self._sigma32(t) for t in self._full] + [_F32(0)], dtype=_F32)
        self._alpha = _F32(1) / np.sqrt(sig * sig + _F32(1))
        self._sig = sig * self._alpha
        with np.errstate(divide="ignore"):  # log(0) at the final sigma: lambda = +inf, as in diffusers
            self._lam = (np.log(self._alpha.astype(np.float64)).astype(_F32)
                         - np.log(self._sig.astype(np.float64)).astype(_F32))
        self._prev_x0: Optional[np.ndarray] = None
        self._prev_i = -1

    def _full_timesteps(self, s: Schedule, n: int) -> np.ndarray:
        """DPM-Solver's own spacing: n+1 points with the last (t=0) dropped, unlike DDIM's."""
        T = s.num_train_timesteps  # lambda_min_clipped = -inf: no clipping of the last timestep
        if s.timestep_spacing == "linspace":
            return np.linspace(0, T - 1, n + 1).round()[::-1][:-1].astype(np.int64)
        if s.timestep_spacing == "leading":
            return (np.arange(0, n + 1) * (T // (n + 1))).round()[::-1][:-1].astype(np.int64) + s.steps_offset
        return _trailing(T, n)

    def _convert(self, mo: np.ndarray, alpha: np.float32, sig: np.float32, x: np.ndarray) -> np.ndarray:
        p = self.schedule.prediction_type
        if p == "epsilon":
            return (x - float(sig) * mo) / float(alpha)
        if p == "sample":
            return mo
        return float(alpha) * x - float(sig) * mo

    def predict_x0(self, model_output: np.ndarray, t: float, x: np.ndarray) -> np.ndarray:
        s = self._sigma32(t)
        alpha = _F32(1) / np.sqrt(s * s + _F32(1))
        x0 = self._convert(np.asarray(model_output, np.float64), alpha, s * alpha, np.asarray(x, np.float64))
        return x0.astype(_out(model_output, x))

    def add_noise(self, x0: np.ndarray, noise: np.ndarray, t: float) -> np.ndarray:
        s = float(self._sigma32(t))
        alpha = 1 / (s ** 2 + 1) ** 0.5
        return (alpha * np.asarray(x0, np.float64) + (s * alpha) * np.asarray(noise, np.float64)).astype(
            _out(x0, noise))

    def _data_predictions(self, model_output: np.ndarray, i: int, x: np.ndarray, x0_hook: X0Hook):
        """(k, m0, m1): the schedule index of step i, this step's x0 prediction (after the hook) and the previous
        step's (None on the first step, also after img2img truncation), which the next step will see."""
        k = self._begin + i
        m0 = self._convert(np.asarray(model_output, np.float64), self._alpha[k], self._sig[k],
                           np.asarray(x, np.float64))
        if x0_hook is not None:
            m0 = np.asarray(x0_hook(m0), np.float64)
        m1 = self._prev_x0 if (i > 0 and self._prev_i == i - 1) else None
        self._prev_x0, self._prev_i = m0, i
        return k, m0, m1

    def step(self, model_output: np.ndarray, i: int, x: np.ndarray, x0_hook: X0Hook = None) -> np.ndarray:
        k, m0, m1 = self._data_predictions(model_output, i, x, x0_hook)
        last = len(self._full) - 1
        lam, h = self._lam, self._lam[k + 1] - self._lam[k]
        a = self._sig[k + 1] / self._sig[k]
        b = self._alpha[k + 1] * (np.exp(-h.astype(np.float64)).astype(_F32) - _F32(1))
        # diffusers casts the sample to float32 inside step; the run-time x is float32 anyway
        out = (a * np.asarray(x, _F32)).astype(np.float64) - float(b) * m0
        if m1 is not None and k < last:
            r0 = (lam[k] - lam[k - 1]) / h
            out = out - float(_F32(0.5) * b) * (float(_F32(1) / r0) * (m0 - m1))
        return out.astype(_out(model_output, x))


class DPMSolverPP2MSDESampler(DPMSolverPP2MSampler):
    """DPMSolverMultistepScheduler(algorithm_type='sde-dpmsolver++', solver_order=2, solver_type='midpoint',
    lower_order_final=True, final_sigmas_type='zero'): DPM-Solver++ 2M with its stochastic (SDE) update, which
    re-injects noise every step (as much as the step removes beyond the ODE's share). Same timesteps and
    first/second-order choice as the ODE sampler; the last step (sigma 0) returns the x0 prediction. The noise of
    step i is the caller's (with_step_noise), standing for diffusers' variance_noise."""
    name = "dpmpp_2m_sde"

    def step(self, model_output: np.ndarray, i: int, x: np.ndarray, x0_hook: X0Hook = None) -> np.ndarray:
        k, m0, m1 = self._data_predictions(model_output, i, x, x0_hook)
        last = len(self._full) - 1
        z = self._noise(i, np.shape(x))
        lam, h = self._lam, self._lam[k + 1] - self._lam[k]
        e1 = np.exp(-h.astype(np.float64)).astype(_F32)
        e2 = np.exp((_F32(-2.0) * h).astype(np.float64)).astype(_F32)
        a = self._sig[k + 1] / self._sig[k] * e1
        b = self._alpha[k + 1] * (_F32(1) - e2)
        c = self._sig[k + 1] * np.sqrt(_F32(1) - e2)
        # diffusers casts the sample and the noise to float32 inside step; the run-time x is float32 anyway
        out = (a * np.asarray(x, _F32)).astype(np.float64) + float(b) * m0
        if m1 is not None and k < last:
            r0 = (lam[k] - lam[k - 1]) / h
            out = out + float(_F32(0.5) * b) * (float(_F32(1) / r0) * (m0 - m1))
        out = out + float(c) * np.asarray(z, _F32).astype(np.float64)
        return out.astype(_out(model_output, x))


class EulerSampler(Sampler):
    """EulerDiscreteScheduler (no churn, linear interpolation, final sigma 0). Its state lives in the
    'sigma' space: x = x0 + sigma * noise, so the network needs scale_model_input's 1/sqrt(sigma^2 + 1) and the
    initial noise is scaled by init_noise_sigma (sigma_max, or sqrt(sigma_max^2 + 1) with 'leading' spacing)."""
    name = "euler"

    def __init__(self, schedule: Schedule, steps: int, strength: float) -> None:
        super().__init__(schedule, steps, strength)
        self._s = np.array([self._sigma32(t) for t in self._full] + [_F32(0)], dtype=_F32)
        m = self._s.max()
        self.init_noise_sigma = float(m if schedule.timestep_spacing != "leading" else np.sqrt(m * m + _F32(1)))

    def _full_timesteps(self, s: Schedule, n: int) -> np.ndarray:
        """Euler keeps diffusers' float 'linspace' timesteps (fractional); the other spacings are integers."""
        if s.timestep_spacing == "linspace":
            return np.linspace(0, s.num_train_timesteps - 1, n, dtype=_F32)[::-1].astype(np.float64)
        return super()._full_timesteps(s, n)

    def _x0(self, mo: np.ndarray, s: np.float32, x: np.ndarray) -> np.ndarray:
        p = self.schedule.prediction_type
        if p == "epsilon":
            return x - float(s) * mo
        if p == "sample":
            return mo
        return mo * float(-s / np.sqrt(s * s + _F32(1))) + x / float(s * s + _F32(1))

    def scale_model_input(self, x: np.ndarray, i: int) -> np.ndarray:
        s = self._s[self._begin + i]
        return (np.asarray(x, np.float64) / float(np.sqrt(s * s + _F32(1)))).astype(_out(x))

    def predict_x0(self, model_output: np.ndarray, t: float, x: np.ndarray) -> np.ndarray:
        x0 = self._x0(np.asarray(model_output, np.float64), self._sigma32(t), np.asarray(x, np.float64))
        return x0.astype(_out(model_output, x))

    def add_noise(self, x0: np.ndarray, noise: np.ndarray, t: float) -> np.ndarray:
        return (np.asarray(x0, np.float64) + np.asarray(noise, np.float64) * float(self._sigma32(t))).astype(
            _out(x0, noise))

    def step(self, model_output: np.ndarray, i: int, x: np.ndarray, x0_hook: X0Hook = None) -> np.ndarray:
        k = self._begin + i
        s = self._s[k]
        x64 = np.asarray(x, np.float64)
        x0 = self._x0(np.asarray(model_output, np.float64), s, x64)
        if x0_hook is not None:
            x0 = np.asarray(x0_hook(x0), np.float64)
        out = x64 + ((x64 - x0) / float(s)) * float(self._s[k + 1] - s)
        return out.astype(_out(model_output, x))


_SAMPLERS = {"dpmpp_2m": DPMSolverPP2MSampler, "ddim": DDIMSampler, "euler": EulerSampler,
             "dpmpp_2m_sde": DPMSolverPP2MSDESampler}


def make_sampler(name: str, schedule: Schedule, steps: int, strength: float = 1.0) -> Sampler:
    """The sampler `name` for `steps` steps. strength < 1 (variation / img2img) keeps only the last
    int(steps * strength) timesteps, as diffusers' img2img get_timesteps does; noise the init image with
    add_noise(x0, noise, sampler.start_timestep) and start the loop at index 0 of sampler.timesteps."""
    if name not in _SAMPLERS:
        raise ParameterError(f"Unknown sampler {name!r}; choose one of: {', '.join(_SAMPLERS)}.")
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
        raise ParameterError(f"The number of steps must be a whole number of at least 1 (got {steps!r}).")
    if steps > schedule.num_train_timesteps:
        raise ParameterError(f"At most {schedule.num_train_timesteps} steps are possible with this model "
                             f"(got {steps}).")
    if not 0.0 < strength <= 1.0:
        raise ParameterError(f"Strength must be in (0, 1] (got {strength!r}).")
    return _SAMPLERS[name](schedule, int(steps), float(strength))
