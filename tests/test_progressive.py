"""Progressive distillation (training/progressive.py): the student's grid is the run time's DDIM grid at half the
steps, the target makes one student step land where two teacher steps land. The whole chain (a teacher package, a few
steps, export) is in test_latent_training.py. No fetched data."""
import json
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from rsgen_qgis.training import progressive as pd  # noqa: E402
from rsgen_qgis.training.train import alphas_cumprod  # noqa: E402


@pytest.mark.parametrize("n", [20, 10, 8])
def test_the_students_grid_is_the_run_times_ddim_grid_at_half_the_steps(n):
    from rsgen_qgis.core.engine.samplers import Schedule, make_sampler

    schedule = Schedule.from_config({"num_train_timesteps": 1000, "beta_schedule": "squaredcos_cap_v2",
                                       "prediction_type": "v_prediction", "timestep_spacing": "trailing"})
    student = make_sampler("ddim", schedule, n // 2)
    teacher = list(make_sampler("ddim", schedule, n).timesteps)
    assert list(pd.student_timesteps(n)) == list(student.timesteps)
    assert all(t in teacher and t - 1000 // n in teacher + [-1] for t in pd.student_timesteps(n))
    with pytest.raises(ValueError):
        pd.student_timesteps(7)


def test_one_student_step_lands_where_two_teacher_steps_land():
    """For any teacher (here a fixed nonlinear function of z and t), a DDIM step with the target v from z_t gives the
    teacher's two-step result, at the last step (the clean image) too; for a point-mass data distribution, whose
    exact v makes every DDIM step exact, the target is that v itself."""
    ac = alphas_cumprod().double()
    g = torch.Generator().manual_seed(0)
    z = torch.randn(4, 3, 5, 5, generator=g, dtype=torch.float64)
    t = torch.tensor([999, 499, 199, 99])
    w = torch.randn(3, 3, generator=g, dtype=torch.float64)

    def teacher(zz, tt):
        return torch.tanh(torch.einsum("oc,bchw->bohw", w, zz)) * (1 + tt.double().view(-1, 1, 1, 1) / 1000)
    v = pd.two_step_target(teacher, z, ac, t, 50)
    one = pd.ddim_step(v, z, ac, t, t - 100)
    z1 = pd.ddim_step(teacher(z, t), z, ac, t, t - 50)
    two = pd.ddim_step(teacher(z1, t - 50), z1, ac, t - 50, t - 100)
    assert torch.allclose(one, two, atol=1e-9, rtol=0)
    assert not torch.allclose(pd.ddim_step(teacher(z, t), z, ac, t, t - 100), two, atol=1e-3)  # the gap is real

    x = torch.randn(1, 3, 5, 5, generator=g, dtype=torch.float64)

    def exact(zz, tt):
        a, s = pd._coef(ac, tt)
        return (a * zz - x) / s
    assert torch.allclose(pd.two_step_target(exact, z, ac, t, 50), exact(z, t), atol=1e-8, rtol=0)
