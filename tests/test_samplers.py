"""The numpy samplers against diffusers 0.42: whole trajectories with one fake model, img2img timestep selection,
schedules, the elementwise contract and the error messages.

diffusers and torch are test dependencies (installed in the dev venv); the engine itself never imports them.
"""
import types

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion_img2img import StableDiffusionImg2ImgPipeline

from rsgen_qgis.core.errors import ModelPackageError, ParameterError
from rsgen_qgis.core.engine.samplers import SAMPLER_LABELS, Schedule, make_sampler

DIFFUSERS = {
    "ddim": lambda c: DDIMScheduler.from_config({**c, "clip_sample": False}),
    "dpmpp_2m": lambda c: DPMSolverMultistepScheduler.from_config(
        {**c, "algorithm_type": "dpmsolver++", "solver_order": 2, "solver_type": "midpoint",
         "lower_order_final": True, "final_sigmas_type": "zero", "use_karras_sigmas": False}),
    "euler": lambda c: EulerDiscreteScheduler.from_config(c),
    "dpmpp_2m_sde": lambda c: DPMSolverMultistepScheduler.from_config(
        {**c, "algorithm_type": "sde-dpmsolver++", "solver_order": 2, "solver_type": "midpoint",
         "lower_order_final": True, "final_sigmas_type": "zero", "use_karras_sigmas": False}),
}
STOCHASTIC = ("dpmpp_2m_sde",)
CONFIGS = {
    "linear-leading": {"num_train_timesteps": 1000, "beta_schedule": "linear", "beta_start": 0.0001,
                       "beta_end": 0.02, "timestep_spacing": "leading", "steps_offset": 1},
    "cosine-trailing": {"num_train_timesteps": 1000, "beta_schedule": "squaredcos_cap_v2",
                        "timestep_spacing": "trailing", "steps_offset": 0},
    "scaled-linspace": {"num_train_timesteps": 1000, "beta_schedule": "scaled_linear", "beta_start": 0.00085,
                        "beta_end": 0.012, "timestep_spacing": "linspace", "steps_offset": 0},
}
STEPS = (1, 2, 10, 20, 25)
# Every intermediate x (and every model input) agrees to 1e-5, relative to the array's largest value where that
# exceeds 1. Absolute 1e-5 cannot hold for large states: Euler's starts at sigma_max (2e4 on the cosine
# schedule), and with this fake model (not a denoiser) epsilon trajectories grow to ~300. Both sides use the
# same float32 schedule, but torch 2.13's float32 sqrt is not correctly rounded (1 ulp off for 177 of the 1000
# linear-schedule alphas_cumprod), so coefficients can differ in the last float32 bit. Observed: <= 7.1e-7.
TOL = 1e-5


def fake_model(x: np.ndarray, t: float) -> np.ndarray:
    """Deterministic, nonlinear in x, depends on t; evaluated in numpy for both sides so that equal inputs give
    bit-equal outputs."""
    return np.tanh(0.5 * x) * np.cos(t / 300) + 0.1 * np.sin(x * t / 1000)


def noise(shape=(2, 3, 5, 4), seed=0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape)


def step_noise(i: int, shape=(2, 3, 5, 4)) -> np.ndarray:
    """The fresh noise of step i for the stochastic samplers (diffusers' variance_noise on their side)."""
    return noise(shape, seed=100 + i)


def diffusers_scheduler(method: str, config: dict, steps: int):
    sch = DIFFUSERS[method](config)
    sch.set_timesteps(steps)
    return sch


def img2img_timesteps(sch, steps: int, strength: float) -> torch.Tensor:
    """diffusers' own StableDiffusionImg2ImgPipeline.get_timesteps (it only touches self.scheduler); it also
    sets the scheduler's begin index."""
    ts, _ = StableDiffusionImg2ImgPipeline.get_timesteps(types.SimpleNamespace(scheduler=sch), steps, strength, "cpu")
    return ts


