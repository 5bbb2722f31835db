"""The registry of steps: what `audit run` does, in order, and what the report and the gate read.

A new audit is one module that defines a :class:`audit.contract.Step` (settings, files, typed
result, summary, metrics) plus one line here; `audit run`, `audit report` and `audit check`
pick it up from this list (README, "Adding an audit").
"""

from __future__ import annotations

from audit.audits.counterfactual import COUNTERFACTUAL
from audit.audits.embed import EMBED
from audit.audits.gradients import GRADIENTS
from audit.audits.heuristic import HEURISTIC
from audit.audits.influence import INFLUENCE
from audit.audits.label_errors import LABEL_ERRORS
from audit.audits.leakage_audit import LEAKAGE
from audit.audits.support import BRITTLENESS, MISLABEL
from audit.contract import Registry
from audit.pipeline import EVALUATE, FIT, TRAIN

REGISTRY = Registry([TRAIN, FIT, GRADIENTS, EVALUATE, BRITTLENESS, MISLABEL, COUNTERFACTUAL, LEAKAGE, INFLUENCE,
                     HEURISTIC, LABEL_ERRORS, EMBED])
