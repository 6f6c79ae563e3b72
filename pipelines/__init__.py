"""sagegate: a tabular model from data to a served endpoint, with a quality gate in between."""

__version__ = "0.1.0"
