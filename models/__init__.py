"""stormguard.models — the learning side: User-Agent model, model bundles, evaluation.

- :mod:`stormguard.models.ua`: :class:`~stormguard.models.ua.UAModel` (UA clusters, distance, bot probability).
- :mod:`stormguard.models.ua_eval`: cross-validated and leave-one-source-out evaluation of the UA model.
- :mod:`stormguard.models.bundle`: safe save/load of fitted models (skops, type allow-list, checks).
- :mod:`stormguard.models.cli`: ``stormguard ua train|score`` (``register(subparsers)``).
- :mod:`stormguard.models.behaviour`: the behaviour scorer (profiles, anomaly, reputation model, live scorer).
- :mod:`stormguard.models.content`: request-content signals, named rules and the content classifier (issue 12).
- :mod:`stormguard.models.sources`: labelled corpus sources and labelling functions (weak supervision).
- :mod:`stormguard.models.transfer` / :mod:`~stormguard.models.transfer_cli`: leave-one-source-out evaluation.
- :mod:`stormguard.models.frames`: feature-table column helpers shared by the models.
- :mod:`stormguard.models.header_families`: header rules per browser family learned from real HARs, and their
  leave-one-HAR-source-out evaluation (``data/make_header_families.py``).

Nothing is imported here, so ``import stormguard.models`` costs nothing until a submodule is used: scikit-learn
and skops load only for whoever needs them, never on the server's import path by accident.
"""
