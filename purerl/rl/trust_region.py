"""Trust-region pieces for TRPO: conjugate gradient, Fisher-vector products, step length
and a branch-free backtracking line search.

Everything works on flat parameter vectors (`jax.flatten_util.ravel_pytree`), has a
fixed iteration count and no data-dependent Python control flow, so a whole TRPO update
traces once and vmaps over seeds and over max-KL values δ.
"""

from __future__ import annotations

from collections.abc import Callable

import chex
import jax
import jax.numpy as jnp
from flax import struct
from jax import lax


def conjugate_gradient(
    matvec: Callable[[jax.Array], jax.Array], b: jax.Array, num_iters: int
) -> tuple[jax.Array, jax.Array]:
    """Approximately solve A x = b for symmetric positive-definite A, given only x ↦ A x.

    Exactly `num_iters` CG iterations from x₀ = 0 in a `lax.scan` (no early exit, so
    the cost and the trace are fixed). Once the residual is exactly zero the updates
    become zero instead of 0/0. Returns (x, ‖b − A x‖² as tracked by the recursion).
    """
    chex.assert_rank(b, 1)
    tiny = jnp.finfo(b.dtype).tiny

    def iteration(carry, _):
        x, residual, direction, residual_sq = carry
        a_direction = matvec(direction)
        curvature = jnp.dot(direction, a_direction)
        alpha = jnp.where(curvature > tiny, residual_sq / jnp.maximum(curvature, tiny), 0.0)
        x = x + alpha * direction
        residual = residual - alpha * a_direction
        new_residual_sq = jnp.dot(residual, residual)
        beta = jnp.where(residual_sq > tiny, new_residual_sq / jnp.maximum(residual_sq, tiny), 0.0)
        direction = residual + beta * direction
        return (x, residual, direction, new_residual_sq), None

    init = (jnp.zeros_like(b), b, b, jnp.dot(b, b))
    (x, _, _, residual_sq), _ = lax.scan(iteration, init, None, length=num_iters)
    return x, residual_sq


def fisher_vector_product(
    mean_kl: Callable[[jax.Array], jax.Array], params: jax.Array, damping: float | jax.Array
) -> Callable[[jax.Array], jax.Array]:
    """v ↦ (F + damping·I) v without ever forming F.

    `mean_kl(θ)` must be the mean KL(π_old ‖ π_θ) with π_old held fixed (stop-gradient);
    its Hessian at θ = θ_old is the Fisher information F of the policy. The product is a
    forward-mode derivative of the reverse-mode gradient (one JVP of `grad`), which costs
    about two gradient evaluations per product whatever the number of parameters.
    The damping keeps CG well-posed where F is singular (flat directions of the policy).
    """
    chex.assert_rank(params, 1)
    kl_gradient = jax.grad(mean_kl)

    def product(vector: jax.Array) -> jax.Array:
        _, hessian_vector = jax.jvp(kl_gradient, (params,), (vector,))
        return hessian_vector + damping * vector

    return product


def step_scale(curvature: jax.Array, max_kl: float | jax.Array) -> tuple[jax.Array, jax.Array]:
    """β = √(2δ / sᵀFs): the step βs whose quadratic KL model ½β²·sᵀFs equals δ.

    Guarded: a non-positive or non-finite curvature (a broken KL/Fisher, or a zero
    gradient) gives β = 0, i.e. no step, instead of a NaN. Returns (β, curvature_ok).
    """
    curvature_ok = jnp.isfinite(curvature) & (curvature > 0.0)
    safe_curvature = jnp.where(curvature_ok, curvature, 1.0)
    beta = jnp.where(curvature_ok, jnp.sqrt(2.0 * max_kl / safe_curvature), 0.0)
    return beta, curvature_ok


@struct.dataclass
class LineSearchResult:
    params: jax.Array  # the accepted parameters, or the old ones if nothing passed
    step_fraction: jax.Array  # accepted shrink factor c^k, 0 when nothing passed
    success: jax.Array  # bool: some candidate passed both checks
    kl: jax.Array  # mean KL at the returned parameters (0 when unchanged)
    improvement: jax.Array  # surrogate(returned) − surrogate(old) (0 when unchanged)


def backtracking_line_search(
    evaluate: Callable[[jax.Array], tuple[jax.Array, jax.Array]],
    params: jax.Array,
    full_step: jax.Array,
    max_kl: float | jax.Array,
    backtrack_coef: float | jax.Array,
    num_steps: int,
) -> LineSearchResult:
    """Accept the largest θ + c^k·step (k < num_steps) whose KL ≤ δ and whose surrogate
    strictly improves; if none does, keep θ.

    `evaluate(θ) -> (surrogate(θ) − surrogate(θ_old), mean KL(π_old ‖ π_θ))`. All
    candidates are evaluated at once (vmapped over k) and the first passing one is picked
    with masks, so there is no data-dependent control flow: the cost is num_steps batched
    policy evaluations, which on a batched accelerator is about one.
    """
    chex.assert_rank(params, 1)
    chex.assert_equal_shape((params, full_step))
    fractions = backtrack_coef ** jnp.arange(num_steps, dtype=params.dtype)
    candidates = params[None, :] + fractions[:, None] * full_step[None, :]
    improvements, kls = jax.vmap(evaluate)(candidates)
    chex.assert_shape((improvements, kls), (num_steps,))
    accepted = (kls <= max_kl) & (improvements > 0.0) & jnp.isfinite(kls) & jnp.isfinite(improvements)
    success = jnp.any(accepted)
    # fractions decrease with k, so the first accepted candidate is the largest step.
    best = jnp.argmax(accepted)
    new_params = jnp.where(success, candidates[best], params)
    zero = jnp.zeros((), params.dtype)
    return LineSearchResult(
        params=new_params,
        step_fraction=jnp.where(success, fractions[best], zero),
        success=success,
        kl=jnp.where(success, kls[best], zero),
        improvement=jnp.where(success, improvements[best], zero),
    )
