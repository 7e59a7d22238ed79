"""The firing-pattern presets: units, named patterns, and Brian2 parity.

Brian2 runs the presets in the papers' own form, C dV/dt = -g_L (V - E_L) + ...,
from the published numbers, so agreement also checks the conversion to
τ_m = C/g_L and R = 1/g_L.
"""

import brian2 as b2
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import spark_somas as ss
from spark_somas import presets

DT = 0.1
ALL = list(presets.PRESETS.values())
STEPS = max(p.steps(DT) for p in ALL)
# Naud et al. (2008) call the irregular set chaotic; the delayed bursting set
# decides the length of each burst near a threshold. In both a rounding
# difference grows into a shifted spike (two algebraically equal Brian2
# forms of the irregular set part after 418 ms), so float32 cannot follow
# Brian2's float64 spike for spike; float64 can, over PARITY_MS_FLOAT64.
SENSITIVE = {"delayed_regular_bursting", "irregular_spiking"}
PARITY_MS_FLOAT64 = 300.0


def run_ours(dtype) -> list[np.ndarray]:
    """Spike step indices of every preset, all run as one population."""
    config, current = presets.stack(ALL)
    soma = ss.AdaptiveExponentialSoma(config, units=len(ALL), dtype=dtype, param_dtype=dtype)
    rec = ss.simulate(soma, jnp.broadcast_to(jnp.asarray(current, dtype), (STEPS, len(ALL))))
    spikes = np.asarray(rec.spikes)
    return [np.nonzero(spikes[:, i])[0] for i in range(len(ALL))]


@pytest.fixture(scope="module")
def ours32():
    return run_ours(jnp.float32)


@pytest.fixture(scope="module")
def brian_steps():
    """Brian2 (numpy target, float64, method='euler'), papers' parameterisation."""
    b2.prefs.codegen.target = "numpy"
    eqs = """
    dv/dt = (-g_L*(v - E_L) + g_L*D_T*exp((v - V_T)/D_T) - w + I)/C : volt
    dw/dt = (a*(v - E_L) - w)/tau_w : amp
    C : farad (constant)
    g_L : siemens (constant)
    E_L : volt (constant)
    V_T : volt (constant)
    D_T : volt (constant)
    a : siemens (constant)
    tau_w : second (constant)
    b : amp (constant)
    V_r : volt (constant)
    V_th : volt (constant)
    I : amp (constant)
    """
    group = b2.NeuronGroup(len(ALL), eqs, threshold="v > V_th", reset="v = V_r; w += b",
                           method="euler", dt=DT * b2.ms)
    units = dict(C=b2.pF, g_L=b2.nS, E_L=b2.mV, V_T=b2.mV, a=b2.nS, tau_w=b2.ms, b=b2.pA,
                 V_r=b2.mV, I=b2.pA)
    for key, unit in units.items():
        setattr(group, key, np.array([p.published[key] for p in ALL]) * unit)
    group.D_T = np.array([p.published["Delta_T"] for p in ALL]) * b2.mV
    group.V_th = np.array([p.config.threshold for p in ALL]) * b2.mV
    group.v = group.E_L
    monitor = b2.SpikeMonitor(group)
    b2.Network(group, monitor).run(STEPS * DT * b2.ms)
    trains = monitor.spike_trains()
    return [np.round(np.asarray(trains[i] / b2.ms) / DT).astype(int) for i in range(len(ALL))]


def test_units_are_converted_as_tau_m_c_over_gl_and_r_one_over_gl():
    for p in ALL:
        pub, cfg = p.published, p.config
        assert cfg.potential_tau == pytest.approx(pub["C"] / pub["g_L"]), p.name
        assert cfg.resistance == pytest.approx(1.0 / pub["g_L"]), p.name
        assert (cfg.potential_rest, cfg.potential_reset, cfg.rheobase_threshold,
                cfg.spike_slope) == (pub["E_L"], pub["V_r"], pub["V_T"], pub["Delta_T"]), p.name
        assert (cfg.adaptation_subthreshold, cfg.adaptation_delta, cfg.adaptation_tau) == (
            pub["a"], pub["b"], pub["tau_w"]), p.name
        assert p.current_pA == pub["I"] and cfg.threshold > cfg.rheobase_threshold
        assert "Naud" in p.source or "Brette" in p.source
        assert p.pattern in presets.PATTERNS


