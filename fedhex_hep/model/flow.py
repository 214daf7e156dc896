"""Conditional normalizing flows (TensorFlow Probability): affine MAF and rational-quadratic spline.

A ``ConditionalFlow`` models p(z | c) for preprocessed features z (n, F) given preprocessed
labels c (n, L). It is a chain of ``tfb.MaskedAutoregressiveFlow`` blocks whose MADE networks
(``tfb.AutoregressiveNetwork``, conditional on c) give either

* ``kind = "maf"``: shift and log-scale, the log-scale bounded as ``B * tanh(raw / B)`` so that
  a bad step cannot blow up the scale, or
* ``kind = "spline"``: the bin widths, heights and knot slopes of a
  ``tfb.RationalQuadraticSpline`` on [-spline_range, spline_range] (identity outside);
* ``kind = "maf"`` with ``spline_blocks = k``: the k blocks nearest the Gaussian base are spline
  blocks, the rest affine (the affine blocks set location and scale, the splines the shape).

The base distribution is a standard normal, or with ``base_components = K > 1`` a mixture of K
diagonal Gaussians whose weights, means and (bounded) widths a small network computes from c:
a component can then carry a sub-population whose fraction changes with the labels (in the
reference analysis, the omega decays with a missing pi0, reconstructed low in both masses).

Fixed reversal permutations between blocks (no trainable or random state) keep save/load
exact. Weights are initialised from a numpy generator seeded by ``seed``, so the same seed gives
bit-identical initial weights in any process. Imports TensorFlow: only import lazily.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

from fedhex_hep._tf import import_tensorflow  # noqa: E402

import_tensorflow()
import tensorflow as tf  # noqa: E402
import tensorflow_probability as tfp  # noqa: E402

from fedhex_hep.config import ModelConfig  # noqa: E402
from fedhex_hep.errors import FedhexError

tfb = tfp.bijectors
tfd = tfp.distributions

__all__ = ["ConditionalFlow", "EnsembleFlow", "FlowError", "build_flow"]

# Smallest spline bin width/height and knot slope (in standardised units): keeps the spline
# strictly monotonic and its inverse well conditioned.
_MIN_BIN = 1e-3
_MIN_SLOPE = 1e-3
# XLA for the sampler's compiled variant (``sample(..., xla=True)``); False makes it a plain graph too.
SAMPLE_JIT_COMPILE = True
# Scale of the initial output-layer weights relative to Glorot (blocks start near identity).
_OUTPUT_INIT_SCALE = 0.1
# Hidden units of the network that gives the mixture base's parameters from the labels, and
# the tanh bound on its components' log-widths.
_BASE_HIDDEN = 32
_BASE_LOG_SCALE_BOUND = 3.0
_LOG_2PI = float(np.log(2.0 * np.pi))


class FlowError(FedhexError, ValueError):
    """An impossible flow configuration; the message names the config key."""


class _Networks(tf.Module):
    """Holds the MADE networks so tf.train.Checkpoint tracks their variables by position."""

    def __init__(self, networks: Sequence[Any]) -> None:
        super().__init__(name="flow")
        self.networks = list(networks)


def _assign_masked(var: Any, value: Any) -> None:
    """Assign ``value`` to ``var`` and re-apply its kernel constraint: MADE enforces its
    autoregressive masks that way (the optimizer applies it after each update), so weights set
    from outside must pass through it too."""
    var.assign(value)
    constraint = getattr(var, "constraint", None)
    if constraint is not None:
        var.assign(constraint(var))


class _FlowBase:
    """Sampling and weight access shared by ConditionalFlow and EnsembleFlow."""

    n_labels: int
    module: Any
    trainable_variables: tuple[Any, ...]
    _sample_fn: Any
    _sample_xla_fn: Any

    # the sampler accepts ``xla=`` (duck-typed samplers without it are called without it)
    supports_xla = True

    def sample(self, c: Any, seed: int | Sequence[int], xla: bool = False) -> np.ndarray:
        """One sample per row of c (n, L) -> z (n, F) as float32 numpy; same seed, same numbers.

        ``seed`` is an int or a pair of ints (stateless sampling: no global RNG state involved).
        ``xla``: run the XLA-compiled sampler (a long first call, faster later calls for large
        networks). Its random stream is XLA's, not the plain graph's: the same seed gives
        different (equally distributed) events with and without it.
        """
        c = tf.convert_to_tensor(np.asarray(c, dtype=np.float32).reshape(-1, self.n_labels))
        seed_pair = (int(seed), 0) if np.ndim(seed) == 0 else tuple(int(s) for s in seed)
        if len(seed_pair) != 2:
            raise ValueError(f"seed must be an int or a pair of ints, got {seed!r}")
        fn = self._sample_xla_fn if xla else self._sample_fn
        return fn(c, tf.constant(seed_pair, tf.int32)).numpy()

    def _make_samplers(self) -> None:
        # Traced on first use only: a process that never asks for XLA never compiles it. The
        # plain graph is traced for each batch shape (generation uses one per request): a graph
        # relaxed to any shape rounds differently, and the numbers must not depend on which
        # shapes the process traced before.
        self._sample_fn = tf.function(self._sample_graph)
        self._sample_xla_fn = tf.function(self._sample_graph, jit_compile=SAMPLE_JIT_COMPILE, reduce_retracing=True)

    # -- weights -------------------------------------------------------------------------
    def checkpoint(self) -> Any:
        """A tf.train.Checkpoint of the flow's variables (every member's for an ensemble)."""
        return tf.train.Checkpoint(flow=self.module)

    def get_weights(self) -> list[np.ndarray]:
        return [v.numpy() for v in self.trainable_variables]

    def set_weights(self, weights: Sequence[np.ndarray]) -> None:
        variables = self.trainable_variables
        if len(weights) != len(variables):
            raise ValueError(f"expected {len(variables)} weight arrays, got {len(weights)}")
        for var, w in zip(variables, weights):
            _assign_masked(var, w)


class ConditionalFlow(_FlowBase):
    """A conditional flow p(z | c); z has shape (n, F), c has shape (n, L). float32 inside."""

    def __init__(self, model: ModelConfig, n_features: int, n_labels: int, seed: int = 0, member: int = 0) -> None:
        if n_features < 1:
            raise FlowError("a flow needs at least one feature (config key 'input.features')")
        if n_labels < 1:
            raise FlowError("a conditional flow needs at least one label (config key 'input.labels')")
        if model.kind not in ("maf", "spline"):
            raise FlowError(f"config key 'model.kind' = {model.kind!r} is not one of maf, spline")
        self.config = model
        self.n_features = int(n_features)
        self.n_labels = int(n_labels)
        self.seed = int(seed)
        self.member = int(member)
        F = self.n_features
        networks, bijectors = [], []
        for i in range(model.n_blocks):
            made, maf = self._block(i)
            networks.append(made)
            bijectors.append(maf)
            if i < model.n_blocks - 1 and F > 1:
                bijectors.append(tfb.Permute(permutation=list(range(F - 1, -1, -1)), name=f"perm_{i}"))
        self.base_components = int(model.base_components)
        if self.base_components < 1:
            raise FlowError(f"config key 'model.base_components' must be >= 1, got {model.base_components}")
        self.base_net = self._make_base_net() if self.base_components > 1 else None
        if self.base_net is not None:
            networks.append(self.base_net)
        self._names = [f"maf_{i}" for i in range(model.n_blocks)]
        # tfb.Chain applies its list last-to-first in the forward (sampling) direction, so
        # sampling runs maf_0 -> perm_0 -> maf_1 ...; the normalising (inverse) direction runs
        # the chain's list first-to-last (maf_{n-1} first).
        self.bijector = tfb.Chain(list(reversed(bijectors)), name="chain")
        base = tfd.Sample(tfd.Normal(tf.constant(0.0, tf.float32), tf.constant(1.0, tf.float32)), sample_shape=[F])
        # TFP's own view of the flow, with the standard normal base (base_components = 1)
        self.distribution = tfd.TransformedDistribution(base, self.bijector)
        self.module = _Networks(networks)
        # The per-block bijector builders (network output -> affine / spline bijector) for the
        # one-pass log_prob; a TFP without this attribute falls back to its own log_prob.
        inner_fns = {b.name: getattr(b, "_bijector_fn", None) for b in bijectors if b.name.startswith("maf_")}
        self._inner_fns = inner_fns if all(fn is not None for fn in inner_fns.values()) else None
        self._build()
        self._make_samplers()

    def _block(self, i: int) -> tuple[Any, Any]:
        """(MADE network, masked autoregressive bijector) of block ``i``: affine or spline."""
        model = self.config
        # blocks 0 .. spline_blocks-1 sit nearest the Gaussian base, where the affine blocks
        # have already brought the data to unit scale that the spline's fixed range expects
        spline = model.is_spline_block(i)
        made = tfb.AutoregressiveNetwork(
            params=3 * model.spline_bins - 1 if spline else 2,
            event_shape=[self.n_features],
            conditional=True,
            conditional_event_shape=[self.n_labels],
            hidden_units=list(model.hidden_units),
            activation=model.activation,
            name=f"made_{i}",
        )
        if spline:
            fn = _SplineBlock(made, model.spline_bins, model.spline_range)
            return made, tfb.MaskedAutoregressiveFlow(bijector_fn=fn, name=f"maf_{i}")
        shift_and_log_scale = _bounded_affine(made, model.log_scale_bound)
        return made, tfb.MaskedAutoregressiveFlow(shift_and_log_scale_fn=shift_and_log_scale, name=f"maf_{i}")

    def _make_base_net(self) -> Any:
        """The network giving the Gaussian-mixture base's weights, means and widths from the labels."""
        import tf_keras

        k, F = self.base_components, self.n_features
        net = tf_keras.Sequential(
            [tf_keras.layers.Dense(_BASE_HIDDEN, activation="relu", name="base_hidden"),
             tf_keras.layers.Dense(k * (1 + 2 * F), name="base_params")],
            name="base",
        )
        net(tf.zeros((1, self.n_labels), tf.float32))
        return net

    # -- base distribution -----------------------------------------------------------------
    def base_parameters(self, c: Any) -> tuple[Any, Any, Any]:
        """Mixture base at labels c (n, L): logits (n, K), means (n, K, F), log-widths (n, K, F)."""
        k, f = self.base_components, self.n_features
        out = tf.reshape(self.base_net(c), (-1, k, 1 + 2 * f))
        log_width = _BASE_LOG_SCALE_BOUND * tf.math.tanh(out[:, :, 1 + f :] / _BASE_LOG_SCALE_BOUND)
        return out[:, :, 0], out[:, :, 1 : 1 + f], log_width

    def base_log_prob(self, u: Any, c: Any) -> Any:
        """log density of the base distribution at u (n, F) given labels c (n, L), shape (n,)."""
        if self.base_net is None:
            return self.distribution.distribution.log_prob(u)
        logits, mean, log_width = self.base_parameters(c)
        t = (u[:, None, :] - mean) * tf.exp(-log_width)
        per_component = tf.reduce_sum(-0.5 * t * t - log_width, axis=-1) - 0.5 * self.n_features * _LOG_2PI
        return tf.reduce_logsumexp(tf.nn.log_softmax(logits, axis=-1) + per_component, axis=-1)

    def _base_sample(self, c: Any, seed: Any) -> Any:
        if self.base_net is None:
            return self.distribution.distribution.sample(tf.shape(c)[0], seed=seed)
        logits, mean, log_width = self.base_parameters(c)
        # Gumbel-max from stateless uniforms: tf.random.stateless_categorical draws differently
        # with another intra-op thread count, and the same seed must give the same events anywhere
        u = tf.random.stateless_uniform(
            tf.shape(logits), seed=tf.random.experimental.stateless_fold_in(seed, 1), minval=1e-12, maxval=1.0
        )
        pick = tf.argmax(logits - tf.math.log(-tf.math.log(u)), axis=-1, output_type=tf.int32)
        noise = tf.random.stateless_normal(
            tf.shape(mean[:, 0, :]), seed=tf.random.experimental.stateless_fold_in(seed, 2)
        )
        return tf.gather(mean, pick, batch_dims=1) + tf.exp(tf.gather(log_width, pick, batch_dims=1)) * noise

    # -- construction ----------------------------------------------------------------------
    def _build(self) -> None:
        """Create all variables now (eagerly), then set them from a seeded numpy generator."""
        z = tf.zeros((1, self.n_features), tf.float32)
        c = tf.zeros((1, self.n_labels), tf.float32)
        self.log_prob(z, c)
        # member 0 of an ensemble starts exactly like a single flow with the same seed
        rng = np.random.default_rng([self.seed, 0x5EED] + ([self.member] if self.member else []))
        for net in self.module.networks:
            variables = list(net.trainable_variables)
            kernels = [i for i, v in enumerate(variables) if len(v.shape) == 2]
            # The last two kernels (masked hidden->output and conditional->output) make the
            # block's output: start them small so every block starts near the identity; a
            # plain Glorot start gives an initial loss in the hundreds for deep flows.
            output = set(kernels[-2:])
            for i, var in enumerate(variables):
                shape = var.shape.as_list()
                if len(shape) == 2:
                    # Glorot-uniform; masked entries are multiplied by zero in the MADE anyway.
                    limit = np.sqrt(6.0 / (shape[0] + shape[1])) * (_OUTPUT_INIT_SCALE if i in output else 1.0)
                    value = rng.uniform(-limit, limit, size=shape)
                else:
                    value = np.zeros(shape)
                _assign_masked(var, value.astype(np.float32))
        if self.base_net is not None:
            # equal weights and unit widths; means spread along the diagonal so that the
            # components differ from the start (identical ones would get identical gradients)
            k, f = self.base_components, self.n_features
            bias = np.zeros((k, 1 + 2 * f), np.float32)
            bias[:, 1 : 1 + f] = np.linspace(-0.5, 0.5, k, dtype=np.float32)[:, None]
            self.base_net.layers[-1].bias.assign(bias.reshape(-1))

    @property
    def trainable_variables(self) -> tuple[Any, ...]:
        """All trainable variables, in a fixed order (block by block, then the base's)."""
        return tuple(v for net in self.module.networks for v in net.trainable_variables)

    @property
    def variable_groups(self) -> list[int]:
        """Sizes of the independently trained groups of ``trainable_variables`` (one here)."""
        return [len(self.trainable_variables)]

    def conditioning_kernels(self) -> list[Any]:
        """The weights through which the labels enter each block's network.

        TFP's MADE adds a bias-free dense layer of the conditional input to each of its layers;
        these are their kernels (the mixture base's network is not among them).
        """
        import tf_keras

        blocks = [net for net in self.module.networks if net is not self.base_net]
        return [
            layer.kernel
            for net in blocks
            for layer in net.submodules
            if isinstance(layer, tf_keras.layers.Dense) and not layer.use_bias
        ]

    def training_log_prob(self, z: Any, c: Any, spline_c: Any = None) -> Any:
        """The per-event log-likelihood that training maximises (the density itself here)."""
        return self.log_prob(z, c, spline_c)

    def _kwargs(self, c: Any, spline_c: Any = None) -> dict[str, dict[str, Any]]:
        shape_c = c if spline_c is None else spline_c
        return {name: {"conditional_input": shape_c if self.config.is_spline_block(i) else c}
                for i, name in enumerate(self._names)}

    # -- density and sampling --------------------------------------------------------------
    def log_prob(self, z: Any, c: Any, spline_c: Any = None) -> Any:
        """log p(z | c) per event, shape (n,). z: (n, F), c: (n, L).

        ``spline_c`` (n, L), optional: the labels the spline blocks see instead of c (training
        smears them further, ``training.spline_label_jitter``); the affine blocks and the base
        see c.

        Same density as ``self.distribution.log_prob`` (equal to float rounding; with a mixture
        base, that of the chain's inverse and log-det-Jacobian plus ``base_log_prob``), in
        one pass: TFP's MaskedAutoregressiveFlow evaluates its MADE network once for the
        inverse and again for the log-det-Jacobian, and graph optimisation does not merge the
        two, so the TFP path costs twice the network evaluations (measured 1.3x slower per
        training epoch on 2 CPU cores). A spline block's inverse and log-det come from
        ``_spline_inverse_and_log_det``, TFP's spline computed in one lookup (1.2x faster
        training of the default model).
        """
        z = tf.convert_to_tensor(z, tf.float32)
        c = tf.convert_to_tensor(c, tf.float32)
        shape_c = c if spline_c is None else tf.convert_to_tensor(spline_c, tf.float32)
        if self._inner_fns is None:
            kwargs = self._kwargs(c, shape_c)
            ildj = self.bijector.inverse_log_det_jacobian(z, event_ndims=1, **kwargs)
            return self.base_log_prob(self.bijector.inverse(z, **kwargs), c) + ildj
        x, ildj = z, tf.zeros(tf.shape(z)[:-1], tf.float32)
        # tfb.Chain inverts its list first-to-last: this is the normalising direction.
        for bijector in self.bijector.bijectors:
            inner_fn = self._inner_fns.get(bijector.name)
            if inner_fn is None:  # a fixed permutation: volume preserving
                x = bijector.inverse(x)
                continue
            if isinstance(inner_fn, _SplineBlock):
                x, block_ildj = inner_fn.inverse_and_log_det(x, shape_c)
                ildj = ildj + block_ildj
                continue
            # The very bijector TFP would build from the network's output, used for both.
            inner = inner_fn(x, conditional_input=c)
            ildj = ildj + inner.inverse_log_det_jacobian(x, event_ndims=1)
            x = inner.inverse(x)
        return self.base_log_prob(x, c) + ildj

    def forward(self, u: Any, c: Any) -> Any:
        """Base-space u (n, F) -> feature-space z (n, F) (the sampling direction)."""
        return self.bijector.forward(tf.convert_to_tensor(u, tf.float32), **self._kwargs(tf.convert_to_tensor(c, tf.float32)))

    def inverse(self, z: Any, c: Any) -> Any:
        """Feature-space z (n, F) -> base-space u (n, F) (the normalising direction)."""
        return self.bijector.inverse(tf.convert_to_tensor(z, tf.float32), **self._kwargs(tf.convert_to_tensor(c, tf.float32)))

    def _sample_graph(self, c: Any, seed: Any) -> Any:
        return self.bijector.forward(self._base_sample(c, seed), **self._kwargs(c))


