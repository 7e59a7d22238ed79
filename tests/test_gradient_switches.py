"""The two gradient switches of what a spike triggers: the reset (V ← V_r)
and the adaptation jumps (w ← w + b·s, θ ← θ + Δθ·s).

Forward: every combination gives the same values bit for bit, for every
soma, method and dtype. Backward: each switch cuts exactly its own path —
checked on the state the jump writes (∂θ_T/∂I, ∂w_T/∂I), on a user model
that declares its parts, and on the cue task, where the adaptation jump is
the only path across a delay.
"""

from __future__ import annotations

import dataclasses
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import spark_somas as ss
from spark_somas.data.tasks import EvidenceAccumulation
from spark_somas.models import configs
from spark_somas.models.somas import Soma, StateVariable
from spark_somas.training import network as network_lib
from spark_somas.training.diagnostics import input_gradient_by_step, input_weight_gradients
from spark_somas.training.network import Layer, NetworkConfig, SpikingNetwork, plain_neurons
from spark_somas.training.runs import RunConfig
from toy_models import recovery_model

SWITCHES = list(itertools.product((True, False), repeat=2))
KINDS = ["expif", "refractory", "adex", "simplified"]


def _run(kind: str, method: str, dtype, reset: bool, adaptation: bool):
    soma = ss.SOMAS[kind](units=6, method=method, dtype=dtype, detach_reset=reset,
                          detach_adaptation=adaptation, cooldown=2.0) if kind in (
        "refractory", "simplified") else ss.SOMAS[kind](
        units=6, method=method, dtype=dtype, detach_reset=reset, detach_adaptation=adaptation)
    currents = jnp.linspace(400.0, 1400.0, 6) * jnp.ones((1500, 1))
    rec = ss.simulate(soma, currents, record=("spikes", "potential"))
    return np.asarray(rec.spikes), np.asarray(rec.potential), soma


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("method", ["euler", "rk4", "exponential_euler"])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_forward_is_the_same_bit_for_bit_under_every_switch(kind, method, dtype):
    runs = [_run(kind, method, dtype, r, a) for r, a in SWITCHES]
    spikes, potential, _ = runs[0]
    assert spikes.sum() > 20  # dozens of spikes: the resets and jumps ran
    for s, v, soma in runs[1:]:
        np.testing.assert_array_equal(s, spikes)
        np.testing.assert_array_equal(v, potential)
        for name in soma.stored_names:
            assert getattr(soma, name)[...].dtype == getattr(runs[0][2], name)[...].dtype


def _final_state_gradient(kind: str, state: str, reset: bool, adaptation: bool) -> float:
    """|∂x_T/∂I| of the final adaptation state x over a drive that makes the
    soma spike; with a = 0 the jump is AdEx's only path from V to w."""
    extra = {"adaptation_subthreshold": 0.0} if kind == "adex" else {}
    soma = ss.SOMAS[kind](units=1, detach_reset=reset, detach_adaptation=adaptation, **extra)
    return _input_gradient(soma, state, 3000, 900.0)


def _input_gradient(soma: Soma, state: str, steps: int, current: float) -> float:
    """|∂(Σ x_T)/∂I| of state variable ``state`` after ``steps`` of constant I (pA)."""
    def final(model, i):
        ss.simulate(model, jnp.full((steps, 1), i))
        return getattr(model, state)[...].sum()

    return float(abs(nnx.grad(final, argnums=1)(soma, current)))


@pytest.mark.parametrize("kind, state", [("adex", "adaptation"),
                                         ("simplified", "threshold_offset")])
def test_the_adaptation_switch_cuts_the_path_through_the_jump_and_nothing_else(kind, state):
    grads = {sw: _final_state_gradient(kind, state, *sw) for sw in SWITCHES}
    assert grads[(True, True)] == 0.0 and grads[(False, True)] == 0.0
    assert grads[(True, False)] > 1e-4 and grads[(False, False)] > 1e-4
    # The reset's switch changes what reaches the spikes, not whether the jump passes it.
    assert grads[(True, False)] != grads[(False, False)]


def test_the_reset_switch_cuts_the_reset_path():
    """∂V_T/∂I through the reset blend: detached, V after a spike is V_r
    whatever the spike's surrogate derivative."""
    def grad(reset):
        return _input_gradient(ss.ExponentialSoma(units=1, detach_reset=reset), "potential",
                               400, 900.0)
    assert grad(True) != grad(False)


