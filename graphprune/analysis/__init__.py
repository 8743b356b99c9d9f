"""Stage 2, analysis: how channels flow through the traced graph, op by op (the rules read the op registry, ``graphprune/ops.py``)."""