class _Members(tf.Module):
    """Holds the ensemble members' network modules so one checkpoint tracks them all."""

    def __init__(self, members: Sequence[Any]) -> None:
        super().__init__(name="ensemble")
        self.members = list(members)


class EnsembleFlow(_FlowBase):
    """An equal-weight mixture of ``model.ensemble`` independently initialised flows.

    Each member is trained on its own likelihood (``training_log_prob`` is the mean of the
    members' log-densities, whose gradient is each member's own), so the members differ only by
    their initial weights and make independent fits; the model is their mixture:
    ``log_prob`` = log(mean_k p_k), and ``sample`` draws each row from one member (each takes an
    equal share of the rows, at random positions). Averaging independent fits cancels part of
    each fit's error; the members' spread is a model-uncertainty estimate. Same interface as
    ConditionalFlow.
    """

    def __init__(self, model: ModelConfig, n_features: int, n_labels: int, seed: int = 0) -> None:
        if model.ensemble < 1:
            raise FlowError(f"config key 'model.ensemble' must be >= 1, got {model.ensemble}")
        self.config = model
        self.n_features = int(n_features)
        self.n_labels = int(n_labels)
        self.seed = int(seed)
        self.members = [ConditionalFlow(model, n_features, n_labels, seed, member=k) for k in range(model.ensemble)]
        self.module = _Members([m.module for m in self.members])
        self._make_samplers()

    @property
    def trainable_variables(self) -> tuple[Any, ...]:
        """All members' trainable variables, member by member."""
        return tuple(v for m in self.members for v in m.trainable_variables)

    @property
    def variable_groups(self) -> list[int]:
        """Number of variables of each member, in ``trainable_variables`` order."""
        return [len(m.trainable_variables) for m in self.members]

    def conditioning_kernels(self) -> list[Any]:
        """Every member's ``conditioning_kernels``, member by member."""
        return [k for m in self.members for k in m.conditioning_kernels()]

    def member_log_probs(self, z: Any, c: Any, spline_c: Any = None) -> Any:
        """log p_k(z | c) of every member, shape (K, n); ``spline_c`` as in ConditionalFlow.log_prob."""
        z = tf.convert_to_tensor(z, tf.float32)
        c = tf.convert_to_tensor(c, tf.float32)
        return tf.stack([m.log_prob(z, c, spline_c) for m in self.members])

    def log_prob(self, z: Any, c: Any) -> Any:
        """log of the mixture density, log(mean_k p_k(z | c)), shape (n,)."""
        k = float(len(self.members))
        return tf.reduce_logsumexp(self.member_log_probs(z, c), axis=0) - tf.math.log(k)

    def training_log_prob(self, z: Any, c: Any, spline_c: Any = None) -> Any:
        """Mean of the members' log-densities: maximising it fits every member independently."""
        return tf.reduce_mean(self.member_log_probs(z, c, spline_c), axis=0)

    def _sample_graph(self, c: Any, seed: Any) -> Any:
        # Each member samples its own equal share of the rows (q = n // K), at positions picked
        # by a random permutation, instead of drawing every member for every row and keeping
        # one (K times the cost; benchmarks/bench_generate.py). The n - K q < K rows left over
        # are drawn by every member and kept from a member picked at random per row, so every row is a
        # draw from the mixture also for n < K. Shapes derive from c's static shape under XLA:
        # each batch size compiles once.
        n = tf.shape(c)[0]
        k = len(self.members)
        q = n // k
        fold = tf.random.experimental.stateless_fold_in
        order = tf.argsort(tf.random.stateless_uniform([n], seed=fold(seed, k)))
        shuffled = tf.gather(c, order)
        rest = shuffled[k * q :]
        # one pass per member over its share and the leftover rows: each member is traced once
        both = [m._sample_graph(tf.concat([shuffled[i * q : (i + 1) * q], rest], axis=0), fold(seed, i))
                for i, m in enumerate(self.members)]
        shares = [d[:q] for d in both]
        rest_draws = tf.stack([d[q:] for d in both], axis=1)
        pick = tf.random.stateless_uniform([n - k * q], seed=fold(seed, 2 * k + 1), minval=0, maxval=k, dtype=tf.int32)
        draws = tf.concat([*shares, tf.gather(rest_draws, pick[:, None], batch_dims=1)[:, 0]], axis=0)
        return tf.gather(draws, tf.argsort(order))