def run_both(method: str, config: dict, steps: int, strength: float = 1.0, init=None):
    """Run ours (numpy float64) and diffusers (torch float64) side by side; return the worst |dx| and the
    worst |model input difference| over all steps, after checking the timesteps."""
    ours = make_sampler(method, Schedule.from_config(config), steps, strength).with_step_noise(step_noise)
    sch = diffusers_scheduler(method, config, steps)
    extra = (lambda i: {"variance_noise": torch.from_numpy(step_noise(i))}) if method in STOCHASTIC else \
        (lambda i: {})
    eps = noise()
    if strength < 1.0:
        ts = img2img_timesteps(sch, steps, strength)
        x = ours.add_noise(init, eps, ours.start_timestep)
        xt = sch.add_noise(torch.from_numpy(init), torch.from_numpy(eps), ts[:1])
    else:
        ts = sch.timesteps
        x = eps * ours.init_noise_sigma
        xt = torch.from_numpy(eps) * sch.init_noise_sigma
    np.testing.assert_array_equal(ours.timesteps, ts.numpy())
    assert xt.dtype == torch.float64
    worst_x, worst_in = rel_diff(x, xt), 0.0
    for i, t in enumerate(ts):
        xin, xin_t = ours.scale_model_input(x, i), sch.scale_model_input(xt, t)
        worst_in = max(worst_in, rel_diff(xin, xin_t))
        x = ours.step(fake_model(xin, float(ours.timesteps[i])), i, x)
        xt = sch.step(torch.from_numpy(fake_model(xin_t.numpy(), float(t))), t, xt, **extra(i)).prev_sample
        assert x.dtype == np.float64 and xt.dtype == torch.float64
        worst_x = max(worst_x, rel_diff(x, xt))
    return worst_x, worst_in


def rel_diff(ours: np.ndarray, theirs: torch.Tensor) -> float:
    """max |ours - theirs|, relative to the array's scale when that exceeds 1 (see TOL)."""
    t = theirs.numpy()
    return float(np.abs(ours - t).max() / max(1.0, np.abs(t).max()))


@pytest.mark.parametrize("config", list(CONFIGS))
@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("method", list(DIFFUSERS))
def test_trajectory_matches_diffusers(method, prediction, config):
    cfg = {**CONFIGS[config], "prediction_type": prediction}
    for steps in STEPS:
        dx, din = run_both(method, cfg, steps)
        assert dx <= TOL and din <= TOL, (steps, dx, din)


@pytest.mark.parametrize("method", list(DIFFUSERS))
@pytest.mark.parametrize("config,steps,strength", [
    ("cosine-trailing", 20, 0.35), ("cosine-trailing", 25, 0.5), ("linear-leading", 10, 0.75),
    ("scaled-linspace", 20, 0.6)])
def test_img2img_trajectory_matches_diffusers(method, config, steps, strength):
    cfg = {**CONFIGS[config], "prediction_type": "v_prediction"}
    init = np.tanh(noise(seed=1))
    dx, din = run_both(method, cfg, steps, strength, init)
    assert dx <= TOL and din <= TOL, (dx, din)


@pytest.mark.parametrize("method", list(DIFFUSERS))
def test_strength_keeps_diffusers_img2img_timesteps(method):
    for config in CONFIGS.values():
        for steps in (1, 7, 20, 25, 50, 100):
            for strength in (0.05, 0.29, 0.3, 0.35, 0.5, 0.7, 0.99, 1.0):
                sch = diffusers_scheduler(method, config, steps)
                expected = img2img_timesteps(sch, steps, strength).numpy()
                if len(expected) == 0:
                    with pytest.raises(ParameterError, match="Strength"):
                        make_sampler(method, Schedule.from_config(config), steps, strength)
                    continue
                s = make_sampler(method, Schedule.from_config(config), steps, strength)
                np.testing.assert_array_equal(s.timesteps, expected)
                assert s.start_timestep == expected[0]
    # truncation like diffusers, not rounding: 100 * 0.29 = 28.999999999999996 keeps 28, 25 * 0.3 keeps 7
    sched = Schedule.from_config(CONFIGS["cosine-trailing"])
    assert len(make_sampler(method, sched, 100, 0.29).timesteps) == 28
    assert len(make_sampler(method, sched, 25, 0.3).timesteps) == 7


