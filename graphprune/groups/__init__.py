"""Stage 3, groups: the channels that share one keep ratio, the cost polynomial in those ratios, plans and the views of the groups."""
