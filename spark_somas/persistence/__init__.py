"""What outlives a process: checkpoints and training logs.

* :mod:`~spark_somas.persistence.checkpointing` — Orbax checkpoints of
  parameters, running neuron state and optimizer state: ``Checkpointer``
  (save, restore, list), ``load`` (a model rebuilt from a directory alone),
  ``describe``;
* :mod:`~spark_somas.persistence.compatibility` — what a checkpoint's
  metadata says, checked against the stored arrays and a model: rebuilding
  the model it describes, mismatch reports, the upgrades of earlier releases;
* :mod:`~spark_somas.persistence.errors` — the checkpoint refusals and warnings;
* :mod:`~spark_somas.persistence.orbax_logs` — quiets the copies of a failed
  save that Orbax's background threads print;
* :mod:`~spark_somas.persistence.loggers` — per-epoch metrics to JSON lines
  and TensorBoard.

Imports :mod:`spark_somas.errors`, :mod:`spark_somas.dynamics` and
:mod:`spark_somas.models` only.
"""