@pytest.mark.parametrize("config", list(CONFIGS))
def test_schedule_matches_diffusers(config):
    ours = Schedule.from_config(CONFIGS[config])
    theirs = DDIMScheduler.from_config(CONFIGS[config]).alphas_cumprod.double().numpy()
    # bit-equal on x86 torch builds; float32 rounding of torch.linspace may differ by an ulp elsewhere
    # numpy vs torch, the same arithmetic by construction (core/engine/samplers.py: the products accumulate in float64,
    # each entry rounded to float32 once): half an ulp (6e-8) apart at most, so 1e-6 (8 ulps) stays tight
    np.testing.assert_allclose(ours.alphas_cumprod, theirs, rtol=1e-6, atol=0)
    assert ours.timestep_spacing == CONFIGS[config]["timestep_spacing"]
    betas = DDIMScheduler.from_config(CONFIGS[config]).betas.numpy()
    from_betas = Schedule.from_config({"trained_betas": betas.tolist(), "beta_schedule": "ignored"})
    np.testing.assert_allclose(from_betas.alphas_cumprod, theirs, rtol=1e-6, atol=0)
    assert Schedule.from_config(ours.to_config()) == ours
    assert hash(Schedule.from_config(ours.to_config())) == hash(ours)


def test_explicit_alphas_cumprod_wins_and_defaults():
    acp = np.linspace(0.999, 0.01, 50)
    s = Schedule.from_config({"alphas_cumprod": acp.tolist(), "beta_schedule": "linear",
                              "num_train_timesteps": 1000, "prediction_type": "v_prediction"})
    np.testing.assert_array_equal(s.alphas_cumprod, acp)
    assert s.num_train_timesteps == 50 and s.prediction_type == "v_prediction"
    assert (s.timestep_spacing, s.steps_offset, s.set_alpha_to_one) == ("leading", 0, True)
    assert make_sampler("ddim", s, 5).timesteps.tolist() == [40, 30, 20, 10, 0]


def test_ddim_set_alpha_to_one_false_matches_diffusers():
    cfg = {**CONFIGS["linear-leading"], "set_alpha_to_one": False, "prediction_type": "epsilon"}
    dx, _ = run_both("ddim", cfg, 10)
    assert dx <= TOL


def test_trailing_spurious_step_dropped():
    """diffusers appends a timestep -1 for 61 trailing steps; we keep the 61 asked for."""
    cfg = CONFIGS["cosine-trailing"]
    for method in DIFFUSERS:
        theirs = diffusers_scheduler(method, cfg, 61).timesteps.numpy()
        ours = make_sampler(method, Schedule.from_config(cfg), 61).timesteps
        assert len(theirs) == 62 and theirs[-1] == -1
        np.testing.assert_array_equal(ours, theirs[:-1])


@pytest.mark.parametrize("method", list(DIFFUSERS))
def test_steps_are_elementwise(method):
    """Stepping a canvas equals stepping its halves with separate samplers: no reduction over the image."""
    sched = Schedule.from_config({**CONFIGS["cosine-trailing"], "prediction_type": "v_prediction"})
    whole, left, right = (make_sampler(method, sched, 6) for _ in range(3))
    whole.with_step_noise(lambda i: step_noise(i, (3, 8, 10)))
    left.with_step_noise(lambda i: step_noise(i, (3, 8, 10))[..., :4])
    right.with_step_noise(lambda i: step_noise(i, (3, 8, 10))[..., 4:])
    x = (noise((3, 8, 10)) * whole.init_noise_sigma).astype(np.float32)
    xl, xr = x[..., :4], x[..., 4:]
    for i, t in enumerate(whole.timesteps):
        x = whole.step(fake_model(whole.scale_model_input(x, i), t).astype(np.float32), i, x)
        xl = left.step(fake_model(left.scale_model_input(xl, i), t).astype(np.float32), i, xl)
        xr = right.step(fake_model(right.scale_model_input(xr, i), t).astype(np.float32), i, xr)
        assert x.dtype == np.float32 and np.isfinite(x).all()
        np.testing.assert_array_equal(x, np.concatenate([xl, xr], axis=-1))


