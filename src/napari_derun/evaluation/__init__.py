"""Scoring fusions: the metrics (:mod:`.metrics`, :mod:`.metrics_extra`), the baselines
(:mod:`.baselines`), evaluation tables (:mod:`.runner`: :func:`~.runner.evaluate`), robustness to
degradations (:mod:`.robust`) and parameters / multiply-adds / time (:mod:`.profiling`).

Import names from the module that defines them (``from napari_derun.evaluation.runner import evaluate``);
the package itself imports nothing.
"""
