"""Stage 5, slimming: rewriting the traced graph into physically smaller (LW-DNA: wider) layers, and the exactness check.

It sits below the methods in the import order, although plans flow from methods to it: every method
builds its model with it, and LW-DNA widens and shrinks the model while it searches."""
