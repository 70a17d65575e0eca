"""Paper-ready reports of a sweep, built from MLflow alone, one job per module.

* :mod:`.loading` reads the trials (MLflow -> one long DataFrame);
* :mod:`.tables` turns them into comparison tables whose numbers live in ``table.attrs``;
* :mod:`.stats` adds paired tests, areas under the learning curves and labels-to-target;
* :mod:`.references` places the papers' published numbers beside the measured ones;
* :mod:`.render` (markdown, CSV, LaTeX, rich), :mod:`.html` (one self-contained page) and :mod:`.plots`
  draw them; :mod:`.publish` writes the files and attaches them to the sweep's parent run.

A report can be rebuilt at any time (on another machine, after the Ray cluster is gone) from the tracking
store; :mod:`orchestrator.report` re-exports the public names.
"""
