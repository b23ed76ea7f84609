"""FactorVAE's discriminator and TC estimate against a known answer: two correlated Gaussians."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from discriminator import (DISC_BETAS, Discriminator, discriminator_loss, permute_dims,
                           tc_estimate)


def correlated_gaussian(n, rho):
    """n samples of z ~ N(0, [[1, ρ], [ρ, 1]]): both marginals N(0, 1), so q̄(z) = N(0, I) and
    TC = KL(q(z) || q(z_1) q(z_2)) = I(z_1; z_2) = -½ log(1 - ρ²) exactly."""
    e = torch.randn(n, 2)
    return torch.stack([e[:, 0], rho * e[:, 0] + math.sqrt(1 - rho ** 2) * e[:, 1]], 1)


@pytest.fixture
def one_thread():
    """torch on one thread for the test, restored after: the sums, hence the trained numbers,
    then do not depend on the machine's core count, and a tiny MLP loses nothing by it (on a
    busy machine, two threads competing with other work ran these tests 50x slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# Tolerances in nats, from the errors est - TC measured with this recipe over seeds 0-11 (one
# CPU thread, under load): ρ 0.8: -0.022 to +0.005; ρ 0.95: -0.042 to +0.007 (the classifier
# slightly flattens the peaked ratio); ρ 0: at most 2e-4 in size. Each tolerance is about 1.7x
# the worst of the 12 and far below what a broken estimator gives: a flipped sign misses by
# 2 TC (1.02, 2.33), the ratio without its log by 1 at ρ 0 (E[D/(1-D)] = 1) and by 2.3 at ρ 0.8
# (E_q[q/q̄] = 1/(1 - ρ²)), swapped labels by 2 TC, one permutation shared by every column
# (no samples of q̄) by TC itself.
@pytest.mark.parametrize("rho, tol", [(0.8, 0.04), (0.95, 0.07), (0.0, 0.005)])
def test_tc_estimate_matches_gaussian_total_correlation(rho, tol, one_thread):
    # Algorithm 2's discriminator updates with the paper's Adam betas, each step on fresh samples:
    # the joint batch z and, independently, a second batch permuted into samples of q̄(z). The
    # learning rate is higher than the paper's and decays linearly to 0 (seconds of training, and
    # a final iterate that has settled); a smaller MLP than the paper's 6x1000 suffices in 2-D.
    torch.manual_seed(0)
    steps, batch = 800, 512
    disc = Discriminator(2, hidden=128, layers=3)
    opt = torch.optim.Adam(disc.parameters(), lr=2e-3, betas=DISC_BETAS)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: 1 - k / steps)
    for _ in range(steps):
        z, z_perm = correlated_gaussian(batch, rho), permute_dims(correlated_gaussian(batch, rho))
        loss, _ = discriminator_loss(disc, z, z_perm)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    true_tc = -0.5 * math.log(1 - rho ** 2)  # 0.511, 1.164, 0
    with torch.no_grad():
        est = tc_estimate(disc, correlated_gaussian(20_000, rho)).item()  # fresh samples
    assert abs(est - true_tc) < tol, (est, true_tc)


def test_permute_dims_keeps_columns_and_breaks_dependence():
    torch.manual_seed(1)
    x = torch.randn(2000, 1)
    z = torch.cat([x, x + 0.1 * torch.randn(2000, 1), -x], 1)  # B, 3: correlations ~ ±0.995
    before = z.clone()
    zp = permute_dims(z)
    assert torch.equal(z, before)  # the input is untouched
    torch.testing.assert_close(zp.sort(0).values, z.sort(0).values, rtol=0, atol=0)
    assert (zp != z).float().mean() > 0.99  # rows really moved
    corr = torch.corrcoef(zp.T)  # 3, 3
    assert torch.corrcoef(z.T)[0, 1] > 0.99
    # independent columns: each correlation ~ N(0, 1/B), sd 0.022; 0.1 is 4.5 sd
    assert corr[0, 1].abs() < 0.1 and corr[0, 2].abs() < 0.1 and corr[1, 2].abs() < 0.1
    torch.manual_seed(4)
    again = permute_dims(z)
    torch.manual_seed(4)
    assert torch.equal(permute_dims(z), again)  # torch's global RNG: a seeded run repeats


def test_tc_estimate_moves_the_codes_not_the_discriminator():
    torch.manual_seed(2)
    disc, enc = Discriminator(3, hidden=16, layers=2), nn.Linear(4, 3)
    z = enc(torch.randn(8, 4))  # B, 3, from a tiny "encoder"
    tc = tc_estimate(disc, z)
    logits = disc(z)
    torch.testing.assert_close(tc, (logits[:, 0] - logits[:, 1]).mean())  # the same network
    frozen = [p.clone() for p in disc.parameters()]
    # one careless optimizer over both: the VAE's loss must still leave D where it was
    opt = torch.optim.Adam([*enc.parameters(), *disc.parameters()], lr=0.1)
    opt.zero_grad()
    tc.backward()
    assert enc.weight.grad is not None and enc.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in disc.parameters())
    opt.step()
    assert all(torch.equal(p, q) for p, q in zip(disc.parameters(), frozen))


def test_discriminator_loss_trains_d_only_and_is_algorithm_2s_cross_entropy():
    torch.manual_seed(3)
    disc, enc = Discriminator(3, hidden=16, layers=2), nn.Linear(4, 3)
    z, z2 = enc(torch.randn(8, 4)), enc(torch.randn(8, 4))
    z_perm = permute_dims(z2)
    loss, acc = discriminator_loss(disc, z, z_perm)
    # -½ (mean log D(z) + mean log(1 - D(z_perm))), D = softmax(logits)[:, 0]
    with torch.no_grad():
        lj, lp = F.log_softmax(disc(z), 1), F.log_softmax(disc(z_perm), 1)
    torch.testing.assert_close(loss.detach(), -0.5 * (lj[:, 0].mean() + lp[:, 1].mean()))
    right = (lj[:, 0] > lj[:, 1]).sum() + (lp[:, 1] > lp[:, 0]).sum()
    assert acc.dim() == 0 and acc.item() == right.item() / 16
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in disc.parameters())
    assert enc.weight.grad is None and enc.bias.grad is None


def test_paper_architecture():
    disc = Discriminator(10)  # the paper's: 6 hidden layers of 1000, LeakyReLU 0.2, 2 logits
    linears = [m for m in disc.modules() if isinstance(m, nn.Linear)]
    acts = [m for m in disc.modules() if isinstance(m, nn.LeakyReLU)]
    assert [(m.in_features, m.out_features) for m in linears] == \
        [(10, 1000)] + [(1000, 1000)] * 5 + [(1000, 2)]
    assert len(acts) == 6 and all(a.negative_slope == 0.2 for a in acts)
    assert sum(p.numel() for p in disc.parameters()) == 11_000 + 5 * 1_001_000 + 2_002
    assert disc(torch.randn(5, 10)).shape == (5, 2)
