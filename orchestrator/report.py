"""The public face of :mod:`orchestrator.reporting`: load a sweep from MLflow, tabulate, render, publish.

Pipeline: :func:`load_trials` (MLflow -> long DataFrame) -> :func:`comparison_tables` (display tables whose
numbers live in ``table.attrs``) -> renderers (:func:`to_markdown`, :func:`to_csv`, :func:`to_latex`,
:func:`rich_table`, :func:`to_html`) and :func:`plot_learning_curves`; :func:`write_report` writes them all
and :func:`log_report_to_mlflow` attaches them to the sweep's parent run. See the package docstring for
which module does what.
"""

from orchestrator.reporting.loading import ID_COLUMNS, ExperimentNotFoundError, load_trials
from orchestrator.reporting.plots import curve_data, plot_learning_curves
from orchestrator.reporting.publish import FORMATS, log_report_to_mlflow, write_report
from orchestrator.reporting.render import rich_table, to_csv, to_latex, to_markdown
from orchestrator.reporting.tables import MISSING, comparison_tables, model_roles_note

__all__ = ["ExperimentNotFoundError", "load_trials", "comparison_tables", "model_roles_note", "to_markdown",
           "to_csv", "to_latex", "rich_table", "curve_data", "plot_learning_curves", "write_report",
           "log_report_to_mlflow", "FORMATS", "MISSING", "ID_COLUMNS"]