def test_a_user_model_declares_which_update_is_which():
    """An Izhikevich-like pair: the membrane resets, the recovery u jumps by d;
    a model may also call a second variable's update a reset."""

    @dataclasses.dataclass(frozen=True, kw_only=True, eq=False, repr=False)
    class JumpConfig(configs.SomaConfig):
        potential_rest: float = configs.quantity(-65.0, symbol="E_L", units="mV", doc="rest")
        threshold: float = configs.quantity(-50.0, symbol="V_th", units="mV", doc="cut-off")
        jump: float = configs.quantity(5.0, symbol="d", units="pA", doc="jump of u")

    def make(part):
        return recovery_model(JumpConfig, StateVariable("pA", on_spike=part))

    def grad(cls, **switches):
        return _input_gradient(cls(units=1, **switches), "recovery", 2000, 40.0)

    adaptive, reset_like = make(None), make("reset")
    assert adaptive.spike_parts == {"potential": "reset", "recovery": "adaptation"}
    assert grad(adaptive, detach_adaptation=True) == 0.0 < grad(adaptive, detach_adaptation=False)
    assert grad(reset_like, detach_reset=True, detach_adaptation=False) == 0.0
    with pytest.raises(TypeError, match="on_spike = 'jumps'"):
        class Bad(ss.ExponentialSoma):
            state_variables = {"potential": StateVariable("mV", rest="potential_rest",
                                                          on_spike="jumps")}


def cue_channel_gradient(kind: str, delay_ms: float, reset: bool, adaptation: bool,
                         hidden: int = 24) -> float:
    """|∂L/∂W_cue|: the gradient of the recall-window loss on the input weights
    of the two cue populations, which are silent after the cue period."""
    task = EvidenceAccumulation(delay_ms=delay_ms, cue_ms=50.0, gap_ms=25.0)
    x, y, _ = task.trials(8, seed=0)
    net = SpikingNetwork(task.n_inputs, hidden, 2, soma=kind, recurrent=True, synapse_tau=5.0,
                         input_gain=3.0, readout_window=(-task.recall_steps, None),
                         detach_reset=reset, detach_adaptation=adaptation,
                         soma_kwargs={"adaptation_tau": 2000.0} if kind == "adex"
                         else {"threshold_tau": 2000.0}, rngs=nnx.Rngs(0))
    per_channel = input_weight_gradients(net, np.swapaxes(x, 0, 1), jnp.asarray(y))
    return float(jnp.linalg.norm(per_channel[:2 * task.population]))


# AdEx's subthreshold coupling a·(V − E_L) leaks some gradient into w even
# with the jump cut; the simplified soma's θ has no other path.
@pytest.mark.parametrize("kind, ratio", [("simplified", 1e3), ("adex", 5.0)])
def test_the_training_default_lets_the_cue_gradient_cross_the_delay(kind, ratio):
    default = cue_channel_gradient(kind, 300.0, network_lib.TRAINING_DETACH_RESET,
                                   network_lib.TRAINING_DETACH_ADAPTATION)
    cut = cue_channel_gradient(kind, 300.0, True, True)
    assert default > 1e-5
    assert default > ratio * cut


def test_an_older_config_dict_keeps_its_meaning():
    old = {k: v for k, v in ss.AdaptiveExponentialSomaConfig().to_dict().items()
           if k != "detach_adaptation"}
    assert ss.AdaptiveExponentialSomaConfig.from_dict(old).detach_adaptation is True
    kept = ss.AdaptiveExponentialSomaConfig.from_dict({**old, "detach_reset": False})
    assert kept.detach_adaptation is False
    now = ss.AdaptiveExponentialSomaConfig(detach_reset=True)
    assert ss.AdaptiveExponentialSomaConfig.from_dict(now.to_dict()) == now
    with pytest.raises(ValueError, match="detach_adaptation"):
        ss.AdaptiveExponentialSomaConfig(detach_adaptation=1)