def _bounded_affine(made: Any, bound: float) -> Any:
    bound = float(bound)

    def fn(x: Any, conditional_input: Any = None) -> tuple[Any, Any]:
        params = made(x, conditional_input=conditional_input)
        shift, raw = tf.unstack(params, num=2, axis=-1)
        return shift, bound * tf.math.tanh(raw / bound)

    return fn


def _spline_parameters(params: Any, n_bins: int, half: float) -> tuple[Any, Any, Any]:
    """A spline block's network output (..., 3 * n_bins - 1) -> bin widths, bin heights and
    inner knot slopes of a monotone spline on [-half, half] (standardised units)."""
    w, h, s = tf.split(params, [n_bins, n_bins, n_bins - 1], axis=-1)
    span = 2.0 * half - n_bins * _MIN_BIN
    bin_widths = tf.math.softmax(w, axis=-1) * span + _MIN_BIN
    bin_heights = tf.math.softmax(h, axis=-1) * span + _MIN_BIN
    knot_slopes = tf.math.softplus(s) + _MIN_SLOPE
    return bin_widths, bin_heights, knot_slopes


def _knots(bin_sizes: Any, low: float) -> Any:
    """Knot positions: low, then low plus the running sum of the bin sizes (as TFP has them)."""
    return tf.concat([tf.zeros_like(bin_sizes[..., :1]), tf.cumsum(bin_sizes, axis=-1)], axis=-1) + low