@pytest.mark.parametrize("method", list(DIFFUSERS))
def test_predict_x0_and_add_noise_invert(method):
    """add_noise then predict_x0 with the true prediction target gives x0 back (in each sampler's space)."""
    for pred in ("epsilon", "v_prediction", "sample"):
        sched = Schedule.from_config({**CONFIGS["linear-leading"], "prediction_type": pred})
        s = make_sampler(method, sched, 10)
        x0, eps = np.tanh(noise(seed=2)), noise(seed=3)
        t = int(s.timesteps[3])
        xt = s.add_noise(x0, eps, t)
        a = sched.alphas_cumprod[t]
        target = {"epsilon": eps, "sample": x0, "v_prediction": np.sqrt(a) * eps - np.sqrt(1 - a) * x0}[pred]
        np.testing.assert_allclose(s.predict_x0(target, t, xt), x0, atol=1e-5)


def test_identity_scaling_and_labels():
    sched = Schedule.from_config(CONFIGS["cosine-trailing"])
    x = noise().astype(np.float32)
    for name in ("ddim", "dpmpp_2m"):
        s = make_sampler(name, sched, 5)
        assert s.scale_model_input(x, 0) is x and s.init_noise_sigma == 1.0
    assert list(SAMPLER_LABELS) == ["dpmpp_2m", "ddim", "euler", "dpmpp_2m_sde"]


def test_sde_adds_the_callers_noise_and_needs_it():
    """The SDE sampler draws nothing itself: without bound step noise it refuses with a clear message; with it,
    the same noise gives the same trajectory and other noise another one, ending on the x0 prediction."""
    sched = Schedule.from_config({**CONFIGS["cosine-trailing"], "prediction_type": "v_prediction"})
    x = noise().astype(np.float32)
    with pytest.raises(RuntimeError, match="world-anchored step noise"):
        make_sampler("dpmpp_2m_sde", sched, 5).step(fake_model(x, 999), 0, x)

    def run(offset):
        s = make_sampler("dpmpp_2m_sde", sched, 8).with_step_noise(lambda i: step_noise(i + offset))
        y = x.copy()
        for i, t in enumerate(s.timesteps):
            y = s.step(fake_model(y, float(t)).astype(np.float32), i, y)
        return y
    a, b, c = run(0), run(0), run(50)
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).max() > 1e-2
    ode = make_sampler("dpmpp_2m", sched, 8)
    y = x.copy()
    for i, t in enumerate(ode.timesteps):
        y = ode.step(fake_model(y, float(t)).astype(np.float32), i, y)
    assert np.abs(a - y).max() > 1e-2  # the SDE update is not the ODE's


def test_errors():
    sched = Schedule.from_config(CONFIGS["cosine-trailing"])
    with pytest.raises(ParameterError, match="dpmpp_2m, ddim, euler, dpmpp_2m_sde"):
        make_sampler("heun", sched, 10)
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ParameterError, match="steps"):
            make_sampler("ddim", sched, bad)
    with pytest.raises(ParameterError, match="1000"):
        make_sampler("euler", sched, 1001)
    for bad in (0.0, 1.5, float("nan")):
        with pytest.raises(ParameterError, match="Strength"):
            make_sampler("ddim", sched, 10, bad)
    with pytest.raises(ParameterError, match="Strength"):
        make_sampler("ddim", sched, 10, 0.05)  # keeps int(0.5) = 0 steps
    with pytest.raises(ModelPackageError, match="beta_schedule"):
        Schedule.from_config({"beta_schedule": "sigmoid"})
    with pytest.raises(ModelPackageError, match="predicts"):
        Schedule.from_config({"prediction_type": "flow"})
    with pytest.raises(ModelPackageError, match="decreasing"):
        Schedule.from_config({"alphas_cumprod": [0.5, 0.9]})
