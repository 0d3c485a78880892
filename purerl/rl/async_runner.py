"""An asynchronous actor–learner: two compiled programs on two devices and a bounded queue between them.

The actor is one jitted program (collect one rollout with the parameters it holds; the rollout
carries the behaviour log-probs) committed to device A; the learner is one jitted program (one
update on one rollout, with an off-policy correction) committed to device B. On CPU the two
devices are XLA host devices (`XLA_FLAGS=--xla_force_host_platform_device_count=2`).

`run(programs, settings, key, hyper, num_updates)` drives them from the host:

- `mode="async"`: a Python thread per side. The actor puts each finished rollout (copied to B),
  tagged with the version of the parameters that chose its actions, into a
  `queue.Queue(maxsize=queue_size)`; the learner takes one rollout per update and, every
  `push_every` updates, copies its parameters to A for the actor (version = updates done). The
  learner's update u on a rollout of version v has behaviour lag u − v, kept ≤ `max_staleness`
  by `on_stale`: "block" — the actor does not start rollout i before it holds version ≥ i − S
  (rollout i is learnt at update i, as none is dropped); "drop" — the actor never waits for
  parameters and the learner discards a rollout whose lag exceeds S (counted in `dropped`).
- `mode="sync"`: the same programs, transfers and records, alternating on one thread: act with
  the learner's current parameters, then learn (lag 0 throughout). The like-for-like baseline.

What is deterministic: every random key is a function of the run's key and of the rollout's or
the update's index (rollout i and update u use the keys update i and u would get in
`stale_ppo`'s single program), so a sync run repeats its numbers exactly, and an async run with
`push_every=1, max_staleness=0, on_stale="block"` is the sync run. What is not: in any other async
run the thread timing decides which parameter version each rollout is collected with (and under
"drop" which rollouts are discarded), so two runs with one seed differ. Every run records the
realised versions and lags (`metrics["behaviour_version"]`, `metrics["behaviour_lag"]`), so any run
can be analysed.

Recorded per update (`RunResult.metrics`, with the learner's own metrics): `behaviour_version`,
`behaviour_lag`, `rollout_index`, `learner_idle_s` (waiting on the queue, including for rollouts
then dropped), `learner_busy_s`, `dropped` (rollouts discarded before this update), `samples`
(env steps or completions learnt), `wall_s` (since the start, after the update). Per rollout
(`RunResult.rollouts`): `version`, `act_s`, `param_wait_s` (the actor waiting for fresh enough
parameters), `queue_wait_s` (waiting for room in the queue). Idle times are host wall-clock
seconds around blocking calls; each program's result is waited for (`block_until_ready`) before
it counts as done, so the time a side spends waiting is not its device's asynchronous dispatch.
"""

from __future__ import annotations

import dataclasses
import queue
import threading
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import numpy as np

from purerl.config import check_choice

MODES = ("sync", "async")
ON_STALE = ("block", "drop")
_POLL_S = 0.02  # how often a blocked side looks whether the other one failed or finished