def _spline_inverse_and_log_det(params: Any, y: Any, n_bins: int, half: float) -> tuple[Any, Any]:
    """x = the inverse of the spline that ``params`` define, at y, and log |dx/dy|; both (..., F).

    The same numbers as ``tfb.RationalQuadraticSpline``'s ``inverse`` and
    ``inverse_log_det_jacobian`` (Durkan et al. 2019, appendix A; identity outside the range),
    computed differently for speed in training, the normalising direction: TFP finds a point's
    bin with ``searchsorted`` and six batched gathers (whose gradients are scatters), and the
    log-det from a second lookup at the inverted point. Here a one-hot comparison with the
    n_bins + 1 knots finds the bin once (a monotone spline maps a bin onto a bin), and XLA fuses
    the few hundred small operations of the block and their gradients (``_SPLINE_INVERSE``).
    """
    bin_widths, bin_heights, knot_slopes = _spline_parameters(params, n_bins, half)
    kx = _knots(bin_widths, -half)
    ky = _knots(bin_heights, -half)
    ones = tf.ones_like(knot_slopes[..., :1])
    kd = tf.concat([ones, knot_slopes, ones], axis=-1)
    out_of_bounds = (y <= ky[..., 0]) | (y >= ky[..., -1])
    y_in = tf.where(out_of_bounds, ky[..., 0], y)
    # TFP's bin: the last left knot at or below y (the knots strictly increase)
    at_or_below = tf.cast(ky[..., :-1] <= y_in[..., tf.newaxis], y.dtype)
    one_hot = at_or_below - tf.concat([at_or_below[..., 1:], tf.zeros_like(ones)], axis=-1)

    def left(knot_values: Any) -> Any:
        return tf.reduce_sum(one_hot * knot_values[..., :-1], axis=-1)

    def right(knot_values: Any) -> Any:
        return tf.reduce_sum(one_hot * knot_values[..., 1:], axis=-1)

    x_k, y_k, d_k, d_kp1 = left(kx), left(ky), left(kd), right(kd)
    w_k, h_k = right(kx) - x_k, right(ky) - y_k
    s_k = h_k / w_k
    zero = tf.zeros([], y.dtype)
    # the inverse (appendix A.3), written as TFP writes it
    rely = tf.where(out_of_bounds, zero, y - y_k)
    term2 = rely * (d_kp1 + d_k - 2 * s_k)
    a = h_k * (s_k - d_k) + term2
    b = h_k * d_k - term2
    c = -s_k * rely
    relx = tf.where(tf.equal(rely, 0), zero, (2 * c) / (-b - tf.sqrt(b**2 - 4 * a * c)))
    x = tf.where(out_of_bounds, y, relx * w_k + x_k)
    # the forward log-det (appendix A.2) at x, whose place in its bin is relx
    relx = tf.where(out_of_bounds, tf.constant(0.5, y.dtype), relx)
    log_det = (
        2 * tf.math.log(s_k)
        + tf.math.log(d_kp1 * relx**2 + 2 * s_k * relx * (1 - relx) + d_k * (1 - relx) ** 2)
        - 2 * tf.math.log((d_kp1 + d_k - 2 * s_k) * relx * (1 - relx) + s_k)
    )
    return x, -tf.where(out_of_bounds, zero, log_det)


