"""The version of chainrule: the one place it is written. pyproject.toml reads it
([tool.scikit-build.metadata.version]) and chainrule.__version__ imports it."""

__version__ = "0.1.0"
