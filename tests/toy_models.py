"""Small models of one's own that several test files build."""

from spark_somas.models.somas import Soma, StateVariable


def recovery_model(config: type, recovery: StateVariable) -> type[Soma]:
    """An Izhikevich-like pair for ``config`` (fields potential_rest,
    threshold, jump): τ dV/dt = −(V − E_L) + I − u with τ = 10 ms,
    100 ms · du/dt = −u; V > V_th ⇒ V ← E_L, u ← u + d. ``recovery``
    declares u (its rest value, which update it calls its own)."""

    class Recovery(Soma):
        config_class = config
        state_variables = {"potential": StateVariable("mV", rest="potential_rest"),
                           "recovery": recovery}

        @staticmethod
        def time_constants(p):
            return {"potential": 10.0 + 0 * p.threshold, "recovery": 100.0 + 0 * p.jump}

        @staticmethod
        def drives(p, x, current, stage, options):
            return {"potential": -(x["potential"] - p.potential_rest) + current - x["recovery"],
                    "recovery": -x["recovery"]}

        @staticmethod
        def spike_threshold(p, x):
            return p.threshold

        @staticmethod
        def after_spike(p, x, spike, dt):
            return {"potential": x["potential"] * (1 - spike) + p.potential_rest * spike,
                    "recovery": x["recovery"] + p.jump * spike}

        @staticmethod
        def cell_scale(p):
            return p.threshold - p.potential_rest

        @staticmethod
        def input_scale(p):
            return p.threshold - p.potential_rest

    return Recovery
