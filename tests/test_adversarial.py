"""training/adversarial.py: the latent critic, the x0 a v prediction implies, the adaptive weight, and one
denoiser step's term (critic first alone, then the denoiser's term moving the denoiser only)."""
import pytest

torch = pytest.importorskip("torch")


def _critic(c=4, s=3, d=5, width=8, seed=0):
    from rsgen_qgis.training.adversarial import LatentCritic

    torch.manual_seed(seed)
    return LatentCritic(c, s, d, width)


def test_critic_gives_patch_logits_at_a_quarter_of_any_latent_size_and_reads_the_condition():
    crit = _critic()
    g = torch.Generator().manual_seed(1)
    for size in (16, 32, 18):
        x, sp = torch.randn(2, 4, size, size, generator=g), torch.randn(2, 3, size, size, generator=g)
        out = crit(x, sp, torch.randn(2, 5, generator=g))
        assert out.shape == (2, size // 4, size // 4)
    x, sp = torch.randn(1, 4, 16, 16, generator=g), torch.zeros(1, 3, 16, 16)
    a, b = crit(x, sp, torch.zeros(1, 5)), crit(x, sp, torch.ones(1, 5))
    assert (a - b).abs().max() > 1e-4  # the projection of the condition vector moves the score


def test_x0_from_v_recovers_x0():
    from rsgen_qgis.training.adversarial import x0_from_v
    from rsgen_qgis.training.train import alphas_cumprod

    g = torch.Generator().manual_seed(2)
    x0, noise = torch.randn(3, 4, 8, 8, generator=g), torch.randn(3, 4, 8, 8, generator=g)
    at = alphas_cumprod()[torch.tensor([5, 400, 990])].view(-1, 1, 1, 1)
    xt = at.sqrt() * x0 + (1 - at).sqrt() * noise
    v = at.sqrt() * noise - (1 - at).sqrt() * x0
    # a x0 + (1 - a) x0 = x0 in exact arithmetic; float32 rounding of values of size ~4 is below 1e-5
    assert torch.allclose(x0_from_v(xt, v, at), x0, atol=1e-5)


def test_adaptive_weight_is_base_times_the_ratio_of_gradient_norms_at_the_last_layer():
    from rsgen_qgis.training.adversarial import adaptive_weight

    w = torch.tensor([1.0, 2.0], requires_grad=True)
    rec = (3 * w).sum()          # gradient (3, 3), norm 3 sqrt 2
    adv = (w ** 2).sum()         # gradient (2, 4), norm sqrt 20
    lam = adaptive_weight(rec, adv, w, base=0.5)
    assert not lam.requires_grad
    assert float(lam) == pytest.approx(0.5 * (18 ** 0.5) / (20 ** 0.5), rel=1e-5)
    assert float(adaptive_weight(rec, 1e-9 * adv, w, base=0.5, cap=7.0)) == 7.0


def test_the_critic_learns_to_tell_structured_latents_from_blurred_ones():
    from rsgen_qgis.training.adversarial import critic_loss

    crit = _critic(width=8, seed=3)
    opt = torch.optim.Adam(crit.parameters(), lr=1e-3, betas=(0.0, 0.99))
    g = torch.Generator().manual_seed(4)
    sp, cd = torch.zeros(8, 3, 16, 16), torch.zeros(8, 5)
    real_eval = torch.sign(torch.randn(8, 4, 16, 16, generator=g))  # sharp: every cell +-1
    fake_eval = torch.nn.functional.avg_pool2d(real_eval, 3, 1, 1)  # the same, blurred
    with torch.no_grad():
        before = float(crit(real_eval, sp, cd).mean() - crit(fake_eval, sp, cd).mean())
    for _ in range(60):
        real = torch.sign(torch.randn(8, 4, 16, 16, generator=g))
        loss = critic_loss(crit, real, torch.nn.functional.avg_pool2d(real, 3, 1, 1), sp, cd)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        after = float(crit(real_eval, sp, cd).mean() - crit(fake_eval, sp, cd).mean())
    print("margin before/after", before, after)
    assert after > 1.0 and after > before + 0.5  # unseen latents: sharp scored above blurred by a hinge margin


def test_denoiser_term_trains_the_critic_alone_in_its_warm_up_then_moves_the_denoiser_only():
    from rsgen_qgis.training.adversarial import Adversary
    from rsgen_qgis.training.train import alphas_cumprod

    torch.manual_seed(5)
    adv = Adversary(4, 3, 5, weight=0.5, t_max=500, lr=1e-3, warmup=1, width=8)
    net = torch.nn.Conv2d(4, 4, 3, padding=1)  # stands for the denoiser; its weight is "the last layer"
    g = torch.Generator().manual_seed(6)
    x0, noise = torch.randn(4, 4, 16, 16, generator=g), torch.randn(4, 4, 16, 16, generator=g)
    t = torch.tensor([10, 300, 700, 900])
    at = alphas_cumprod()[t].view(-1, 1, 1, 1)
    xt = at.sqrt() * x0 + (1 - at).sqrt() * noise
    sp, cd = torch.zeros(4, 3, 16, 16), torch.randn(4, 5, generator=g)

    def step():
        pred = net(xt)
        rec = ((pred - (at.sqrt() * noise - (1 - at).sqrt() * x0)) ** 2).mean()
        return rec, adv.denoiser_term(rec, pred, xt, x0, t, at, sp, cd, net.weight)

    w0 = [p.detach().clone() for p in adv.critic.parameters()]
    rec, (loss, info) = step()
    assert info["adv_rows"] == 2 and "adv" not in info and loss is rec  # warm-up: the critic alone
    assert any((p - q).abs().max() > 0 for p, q in zip(adv.critic.parameters(), w0))
    rec, (loss, info) = step()
    assert info["lambda"] > 0 and float(loss) != pytest.approx(float(rec))
    for p in adv.critic.parameters():
        p.grad = None
    loss.backward()
    assert net.weight.grad is not None and net.weight.grad.abs().max() > 0
    assert all(p.grad is None for p in adv.critic.parameters())  # the denoiser's term leaves the critic alone
    # rows at or above t_max only: no term, no critic step
    steps = adv.steps
    pred = net(xt)
    out, info = adv.denoiser_term(pred.sum(), pred, xt, x0, torch.full((4,), 800), at, sp, cd, net.weight)
    assert info == {"adv_rows": 0} and adv.steps == steps
    # the state round-trips (a resumed run goes on with the same critic)
    other = Adversary(4, 3, 5, weight=0.5, t_max=500, width=8)
    other.load_state_dict(adv.state_dict())
    assert other.steps == adv.steps
    assert all(torch.equal(p, q) for p, q in zip(other.critic.state_dict().values(),
                                                   adv.critic.state_dict().values()))
