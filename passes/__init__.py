"""Method passes: one module per pruning method (see the registry in later issues)."""
