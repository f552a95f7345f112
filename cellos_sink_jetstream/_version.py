"""The package version, single-sourced for setup.cfg and ``__version__``."""

__version__ = "0.1.0"