@dataclasses.dataclass(frozen=True)
class Settings:
    """How the actor and the learner are coupled (host-side, nothing here is compiled)."""

    mode: str = "async"  # "sync": alternate on one thread; "async": a thread per side
    queue_size: int = 1  # Q: rollouts the queue holds (async)
    push_every: int = 1  # k: the learner sends its parameters to the actor every k updates (async)
    max_staleness: int = 1  # S: the largest behaviour lag a learnt rollout may have (async)
    on_stale: str = "block"  # "block": the actor waits for fresh enough parameters; "drop": the learner discards
    timeout_s: float = 600.0  # a side waiting longer than this on the other one raises

    def __post_init__(self) -> None:
        check_choice("Settings", "mode", self.mode, MODES)
        check_choice("Settings", "on_stale", self.on_stale, ON_STALE)
        for name, low in (("queue_size", 1), ("push_every", 1), ("max_staleness", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
                raise ValueError(f"Settings.{name}: got {value!r}; allowed: an integer ≥ {low}")
        # Between pushes the actor's newest version is up to k − 1 updates old, so a bound below
        # that could never be met (block would wait forever, drop would discard every rollout).
        if self.max_staleness < self.push_every - 1:
            raise ValueError(f"Settings.max_staleness: got {self.max_staleness}; allowed: an integer ≥ "
                             f"push_every − 1 = {self.push_every - 1} (the actor's parameters are up to "
                             "push_every − 1 updates old between pushes)")
        if not self.timeout_s > 0:
            raise ValueError(f"Settings.timeout_s: got {self.timeout_s!r}; allowed: a positive number of seconds")


class Programs(NamedTuple):
    """The two sides of one algorithm, as pure functions (the runner jits and places them).

    `init(key, hyper) -> (learner_state, actor_state, loop_key)` (jitted; loop_key: the key the
    single-program trainer's update loop starts from); `act(params, actor_state, key) ->
    (actor_state, rollout)` and `learn(learner_state, rollout, lag, key, update_index, hyper) ->
    (learner_state, metrics)`, both given the update's key (rollout i: update i's), each splitting
    it as the single-program update does; `params_of(learner_state)` -> the parameters the actor
    acts with; `samples` the env steps (or completions) in one rollout; `check_hyper(hyper)` refuses
    concrete settings the programs cannot serve (before anything compiles)."""

    init: Callable[[jax.Array, Any], tuple[Any, Any, jax.Array]]
    act: Callable[[Any, Any, jax.Array], tuple[Any, Any]]
    learn: Callable[..., tuple[Any, dict[str, jax.Array]]]
    params_of: Callable[[Any], Any]
    samples: int
    check_hyper: Callable[[Any], None] | None = None


@dataclasses.dataclass
class RunResult:
    state: Any  # the learner's final state (on the learner's device)
    actor_state: Any  # the actor's final state (on the actor's device)
    metrics: dict[str, np.ndarray]  # per update: the learner's metrics and the runner's records
    rollouts: dict[str, np.ndarray]  # per rollout the actor collected (learnt or dropped)
    wall_s: float  # the run, compilation excluded
    settings: Settings

    def summary(self) -> dict[str, float]:
        """Throughput and idle shares of the whole run."""
        m, r = self.metrics, self.rollouts
        return {
            "samples_per_s": float(np.sum(m["samples"]) / self.wall_s),
            "learner_idle_share": float(np.sum(m["learner_idle_s"]) / self.wall_s),
            "actor_idle_share": float((np.sum(r["param_wait_s"]) + np.sum(r["queue_wait_s"])) / self.wall_s),
            "mean_lag": float(np.mean(m["behaviour_lag"])),
            "max_lag": float(np.max(m["behaviour_lag"])),
            "dropped": float(np.sum(m["dropped"])),
            "wall_s": self.wall_s,
        }


class _Keys:
    """Per-index keys of `run_updates`' chain: index i gets key_i, (chain, key_i) = split(chain) —
    what update i gets in a single-program trainer, which both programs split as it does."""

    def __init__(self, key: jax.Array):
        self._chain, self._keys, self._lock = key, [], threading.Lock()  # both threads extend the chain

    def __call__(self, index: int) -> jax.Array:
        with self._lock:
            while len(self._keys) <= index:
                self._chain, update_key = jax.random.split(self._chain)
                self._keys.append(update_key)
            return self._keys[index]


class _Mailbox:
    """The newest parameters on the actor's device and their version (learner updates done)."""

    def __init__(self, params: Any, stop: threading.Event):
        self._cond = threading.Condition()
        self._params, self._version, self._stop = params, 0, stop

    def publish(self, params: Any, version: int) -> None:
        with self._cond:
            self._params, self._version = params, version
            self._cond.notify_all()

    def take(self, min_version: int, timeout_s: float) -> tuple[Any, int] | None:
        """The newest parameters once their version is ≥ min_version (None once the run stops)."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while self._version < min_version:
                if self._stop.is_set():
                    return None
                if time.monotonic() > deadline:
                    raise TimeoutError(f"actor: no parameters of version ≥ {min_version} within {timeout_s} s")
                self._cond.wait(_POLL_S)
            return self._params, self._version


def _on(device: jax.Device, tree: Any) -> Any:
    return jax.device_put(tree, device)


# Compiled programs by (function, devices, compiler options): runs of one algorithm with other
# settings or seeds reuse them (shapes are fixed by the function's closure).
_EXECUTABLES: dict[tuple, Any] = {}


def _compile(fn: Callable, args: tuple, devices: tuple, options: dict | None):
    cache_key = (fn, devices, tuple(sorted((options or {}).items())))
    if cache_key not in _EXECUTABLES:
        _EXECUTABLES[cache_key] = jax.jit(fn).lower(*args).compile(compiler_options=options)
    return _EXECUTABLES[cache_key]


def run(programs: Programs, settings: Settings, key: jax.Array, hyper: Any, num_updates: int,
        devices: tuple[jax.Device, jax.Device] | None = None,
        compiler_options: dict | None = None) -> RunResult:
    """`num_updates` learner updates, the actor on `devices[0]` and the learner on `devices[1]`
    (default: the first two local devices; one device serves both when there is only one).
    Both programs are compiled before the clock starts."""
    if isinstance(num_updates, bool) or not isinstance(num_updates, (int, np.integer)) or num_updates < 1:
        raise ValueError(f"num_updates: got {num_updates!r}; allowed: a positive integer")
    if devices is None:
        local = jax.local_devices()
        devices = (local[0], local[1 if len(local) > 1 else 0])
    actor_device, learner_device = devices
    if programs.check_hyper is not None:
        programs.check_hyper(hyper)
    if programs.init not in _EXECUTABLES:
        _EXECUTABLES[programs.init] = jax.jit(programs.init)
    learner_state, actor_state, loop_key = _EXECUTABLES[programs.init](key, hyper)
    keys = _Keys(loop_key)
    learner_state, hyper_b = _on(learner_device, learner_state), _on(learner_device, hyper)
    actor_state = _on(actor_device, actor_state)
    params_a = _on(actor_device, programs.params_of(learner_state))

    act = _compile(programs.act, (params_a, actor_state, _on(actor_device, keys(0))), devices, compiler_options)
    rollout_spec = jax.tree.map(
        lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=jax.sharding.SingleDeviceSharding(learner_device)),
        jax.eval_shape(programs.act, params_a, actor_state, keys(0))[1])
    index_b = _on(learner_device, np.int32(0))
    learn = _compile(programs.learn, (learner_state, rollout_spec, index_b, _on(learner_device, keys(0)),
                                      index_b, hyper_b), devices, compiler_options)

    records: list[dict[str, float]] = []
    metrics: list[dict[str, jax.Array]] = []
    rollouts: list[dict[str, float]] = []

    def act_once(params: Any, state: Any, index: int) -> tuple[Any, Any, float]:
        start = time.perf_counter()
        state, rollout = act(params, state, _on(actor_device, keys(index)))
        rollout = jax.block_until_ready(_on(learner_device, rollout))  # sent once it is on B
        return state, rollout, time.perf_counter() - start

    def update(state: Any, rollout: Any, lag: int, u: int) -> tuple[Any, float]:
        start = time.perf_counter()
        ints = _on(learner_device, np.asarray([lag, u], np.int32))
        state, m = learn(state, rollout, ints[0], _on(learner_device, keys(u)), ints[1], hyper_b)
        jax.block_until_ready(state)
        metrics.append(m)
        return state, time.perf_counter() - start

    clock = time.perf_counter()
    if settings.mode == "sync":
        for u in range(num_updates):
            actor_state, rollout, act_s = act_once(params_a, actor_state, u)
            rollouts.append({"version": u, "act_s": act_s, "param_wait_s": 0.0, "queue_wait_s": 0.0})
            learner_state, busy = update(learner_state, rollout, 0, u)
            # The actor waits while the learner learns: that is its idle time in this mode.
            rollouts[-1]["param_wait_s"] = busy
            params_a = _on(actor_device, programs.params_of(learner_state))
            records.append({"behaviour_version": u, "behaviour_lag": 0, "rollout_index": u, "learner_idle_s": act_s,
                            "learner_busy_s": busy, "dropped": 0, "wall_s": time.perf_counter() - clock})
    else:
        stop = threading.Event()
        final_actor: list[Any] = [actor_state]
        mailbox = _Mailbox(params_a, stop)
        channel: queue.Queue = queue.Queue(maxsize=settings.queue_size)
        failure: list[BaseException] = []

        def actor() -> None:
            state, index = actor_state, 0
            try:
                while not stop.is_set():
                    waited = time.perf_counter()
                    floor = index - settings.max_staleness if settings.on_stale == "block" else 0
                    taken = mailbox.take(floor, settings.timeout_s)
                    if taken is None:
                        return
                    params, version = taken
                    param_wait = time.perf_counter() - waited
                    state, rollout, act_s = act_once(params, state, index)
                    final_actor[0] = state
                    waited = time.perf_counter()
                    while True:
                        if stop.is_set():
                            return
                        try:
                            channel.put((rollout, version, index), timeout=_POLL_S)
                            break
                        except queue.Full:
                            if time.perf_counter() - waited > settings.timeout_s:
                                raise TimeoutError(f"actor: the queue stayed full for {settings.timeout_s} s") from None
                    rollouts.append({"version": version, "act_s": act_s, "param_wait_s": param_wait,
                                     "queue_wait_s": time.perf_counter() - waited})
                    index += 1
            except BaseException as error:  # handed to the learner's thread, which raises it
                failure.append(error)

        thread = threading.Thread(target=actor, name="purerl-actor", daemon=True)
        thread.start()
        try:
            dropped, u = 0, 0
            idle = 0.0
            while u < num_updates:
                waited = time.perf_counter()
                while True:
                    if failure:
                        raise RuntimeError("the actor thread failed") from failure[0]
                    try:
                        rollout, version, index = channel.get(timeout=_POLL_S)
                        break
                    except queue.Empty:
                        if time.perf_counter() - waited > settings.timeout_s:
                            raise TimeoutError(f"learner: no rollout within {settings.timeout_s} s") from None
                idle += time.perf_counter() - waited
                lag = u - version
                if lag > settings.max_staleness:
                    if settings.on_stale == "block":  # the actor's wait makes this impossible
                        raise AssertionError(f"update {u}: a rollout of version {version} under block, "
                                             f"lag {lag} > max_staleness {settings.max_staleness}")
                    dropped += 1
                    continue
                learner_state, busy = update(learner_state, rollout, lag, u)
                if (u + 1) % settings.push_every == 0:
                    mailbox.publish(_on(actor_device, programs.params_of(learner_state)), u + 1)
                records.append({"behaviour_version": version, "behaviour_lag": lag, "rollout_index": index,
                                "learner_idle_s": idle, "learner_busy_s": busy, "dropped": dropped,
                                "wall_s": time.perf_counter() - clock})
                dropped, idle, u = 0, 0.0, u + 1
        finally:
            stop.set()
            thread.join()
        if failure:
            raise RuntimeError("the actor thread failed") from failure[0]
        actor_state = final_actor[0]
    wall = time.perf_counter() - clock

    learnt = {name: np.stack([np.asarray(m[name]) for m in jax.device_get(metrics)]) for name in metrics[0]}
    for name in records[0]:
        learnt[name] = np.asarray([r[name] for r in records])
    learnt["samples"] = np.full(num_updates, programs.samples, np.int64)
    per_rollout = {name: np.asarray([r[name] for r in rollouts]) for name in rollouts[0]}
    return RunResult(learner_state, actor_state, learnt, per_rollout, wall, settings)


# ------------------------------------------------------------------------------------------- PPO
class PPORollout(NamedTuple):
    """What the PPO actor sends: raw transitions (behaviour log-probs included), where the envs
    ended, and the finished episodes' totals."""

    raw: Any
    last_obs: jax.Array
    episodes: Any


def ppo_programs(config: Any) -> Programs:
    """Stale PPO's learner (`purerl.algos.stale_ppo.make_learner`, its correction chosen by
    `Hyper.correction`) fed by an actor program that runs the envs. The learner's critic values the
    rollout when it arrives, as in `stale_ppo`'s single program; `Config.max_staleness` (the
    single program's parameter history) plays no part. Observation normalisation is refused: the
    actor would normalise with statistics the learner has moved on from."""
    from purerl.algos import stale_ppo
    from purerl.rl import on_policy
    from purerl.rl.rollout import collect, make_policy_sampler

    if config.normalize_obs:
        raise ValueError("Config.normalize_obs: got True; allowed: False (the asynchronous actor has no "
                         "observation statistics of its own)")
    learner = stale_ppo.make_learner(config)
    network = learner.network

    def init(key: jax.Array, hyper: Any) -> tuple[Any, Any, jax.Array]:
        init_key, loop_key = jax.random.split(key)  # as stale_ppo's train splits it
        state = learner.init(init_key, hyper)
        runner = state.agent.runner
        return state.replace(agent=state.agent.replace(runner=None)), runner, loop_key

    def act(params: Any, runner: Any, key: jax.Array) -> tuple[Any, PPORollout]:
        rollout_key, _ = jax.random.split(key)
        policy = make_policy_sampler(network, params, None)
        runner, raw, episodes = collect(learner.env, learner.env_params, policy, runner, rollout_key,
                                        config.num_steps)
        return runner, PPORollout(raw, runner.obs, episodes)

    def learn(state: Any, rollout: PPORollout, lag: jax.Array, key: jax.Array, update_index: jax.Array,
              hyper: Any) -> tuple[Any, dict[str, jax.Array]]:
        _, epoch_key = jax.random.split(key)
        agent = state.agent
        valued = on_policy.critic_pass(network, agent.params, agent.obs_stats, rollout.raw, rollout.last_obs,
                                       rollout.episodes)
        return learner.learn(state, valued, lag, epoch_key, update_index, hyper)

    return Programs(init, act, learn, lambda state: state.agent.params, config.batch_size,
                    lambda hyper: stale_ppo.check_hyper(config, hyper))


# ------------------------------------------------------------------------------------------ GRPO
def grpo_programs(config: Any, stop_early: bool = True) -> Programs:
    """GRPO on the tiny LM (`purerl.llm.grpo.make_learner`): the actor samples each update's prompts
    and completions (per-sequence EOS; with `stop_early` decoding ends when the batch's longest
    completion does, so the actor's time follows the completion lengths), the learner scores
    them, takes the group-relative advantages and GRPO's clipped step against the behaviour
    log-probs, and evaluates. The actor's state is the Hyper (it samples at `Hyper.temperature`)."""
    from purerl.llm import grpo

    learner = grpo.make_learner(config, stop_early=stop_early)

    def init(key: jax.Array, hyper: Any) -> tuple[Any, Any, jax.Array]:
        state, start, loop_key = learner.begin(key, hyper)
        return (state, start), hyper, loop_key

    def act(params: Any, hyper: Any, key: jax.Array) -> tuple[Any, Any]:
        return hyper, learner.act(params, key, hyper)

    def learn(state: Any, generated: Any, lag: jax.Array, key: jax.Array, update_index: jax.Array,
              hyper: Any) -> tuple[Any, dict[str, jax.Array]]:
        del lag  # GRPO's ratio is against the behaviour log-probs the rollout carries
        train_state, start = state
        train_state, metrics = learner.learn(train_state, start, generated, key, update_index, hyper)
        return (train_state, start), metrics

    return Programs(init, act, learn, lambda state: state[0].params, config.batch_size)
