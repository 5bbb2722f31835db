"""Audits that use the datamodel weights (support, mislabel, leakage) and their helpers."""
