"""Optimisers, schedules, the shuffled-minibatch epoch loop, the one optimiser step every gradient
trainer takes (`gradient_step`) and the one supervised fitting loop (`fit`), shared by all algorithms."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax import lax


def linear_decay(
    initial: jax.Array | float, steps_per_update: int, num_updates: int
) -> Callable[[jax.Array], jax.Array]:
    """Learning rate decaying linearly from `initial` to 0 over `num_updates` updates,
    constant within an update (optimizer count → update index)."""

    def schedule(count: jax.Array) -> jax.Array:
        fraction = 1.0 - (count // steps_per_update) / num_updates
        return initial * fraction

    return schedule


def adam_clipped(
    learning_rate: float | jax.Array | Callable[[jax.Array], jax.Array],
    max_grad_norm: float | jax.Array,
    eps: float = 1e-5,
) -> optax.GradientTransformation:
    """Adam after global-norm gradient clipping (not element-wise clipping).

    Hyperparameters may be tracers: the optimiser is built inside `train`, so a vmapped
    batch of learning rates or clip norms is just data.
    """
    return optax.chain(
        optax.clip_by_global_norm(max_grad_norm),
        optax.adam(learning_rate, eps=eps),
    )


def random_permutation(key: jax.Array, n: int) -> jax.Array:
    """A uniformly random permutation of range(n), int32 [n], for minibatch shuffling.

    `jax.random.permutation` sorts (random key, index) pairs, and XLA:CPU sorts more
    than one operand through a generic comparator call per comparison: 6-7x slower than
    sorting one uint32 array (about 100 µs vs 16 µs at n = 512; benchmarks/ppo_throughput.py
    --profile). So the index rides in the low ⌈log2 n⌉ bits of the random key and one
    single-operand sort does it. Ties in the remaining high bits would keep index order;
    a second round, whose ties keep the first round's (random) order, makes that bias
    negligible (~2^-23 per pair). Beyond n = 2^16 too few random bits remain: fall back.
    """
    index_bits = max(1, (n - 1).bit_length())
    if index_bits > 16:
        return jax.random.permutation(key, n)
    index = jnp.arange(n, dtype=jnp.uint32)
    permutation = index
    for round_key in jax.random.split(key, 2):
        order = jnp.sort((jax.random.bits(round_key, (n,), jnp.uint32) << index_bits) | index)
        permutation = permutation[order & jnp.uint32((1 << index_bits) - 1)]
    return permutation.astype(jnp.int32)


def shuffled_minibatch_epochs(
    key: jax.Array,
    carry: Any,
    batch: Any,
    num_epochs: int,
    num_minibatches: int,
    step_fn: Callable[[Any, Any], tuple[Any, dict[str, jax.Array]]],
) -> tuple[Any, dict[str, jax.Array]]:
    """Run `step_fn(carry, minibatch) -> (carry, metrics)` over `num_epochs` passes of
    freshly shuffled minibatches of a flat batch (leading axis B). Returns the final
    carry and every metric averaged per epoch, shaped [num_epochs] (so callers can
    report the first and the last epoch, e.g. PPO's approx_kl)."""
    batch_size = jax.tree.leaves(batch)[0].shape[0]
    if batch_size % num_minibatches:
        raise ValueError(
            f"num_minibatches: {num_minibatches} does not divide the batch size {batch_size}"
        )

    def epoch(carry, epoch_key):
        permutation = random_permutation(epoch_key, batch_size)
        minibatches = jax.tree.map(
            lambda x: jnp.take(x, permutation, axis=0).reshape(
                (num_minibatches, -1) + x.shape[1:]
            ),
            batch,
        )
        return lax.scan(step_fn, carry, minibatches)

    carry, metrics = lax.scan(epoch, carry, jax.random.split(key, num_epochs))
    return carry, jax.tree.map(lambda m: jnp.mean(m, axis=1), metrics)


class StepStats(NamedTuple):
    """What one optimiser step reports: the loss, the loss function's auxiliary output and the
    global norm of the gradients before clipping."""

    loss: jax.Array
    aux: Any
    grad_norm: jax.Array


def gradient_step(
    optimizer: optax.GradientTransformation,
    loss_fn: Callable[..., tuple[jax.Array, Any]],
    params: Any,
    opt_state: Any,
    *args: Any,
) -> tuple[Any, Any, StepStats]:
    """One optimiser step: `loss_fn(params, *args) -> (loss, aux)`, its gradients with respect
    to `params`, the optimiser's update (e.g. `adam_clipped`), the new parameters.

    Returns (params, opt_state, StepStats(loss, aux, grad_norm)). Every trainer that learns by
    gradient takes its steps through here, so what a step does and reports is defined once."""
    (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, *args)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, StepStats(loss, aux, optax.global_norm(grads))


def fit(
    optimizer: optax.GradientTransformation,
    loss_fn: Callable[..., tuple[jax.Array, Any]],
    params: Any,
    opt_state: Any,
    inputs: Any,
    make_batch: Callable[[Any], Any] = lambda x: x,
    on_step: Callable[[jax.Array], None] | None = None,
) -> tuple[Any, Any, StepStats]:
    """The supervised fitting loop: one `gradient_step` per entry of `inputs` (leading axis =
    steps), on the batch `make_batch(input)` (e.g. a data key -> a fresh batch, or the identity
    over pre-drawn minibatches), in one `lax.scan`. `on_step(step_index)` runs on the host after
    each step (progress bars). Returns the final params and optimiser state and the StepStats of
    every step (leading axis = steps)."""

    def step(carry, entry):
        params, opt_state = carry
        index, x = entry
        params, opt_state, stats = gradient_step(optimizer, loss_fn, params, opt_state, make_batch(x))
        if on_step is not None:
            jax.debug.callback(on_step, index)
        return (params, opt_state), stats

    num_steps = jax.tree.leaves(inputs)[0].shape[0]
    (params, opt_state), stats = lax.scan(step, (params, opt_state), (jnp.arange(num_steps), inputs))
    return params, opt_state, stats
