"""Expert predictors: the paper's pre-attention predictor and the baselines it is compared with.

Light to import (numpy only); torch is imported by the modules that train or run networks
(``predictor.loss``, ``predictor.stacked``, ``predictor.train``, ``predictor.preattention``).

- ``base``: the ``ExpertPredictor`` interface and ``Prediction`` (ranked ids + scores, [N, L, m]).
- ``data``: ``ActivationView`` over an activation store (or ``ArraySource`` in memory), sorted by token.
- ``splits``: train/val/test by sequence, deterministic from ``seq_id``.
- ``baselines``: cross-layer (FATE), previous-token, frequency, oracle, random.
- ``stacked``, ``loss``, ``train``, ``preattention``: the learned predictor, its ranking-aware loss,
  training with per-layer early stopping, saving and loading.
- ``metrics``, ``evaluate``, ``tables``: accuracy with sequence-bootstrap intervals, the long table
  and its markdown, and writing ``pred.<name>`` columns into a trace.
- ``synthetic``: planted-structure activations for tests and dry runs (marked synthetic).
"""
