"""Contract test run over every flow variant (zuko-style): shapes, gradients, invertibility."""

from __future__ import annotations

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from fedhex_hep.config import ModelConfig  # noqa: E402
from fedhex_hep.model.flow import FlowError, build_flow  # noqa: E402

VARIANTS = [
    pytest.param("maf", 2, 2, id="maf-F2"),
    pytest.param("maf", 1, 2, id="maf-F1"),
    pytest.param("maf", 3, 1, id="maf-F3-L1"),
    pytest.param("spline", 2, 2, id="spline-F2"),
    pytest.param("spline", 1, 1, id="spline-F1"),
    pytest.param("hybrid", 2, 2, id="hybrid-F2"),
    pytest.param("mixbase", 2, 2, id="maf-mixture-base-F2"),
    pytest.param("mixbase", 1, 1, id="maf-mixture-base-F1"),
]


def _flow(kind: str, F: int, L: int, seed: int = 3, blocks: int = 2):
    # "hybrid": affine MAF blocks with the block nearest the base a spline block;
    # "mixbase": affine MAF blocks on a 3-component label-dependent Gaussian mixture base
    cfg = ModelConfig(kind="spline" if kind == "spline" else "maf", n_blocks=blocks, hidden_units=[16, 16],
                      spline_bins=6, spline_blocks=1 if kind == "hybrid" else 0,
                      base_components=3 if kind == "mixbase" else 1)
    return build_flow(cfg, F, L, seed=seed)


def _base_log_prob_numpy(flow, u: np.ndarray, c: np.ndarray) -> np.ndarray:
    """The base density, computed independently of the flow's own code (numpy/scipy)."""
    from scipy import stats
    from scipy.special import logsumexp

    if flow.base_components == 1:
        return stats.norm.logpdf(u).sum(axis=1)
    logits, mean, log_width = (t.numpy().astype(np.float64) for t in flow.base_parameters(tf.constant(c)))
    log_w = logits - logsumexp(logits, axis=1, keepdims=True)
    per = stats.norm.logpdf(u[:, None, :], loc=mean, scale=np.exp(log_width)).sum(axis=2)
    return logsumexp(log_w + per, axis=1)


def test_spline_blocks_sit_nearest_the_base() -> None:
    flow = _flow("hybrid", 2, 2, blocks=3)
    # the MADE of a spline block outputs 3 * bins - 1 = 17 numbers per feature, an affine one 2
    widths = [net.trainable_variables[-1].shape[-1] for net in flow.module.networks]
    assert widths == [2 * 17, 2 * 2, 2 * 2]
    # the sampling direction starts at the base with block 0
    assert [b.name for b in flow.bijector.bijectors][-1] == "maf_0"


def _inputs(F: int, L: int, n: int = 64) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.standard_normal((n, F)).astype(np.float32), rng.standard_normal((n, L)).astype(np.float32)


@pytest.mark.parametrize("kind,F,L", VARIANTS)
def test_log_prob_shape_and_finite_gradients(kind: str, F: int, L: int) -> None:
    flow = _flow(kind, F, L)
    z, c = _inputs(F, L)
    with tf.GradientTape() as tape:
        lp = flow.log_prob(z, c)
        loss = -tf.reduce_mean(lp)
    assert lp.shape == (len(z),)
    assert np.all(np.isfinite(lp.numpy()))
    grads = tape.gradient(loss, flow.trainable_variables)
    assert len(grads) == len(flow.trainable_variables) > 0
    assert all(g is not None and np.all(np.isfinite(g.numpy())) for g in grads)
    assert any(np.any(g.numpy() != 0) for g in grads)


@pytest.mark.parametrize("kind,F,L", VARIANTS)
def test_invertible(kind: str, F: int, L: int) -> None:
    flow = _flow(kind, F, L)
    z, c = _inputs(F, L)
    # float32: the spline's inverse solves a quadratic, a little less precise than the affine
    atol = 1e-4 if kind == "maf" else 5e-3
    u = flow.inverse(z, c)
    np.testing.assert_allclose(flow.forward(u, c).numpy(), z, atol=atol)
    np.testing.assert_allclose(flow.inverse(flow.forward(z, c), c).numpy(), z, atol=atol)


