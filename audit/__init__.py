"""datamodel-audit: audit image datasets through datamodels."""

__version__ = "0.1.0"