_SPLINE_INVERSE = tf.function(_spline_inverse_and_log_det, jit_compile=True, reduce_retracing=True)


class _SplineBlock:
    """A spline block's ``bijector_fn`` for ``tfb.MaskedAutoregressiveFlow`` (network output ->
    ``tfb.RationalQuadraticSpline``, used to sample), which also gives the block's fused
    inverse and log-det for the one-pass ``log_prob``."""

    def __init__(self, made: Any, n_bins: int, spline_range: float) -> None:
        self.made = made
        self.n_bins = int(n_bins)
        self.half = float(spline_range)

    def __call__(self, x: Any, conditional_input: Any = None) -> Any:
        bin_widths, bin_heights, knot_slopes = _spline_parameters(
            self.made(x, conditional_input=conditional_input), self.n_bins, self.half
        )
        return tfb.RationalQuadraticSpline(
            bin_widths=bin_widths, bin_heights=bin_heights, knot_slopes=knot_slopes, range_min=-self.half
        )

    def inverse_and_log_det(self, y: Any, c: Any) -> tuple[Any, Any]:
        """The block's inverse at y (n, F) given labels c, and the per-event log |dx/dy| (n,)."""
        x, log_det = _SPLINE_INVERSE(self.made(y, conditional_input=c), y, self.n_bins, self.half)
        return x, tf.reduce_sum(log_det, axis=-1)


def build_flow(model: ModelConfig, n_features: int, n_labels: int, seed: int = 0) -> ConditionalFlow | EnsembleFlow:
    """Build the flow of ``model`` (an EnsembleFlow if ``model.ensemble`` > 1) with all
    variables created and seeded (ready to restore into)."""
    if model.ensemble == 1:
        return ConditionalFlow(model, n_features, n_labels, seed)
    return EnsembleFlow(model, n_features, n_labels, seed)