@pytest.mark.parametrize("kind,F,L", VARIANTS)
def test_sample_shapes_and_seeds(kind: str, F: int, L: int) -> None:
    flow = _flow(kind, F, L)
    _, c = _inputs(F, L, n=100)
    a = flow.sample(c, seed=5)
    assert a.shape == (100, F) and np.all(np.isfinite(a))
    assert np.array_equal(a, flow.sample(c, seed=5))
    assert not np.array_equal(a, flow.sample(c, seed=6))


def test_sampling_many_batch_shapes_logs_no_retracing_warning(caplog) -> None:
    # one graph per batch shape is the design; TensorFlow's warning about it would read as a bug
    flow = _flow("maf", 2, 2)
    with caplog.at_level("WARNING", logger="tensorflow"):
        for n in range(3, 11):
            flow.sample(_inputs(2, 2, n=n)[1], seed=n)
    assert not [r for r in caplog.records if "retracing" in r.getMessage()]


@pytest.mark.parametrize("kind,F,L", VARIANTS)
def test_density_depends_on_condition(kind: str, F: int, L: int) -> None:
    """Also for F = 1, where the MADE has no autoregressive inputs, only the condition."""
    flow = _flow(kind, F, L)
    z, c = _inputs(F, L)
    assert np.max(np.abs(flow.log_prob(z, c).numpy() - flow.log_prob(z, c + 1.0).numpy())) > 1e-3


