"""Stage 4, budget: what a pruned model may cost, and plans that meet it on the groups' cost model."""
