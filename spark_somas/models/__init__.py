"""The neuron models: what a soma is, its parameters and its spike.

* :mod:`~spark_somas.models.protocol` — the :class:`~spark_somas.models.protocol.Soma`
  protocol and the one pure :func:`~spark_somas.models.protocol.step`;
* :mod:`~spark_somas.models.exponential` — the four exponential somas;
* :mod:`~spark_somas.models.paths` — somas and leaves of a module tree by name;
* :mod:`~spark_somas.models.somas` — all of those three re-exported in one place;
* :mod:`~spark_somas.models.configs` — parameter configs: fields with units,
  defaults and rules (:func:`~spark_somas.models.configs.quantity`);
* :mod:`~spark_somas.models.surrogates` — the spike function and the
  surrogates of its derivative;
* :mod:`~spark_somas.models.presets` — the Naud et al. (2008) AdEx firing patterns;
* :mod:`~spark_somas.models.registry` — model classes by name, for checkpoints,
  the command line and the network;
* :mod:`~spark_somas.models.cells` — a soma in Flax's containers: an ``nnx.RNN``
  cell, an ``nnx.Sequential`` stage, the Orbax template of a module saved mid-run.

Imports only :mod:`spark_somas.errors` and :mod:`spark_somas.dynamics`.
"""