@pytest.mark.parametrize("kind,F,L", VARIANTS)
def test_normalised_density(kind: str, F: int, L: int) -> None:
    """E_p[1] via importance sampling from the flow itself is trivially 1; instead check
    that log_prob at the flow's own samples agrees with change of variables."""
    flow = _flow(kind, F, L)
    _, c = _inputs(F, L, n=32)
    z = flow.sample(c, seed=1)
    u = flow.inverse(z, c).numpy()
    base = _base_log_prob_numpy(flow, u.astype(np.float64), c)
    ildj = flow.bijector.inverse_log_det_jacobian(z, event_ndims=1, **flow._kwargs(tf.constant(c))).numpy()
    np.testing.assert_allclose(flow.log_prob(z, c).numpy(), base + ildj, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kind,F,L", VARIANTS)
def test_one_pass_log_prob_equals_tfp(kind: str, F: int, L: int) -> None:
    """The one-pass log_prob (one MADE evaluation per block) equals TFP's own
    TransformedDistribution.log_prob, away from the near-identity start (random weights)."""
    flow = _flow(kind, F, L, blocks=3)
    rng = np.random.default_rng(5)
    flow.set_weights([0.3 * rng.standard_normal(w.shape).astype(np.float32) for w in flow.get_weights()])
    z, c = _inputs(F, L)
    ours = flow.log_prob(z, c).numpy()
    kwargs = flow._kwargs(tf.constant(c))
    if flow.base_components == 1:
        tfp_lp = flow.distribution.log_prob(tf.constant(z), bijector_kwargs=kwargs).numpy()
    else:  # TFP's chain for the inverse and its Jacobian, the mixture base independently
        u = flow.bijector.inverse(tf.constant(z), **kwargs).numpy().astype(np.float64)
        ildj = flow.bijector.inverse_log_det_jacobian(tf.constant(z), event_ndims=1, **kwargs).numpy()
        tfp_lp = _base_log_prob_numpy(flow, u, c) + ildj
    assert np.max(np.abs(ours - tfp_lp)) < 1e-4 * max(1.0, np.max(np.abs(tfp_lp)))


@pytest.mark.parametrize("kind,F,L", VARIANTS)
def test_spline_labels_reach_the_spline_blocks_only(kind: str, F: int, L: int) -> None:
    """log_prob(z, c, spline_c): the spline blocks see spline_c, the affine blocks and the base c;
    the same as TFP's own chain given those labels block by block."""
    flow = _flow(kind, F, L, blocks=3)
    rng = np.random.default_rng(5)
    flow.set_weights([0.3 * rng.standard_normal(w.shape).astype(np.float32) for w in flow.get_weights()])
    z, c = _inputs(F, L)
    other = c + 0.7
    plain = flow.log_prob(z, c).numpy()
    np.testing.assert_array_equal(flow.log_prob(z, c, c).numpy(), plain)
    moved = flow.log_prob(z, c, other).numpy()
    if any(flow.config.is_spline_block(i) for i in range(3)):
        assert np.max(np.abs(moved - plain)) > 1e-3
    else:
        np.testing.assert_array_equal(moved, plain)
    kwargs = flow._kwargs(tf.constant(c), tf.constant(other))
    u = flow.bijector.inverse(tf.constant(z), **kwargs).numpy().astype(np.float64)
    ildj = flow.bijector.inverse_log_det_jacobian(tf.constant(z), event_ndims=1, **kwargs).numpy()
    tfp_lp = _base_log_prob_numpy(flow, u, c) + ildj
    assert np.max(np.abs(moved - tfp_lp)) < 1e-4 * max(1.0, np.max(np.abs(tfp_lp)))


def test_same_seed_same_initial_weights() -> None:
    a, b, other = _flow("maf", 2, 2, seed=7), _flow("maf", 2, 2, seed=7), _flow("maf", 2, 2, seed=8)
    assert all(np.array_equal(x, y) for x, y in zip(a.get_weights(), b.get_weights()))
    assert not all(np.array_equal(x, y) for x, y in zip(a.get_weights(), other.get_weights()))


def test_bounded_log_scale_keeps_training_finite() -> None:
    """Huge raw network outputs cannot push the log-scale past the bound."""
    flow = build_flow(ModelConfig(kind="maf", n_blocks=1, hidden_units=[8], log_scale_bound=2.0), 2, 1, seed=0)
    for v in flow.trainable_variables:
        v.assign(v * 1e4)
    z, c = _inputs(2, 1)
    lp = flow.log_prob(z, c).numpy()
    assert np.all(np.isfinite(lp))
    ildj = flow.bijector.inverse_log_det_jacobian(z, event_ndims=1, **flow._kwargs(tf.constant(c))).numpy()
    # |log_scale| <= 2 per dimension -> |log det| <= 4 in total
    assert np.all(np.abs(ildj) <= 4.0 + 1e-4)
    assert np.max(np.abs(ildj)) > 1.0  # the bound is actually reached, not a trivial pass


def test_bad_configuration_names_key() -> None:
    with pytest.raises(FlowError, match="input.features"):
        build_flow(ModelConfig(), 0, 2)
    with pytest.raises(FlowError, match="model.kind"):
        build_flow(ModelConfig(kind="realnvp"), 2, 2)


def _ensemble(kind: str = "maf", k: int = 3, F: int = 2, L: int = 2):
    cfg = ModelConfig(kind=kind, n_blocks=2, hidden_units=[16, 16], spline_bins=6, ensemble=k)
    flow = build_flow(cfg, F, L, seed=3)
    rng = np.random.default_rng(9)
    # move the members away from the near-identity start so that they really differ
    flow.set_weights([0.3 * rng.standard_normal(w.shape).astype(np.float32) for w in flow.get_weights()])
    return flow


@pytest.mark.parametrize("kind", ["maf", "spline"])
def test_ensemble_log_prob_is_the_mixture_of_its_members(kind: str) -> None:
    flow = _ensemble(kind)
    z, c = _inputs(2, 2)
    members = np.stack([m.log_prob(z, c).numpy().astype(np.float64) for m in flow.members])
    assert np.ptp(members, axis=0).max() > 0.1  # the members are different densities
    mixture = np.log(np.mean(np.exp(members), axis=0))
    np.testing.assert_allclose(flow.log_prob(z, c).numpy(), mixture, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(flow.training_log_prob(z, c).numpy(), members.mean(axis=0), rtol=1e-5, atol=1e-5)
    assert flow.variable_groups == [len(m.trainable_variables) for m in flow.members]
    assert len(flow.trainable_variables) == sum(flow.variable_groups)


def test_ensemble_member_zero_is_the_single_flow_and_members_differ() -> None:
    single = _flow("maf", 2, 2, seed=3)
    flow = build_flow(ModelConfig(kind="maf", n_blocks=2, hidden_units=[16, 16], ensemble=2), 2, 2, seed=3)
    assert _same_weights(flow.members[0].get_weights(), single.get_weights())
    assert not _same_weights(flow.members[1].get_weights(), single.get_weights())


def _same_weights(a, b) -> bool:
    return all(np.array_equal(x, y) for x, y in zip(a, b))


def test_ensemble_samples_follow_the_mixture_density() -> None:
    """1D: the samples' distribution equals the mixture CDF from integrating exp(log_prob)."""
    from scipy import stats

    flow = _ensemble("maf", k=3, F=1, L=1)
    c = np.full((20000, 1), 0.5, np.float32)
    x = flow.sample(c, seed=4)[:, 0]
    assert np.array_equal(x, flow.sample(c, seed=4)[:, 0])
    grid = np.linspace(x.min() - 3, x.max() + 3, 20001).astype(np.float32)
    cdf, norm = _cdf_1d(flow, grid, 0.5)
    assert abs(norm - 1.0) < 2e-3  # the mixture is normalised
    assert stats.kstest(x, cdf).pvalue > 1e-3
    # and not any one member alone: each member's CDF is rejected on the same sample
    for member in flow.members:
        assert stats.kstest(x, _cdf_1d(member, grid, 0.5)[0]).pvalue < 1e-3


def _cdf_1d(flow, grid: np.ndarray, label: float):
    """CDF of a 1-feature flow at one label, from integrating exp(log_prob) over ``grid``
    (trapezoids), normalised; and the integral itself."""
    dens = np.exp(flow.log_prob(grid[:, None], np.full((len(grid), 1), label, np.float32)).numpy().astype(np.float64))
    cdf = np.concatenate([[0.0], np.cumsum(0.5 * (dens[1:] + dens[:-1]) * np.diff(grid))])
    return (lambda v: np.interp(v, grid, cdf / cdf[-1])), float(cdf[-1])


def test_ensemble_size_must_be_positive() -> None:
    with pytest.raises(FlowError, match="model.ensemble"):
        build_flow(ModelConfig(ensemble=0), 2, 2)


def test_mixture_base_samples_follow_its_density_and_its_weights_depend_on_the_labels() -> None:
    flow = _flow("mixbase", 1, 1, blocks=1)
    rng = np.random.default_rng(2)
    flow.set_weights([0.5 * rng.standard_normal(w.shape).astype(np.float32) for w in flow.get_weights()])
    c = np.full((40000, 1), 0.7, np.float32)
    u = flow._base_sample(tf.constant(c), tf.constant([4, 5], tf.int32)).numpy()[:, 0]
    # KS test against the mixture CDF built from the base parameters
    from scipy import stats
    from scipy.special import softmax

    logits, mean, log_width = (t.numpy()[0] for t in flow.base_parameters(tf.constant(c[:1])))
    w, m, s = softmax(logits), mean[:, 0], np.exp(log_width[:, 0])
    assert stats.kstest(u, lambda x: np.sum(w * stats.norm.cdf((np.asarray(x)[:, None] - m) / s), axis=1)).pvalue > 1e-3
    other = flow.base_parameters(tf.constant([[-1.5]], tf.float32))[0].numpy()[0]
    assert np.max(np.abs(softmax(other) - w)) > 1e-3


_THREADS_SCRIPT = """
import sys, numpy as np, tensorflow as tf
tf.config.threading.set_intra_op_parallelism_threads(int(sys.argv[1]))
from fedhex_hep.config import ModelConfig
from fedhex_hep.model.flow import build_flow
flow = build_flow(ModelConfig(kind="maf", n_blocks=1, hidden_units=[8], base_components=3), 2, 2, seed=5)
c = np.random.default_rng(0).standard_normal((20000, 2)).astype(np.float32)
sys.stdout.write(flow.sample(c, seed=(7, 3)).tobytes().hex())
"""


def test_mixture_base_samples_do_not_depend_on_the_thread_count() -> None:
    """The same seed gives the same events in a process with 1 or 2 intra-op threads (dask
    workers and a training process run with fewer threads than a fresh one)."""
    import subprocess
    import sys

    runs = [subprocess.run([sys.executable, "-c", _THREADS_SCRIPT, str(n)], capture_output=True, text=True, check=True)
            for n in (1, 2)]
    assert runs[0].stdout and runs[0].stdout == runs[1].stdout


def test_ensemble_samples_keep_each_row_at_its_own_labels() -> None:
    """The ensemble samples each member on a shuffled share of the rows and puts the draws
    back in row order: rows drawn at labels -3 and +3 (interleaved, n not a multiple of K) must
    be more likely under their own labels than under the other ones."""
    flow = build_flow(ModelConfig(kind="maf", n_blocks=2, hidden_units=[16, 16], ensemble=3), 2, 1, seed=3)
    n = 20002
    c = np.where(np.arange(n)[:, None] % 2 == 0, -3.0, 3.0).astype(np.float32)
    z = flow.sample(c, seed=1)
    assert z.shape == (n, 2) and np.all(np.isfinite(z))
    gain = flow.log_prob(z, c).numpy().astype(np.float64) - flow.log_prob(z, -c).numpy().astype(np.float64)
    assert gain.mean() > 5 * gain.std() / np.sqrt(n)


def test_ensemble_single_rows_are_drawn_from_the_whole_mixture() -> None:
    """With fewer rows than members (here one per call) every row is still a mixture draw,
    not always the first member's."""
    from scipy import stats

    flow = _ensemble("maf", k=3, F=1, L=1)
    c = np.full((1, 1), 0.5, np.float32)
    x = np.concatenate([flow.sample(c, seed=s)[:, 0] for s in range(3000)])
    grid = np.linspace(x.min() - 3, x.max() + 3, 20001).astype(np.float32)
    assert stats.kstest(x, _cdf_1d(flow, grid, 0.5)[0]).pvalue > 1e-3
    assert stats.kstest(x, _cdf_1d(flow.members[0], grid, 0.5)[0]).pvalue < 1e-3


def test_fused_spline_inverse_equals_tfp_spline_values_and_gradients() -> None:
    """Training's spline inverse (one-hot bin lookup, XLA) gives TFP's RationalQuadraticSpline
    inverse and inverse log-det, and the same gradients, inside the range, outside it (the
    identity) and exactly on knots."""
    import tensorflow_probability as tfp

    from fedhex_hep.model.flow import _SPLINE_INVERSE, _knots, _spline_parameters

    rng = np.random.default_rng(11)
    n, F, bins, half = 512, 2, 8, 4.0
    params = tf.Variable(rng.normal(size=(n, F, 3 * bins - 1)).astype(np.float32))
    y = rng.normal(scale=2.5, size=(n, F)).astype(np.float32)
    y[:20] = rng.choice([-9.0, -4.0, 4.0, 7.5], size=(20, F))  # outside or on the range's ends
    knots_y = _knots(_spline_parameters(params, bins, half)[1], -half).numpy()  # as both splines have them
    y[20:40, 0] = knots_y[20:40, 0, 3]  # exactly on an inner knot
    y = tf.constant(y)
    with tf.GradientTape(persistent=True) as tape:
        x, log_det = _SPLINE_INVERSE(params, y, bins, half)
        spline = tfp.bijectors.RationalQuadraticSpline(*_spline_parameters(params, bins, half), range_min=-half)
        x_tfp = spline.inverse(y)
        log_det_tfp = spline.inverse_log_det_jacobian(y, event_ndims=0)
        ours = tf.reduce_sum(log_det) + tf.reduce_sum(tf.sin(x))
        theirs = tf.reduce_sum(log_det_tfp) + tf.reduce_sum(tf.sin(x_tfp))
    np.testing.assert_allclose(x.numpy(), x_tfp.numpy(), rtol=1e-5, atol=1e-5)
    # atol: at the range's ends TFP takes the log-det from a second lookup at x, which float
    # rounding can put just inside the range, where the slope is 1 (|log-det| ~1e-4)
    np.testing.assert_allclose(log_det.numpy(), log_det_tfp.numpy(), rtol=1e-4, atol=5e-4)
    outside = np.abs(y.numpy()) > half + 0.01  # the ends themselves are knots, up to rounding
    assert outside.sum() > 10
    np.testing.assert_array_equal(x.numpy()[outside], y.numpy()[outside])
    np.testing.assert_array_equal(log_det.numpy()[outside], 0.0)
    # gradients away from the knots: at a knot the log-det's gradient with respect to the
    # parameters depends on which of the two bins holds the point (its value does not), and
    # TFP's second lookup, at x, may pick the other one
    grad, grad_tfp = tape.gradient(ours, params).numpy(), tape.gradient(theirs, params).numpy()
    away = np.r_[0:20, 40:n]
    np.testing.assert_allclose(grad[away], grad_tfp[away], rtol=1e-3, atol=1e-3 * np.abs(grad_tfp).max())
