"""TRPO: the trust-region step on a fixed batch, batching invariance, CartPole learning."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from purerl.algos import trpo
from purerl.nets import ActorCritic
from purerl.rl.agent import build_env_and_network, init_params

# ---------------------------------------------------------------- one step, fixed batch
# Under `pytest -n 2 --dist loadgroup` one worker runs this whole module, so the
# module-scoped fixture below is built once.
pytestmark = pytest.mark.xdist_group(__name__)


@pytest.fixture(scope="module")
def fixed_batch():
    config = trpo.Config()
    env, env_params, network = build_env_and_network(config)
    keys = jax.random.split(jax.random.PRNGKey(0), 4)
    params = init_params(network, env, env_params, keys[0])
    # Move away from the near-uniform initial policy so the step is not trivial.
    params = jax.tree.map(lambda p: p + 0.1 * jax.random.normal(keys[3], p.shape), params)
    obs = jax.random.normal(keys[1], (512, 4))
    actions = jax.random.bernoulli(keys[2], 0.5, (512,)).astype(jnp.int32)
    advantages = jax.random.normal(keys[3], (512,))
    advantages = (advantages - advantages.mean()) / advantages.std()
    update = jax.jit(trpo.make_policy_update(network, config))
    return network, params, obs, actions, advantages, update


def exact_kl_and_surrogate(network, old_params, new_params, obs, actions, advantages):
    """Independent float64 reference from the logits: KL(π_old ‖ π_new) and E[π_new/π_old Â]."""
    def log_probs(params):
        logits = np.asarray(network.apply(params, obs, method=ActorCritic.policy).logits, np.float64)
        return logits - np.logaddexp.reduce(logits, axis=-1, keepdims=True)

    old, new = log_probs(old_params), log_probs(new_params)
    kl = np.mean(np.sum(np.exp(old) * (old - new), axis=-1))
    rows = np.arange(len(actions))
    a = np.asarray(actions)
    ratio = np.exp(new[rows, a] - old[rows, a])
    return kl, np.mean(ratio * np.asarray(advantages, np.float64))


def actor_vector(params):
    return np.concatenate([np.ravel(x) for x in jax.tree.leaves(params["params"]["actor"])])


def test_one_update_respects_trust_region_and_improves_surrogate(fixed_batch, highest_precision):
    network, params, obs, actions, advantages, update = fixed_batch
    max_kl = 0.01
    new_params, stats = update(params, obs, actions, advantages, trpo.Hyper(max_kl=max_kl))
    kl, surrogate_new = exact_kl_and_surrogate(network, params, new_params, obs, actions, advantages)
    _, surrogate_old = exact_kl_and_surrogate(network, params, params, obs, actions, advantages)
    assert float(stats["line_search_success"]) == 1.0
    assert kl <= max_kl * (1 + 1e-3)
    assert kl > 0.1 * max_kl  # it really used the trust region, not a negligible step
    assert surrogate_new > surrogate_old
    np.testing.assert_allclose(stats["kl"], kl, rtol=1e-3)
    np.testing.assert_allclose(stats["surrogate_improvement"], surrogate_new - surrogate_old, rtol=1e-3)
    assert float(stats["sFs"]) > 0
    # Only the actor moves; the critic subtree is untouched.
    jax.tree.map(np.testing.assert_array_equal, new_params["params"]["critic"], params["params"]["critic"])


def test_tiny_trust_region_barely_moves(fixed_batch, highest_precision):
    network, params, obs, actions, advantages, update = fixed_batch
    theta = actor_vector(params)
    normal, _ = update(params, obs, actions, advantages, trpo.Hyper(max_kl=0.01))
    tiny, stats = update(params, obs, actions, advantages, trpo.Hyper(max_kl=1e-6))
    move_normal = np.linalg.norm(actor_vector(normal) - theta)
    move_tiny = np.linalg.norm(actor_vector(tiny) - theta)
    # The step length scales with √δ: √(1e-6 / 1e-2) = 0.01 (up to the accepted fractions).
    assert 0 < move_tiny <= 0.03 * move_normal
    assert move_tiny <= 1e-3 * np.linalg.norm(theta)
    kl, _ = exact_kl_and_surrogate(network, params, tiny, obs, actions, advantages)
    assert kl <= 1e-6 * 1.1


def test_update_without_improvable_surrogate_leaves_parameters_unchanged(fixed_batch, highest_precision):
    network, params, obs, actions, advantages, update = fixed_batch
    # Zero advantages: no step can improve the surrogate, so nothing may change (and no NaN
    # from √(2δ / sᵀFs) with sᵀFs = 0).
    new_params, stats = update(params, obs, actions, jnp.zeros_like(advantages), trpo.Hyper())
    jax.tree.map(np.testing.assert_array_equal, new_params, params)
    assert float(stats["line_search_success"]) == 0.0
    assert float(stats["step_fraction"]) == 0.0
    assert float(stats["kl"]) == 0.0