def test_brette_gerstner_preset_is_the_default_config():
    # The default rounds τ_m = 281/30 ms to 9.37; the preset keeps C/g_L exactly.
    preset, default = presets.get("brette_gerstner_2005").config, ss.AdaptiveExponentialSomaConfig()
    for f in default.quantity_fields():
        assert getattr(preset, f.name) == pytest.approx(getattr(default, f.name), rel=1e-3), f.name


def test_get_names_the_known_presets_on_a_typo():
    with pytest.raises(ValueError, match="tonic_spiking"):
        presets.get("tonic")
    with pytest.raises(ValueError, match="at least one"):
        presets.stack([])


@pytest.mark.parametrize("index", range(len(ALL)), ids=[p.name for p in ALL])
def test_each_preset_shows_its_named_pattern(index, ours32):
    p = ALL[index]
    steps = ours32[index]
    times = steps[steps < p.steps(DT)] * DT
    assert presets.classify(times, p.duration_ms, DT) == p.pattern


def test_spike_times_agree_with_brian2_float32(ours32, brian_steps):
    for p, ours, theirs in zip(ALL, ours32, brian_steps):
        if p.name not in SENSITIVE:
            np.testing.assert_array_equal(ours, theirs, err_msg=p.name)
    # The sensitive sets still agree for their first bursts / first spikes.
    for p, ours, theirs in zip(ALL, ours32, brian_steps):
        if p.name in SENSITIVE:
            np.testing.assert_array_equal(ours[:5], theirs[:5], err_msg=p.name)


def test_spike_times_agree_with_brian2_float64(brian_steps):
    with jax.enable_x64(True):
        ours64 = run_ours(jnp.float64)
    window = int(round(PARITY_MS_FLOAT64 / DT))
    for p, ours, theirs in zip(ALL, ours64, brian_steps):
        np.testing.assert_array_equal(ours[ours < window], theirs[theirs < window], err_msg=p.name)
        assert len(theirs[theirs < window]) >= 1, p.name


# --- the classifier on trains built by hand ----------------------------------

def train(start: float, isis) -> np.ndarray:
    return start + np.concatenate([[0.0], np.cumsum(isis)])


@pytest.mark.parametrize("times, duration, pattern", [
    (np.array([]), 300.0, "silent"),
    (np.array([10.0, 22.0]), 300.0, "transient"),
    (train(5.0, [10.0] * 20), 220.0, "tonic"),
    (train(50.0, [10.0] * 20), 270.0, "delayed"),
    (train(5.0, 10.0 * 1.15 ** np.arange(10)), 220.0, "adapting"),
    (train(5.0, 20.0 * 0.97 ** np.arange(15)), 250.0, "accelerating"),
    (train(80.0, 20.0 * 0.97 ** np.arange(15)), 330.0, "delayed accelerating"),
    (train(5.0, [3.0, 3.0] + [30.0] * 8), 260.0, "initial burst"),
    (train(5.0, [4.0, 4.0, 60.0] * 5), 350.0, "bursting"),
    (train(100.0, [4.0, 4.0, 60.0] * 5), 450.0, "delayed bursting"),
])
def test_classify_hand_built_trains(times, duration, pattern):
    assert presets.classify(times, duration) == pattern


def test_classify_calls_random_alternation_irregular_and_jitter_tonic():
    rng = np.random.default_rng(0)
    isis = np.where(rng.random(40) < 0.5, rng.uniform(4, 8, 40), rng.uniform(20, 40, 40))
    times = train(5.0, isis)
    assert presets.classify(times, times[-1] + 5.0) == "irregular"
    # Spike times known only to ± dt must not fake adaptation or bursts.
    jittered = np.round(train(5.0, [10.0] * 30) + rng.uniform(-DT, DT, 31), 1)
    assert presets.classify(jittered, 320.0) == "tonic"


def test_classify_refuses_too_few_spikes_to_judge():
    with pytest.raises(ValueError, match="at least 4"):
        presets.classify(np.array([10.0, 20.0, 250.0]), 300.0)


def test_adaptation_index_is_naud_et_al_formula():
    assert presets.adaptation_index([10.0, 20.0]) == pytest.approx(10.0 / 30.0)
    # With 10 ISIs the first k = min(4, 10 // 5) = 2 are skipped.
    isi = np.array([1.0, 100.0, 10.0, 10.0, 10.0, 10.0, 10.0, 10.0, 10.0, 20.0])
    assert presets.adaptation_index(isi) == pytest.approx((10.0 / 30.0) / 7)
    assert np.isnan(presets.adaptation_index([10.0]))