def test_an_older_network_and_run_dict_keep_their_meaning():
    d = NetworkConfig(4, 3, 2).to_dict()
    old = {k: v for k, v in d.items() if k not in ("detach_reset", "detach_adaptation",
                                                  "adaptive_fraction")}
    config = NetworkConfig.from_dict(old)
    assert config.detach_reset is None and config.detach_adaptation is True
    net = SpikingNetwork(config=config, rngs=nnx.Rngs(0))
    assert net.layers[0].soma.config.detach_reset is True
    assert net.layers[0].soma.config.detach_adaptation is True
    run = RunConfig(task="digits").to_dict()
    for key in ("detach_reset", "detach_adaptation", "fresh_data", "rate_strength", "rate_hz",
                "adaptive_fraction"):
        run.pop(key)
    old_run = RunConfig.from_dict(run)
    assert old_run.detach_reset is True and old_run.detach_adaptation is True
    assert old_run.fresh_data is False


def test_network_switches_reach_every_soma_and_refuse_non_bools():
    net = SpikingNetwork(4, (3, Layer(2, "simplified", detach_adaptation=True)), 2,
                         detach_reset=True, rngs=nnx.Rngs(0))
    first, second = (layer.soma.config for layer in net.layers)
    assert (first.detach_reset, first.detach_adaptation) == (True, False)
    assert (second.detach_reset, second.detach_adaptation) == (False, True)
    with pytest.raises(ValueError, match="detach_adaptation"):
        NetworkConfig(4, 3, 2, detach_adaptation="no")
    with pytest.raises(ValueError, match=r"soma_kwargs\['detach_reset'\]"):
        NetworkConfig(4, 3, 2, soma_kwargs={"detach_reset": True})


@pytest.mark.parametrize("kind, fields", [("adex", ("adaptation_delta", "adaptation_subthreshold")),
                                          ("simplified", ("threshold_delta",))])
def test_adaptive_fraction_makes_the_last_somas_plain(kind, fields):
    net = SpikingNetwork(4, 10, 2, soma=kind, adaptive_fraction=0.3, rngs=nnx.Rngs(0))
    soma = net.layers[0].soma
    for name in fields:
        value = np.asarray(getattr(soma, name)[...])
        assert value.shape == (10,)
        assert (value[:3] == getattr(soma.config_class(), name)).all() and (value[3:] == 0).all()
    rebuilt = SpikingNetwork(config=NetworkConfig.from_dict(net.config.to_dict()),
                             rngs=nnx.Rngs(1))
    for name in fields:
        np.testing.assert_array_equal(getattr(rebuilt.layers[0].soma, name)[...],
                                      getattr(soma, name)[...])
    assert plain_neurons(ss.SOMAS[kind], {}, 4, 0.0)[fields[0]].tolist() == [0.0] * 4


def test_adaptive_fraction_is_refused_outside_its_rule():
    with pytest.raises(ValueError, match="adaptive_fraction"):
        NetworkConfig(4, 3, 2, adaptive_fraction=1.5)
    with pytest.raises(ValueError, match="declares no adaptation_fields"):
        NetworkConfig(4, 3, 2, soma="expif", adaptive_fraction=0.5)
    with pytest.raises(ValueError, match="adaptive_fraction"):
        RunConfig(task="cues", adaptive_fraction=-0.1)


def test_the_gradient_by_step_reaches_the_cues_only_through_the_jump():
    """‖∂L/∂x_t‖ during the cue period, 500 ms before the recall: the
    simplified soma's θ carries it; cut, nothing reaches that far."""
    task = EvidenceAccumulation(delay_ms=500.0, cue_ms=50.0, gap_ms=25.0)
    x, y, _ = task.trials(4, seed=1)
    norms = {}
    for adaptation in (False, True):
        net = SpikingNetwork(task.n_inputs, 16, 2, soma="simplified", recurrent=True,
                             synapse_tau=5.0, input_gain=3.0,
                             readout_window=(-task.recall_steps, None),
                             detach_adaptation=adaptation, soma_kwargs={"threshold_tau": 2000.0},
                             rngs=nnx.Rngs(0))
        before = jax.tree.map(np.asarray, nnx.state(net))
        g = np.asarray(input_gradient_by_step(net, np.swapaxes(x, 0, 1), jnp.asarray(y)))
        assert g.shape == (task.steps,) and np.isfinite(g).all()
        jax.tree.map(np.testing.assert_array_equal, before, jax.tree.map(np.asarray,
                                                                         nnx.state(net)))
        norms[adaptation] = g[:task.cue_period_steps].max()
        assert g[task.recall_start:].max() > 0  # the recall itself is always reached
    assert norms[False] > 1e-6 and norms[True] < 1e-6 * norms[False]
