"""How a state advances by one step, knowing no model's variable names.

* :mod:`~spark_somas.dynamics.integrators` — Euler, exponential Euler, RK2
  and RK4 as tableaus over a model's drives;
* :mod:`~spark_somas.dynamics.numerics` — the floating-point guarantees: the
  exponential's cap and gradient modes, dtype bounds, compensated half
  precision.

Imports only :mod:`spark_somas.errors`.
"""
