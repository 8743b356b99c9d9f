"""The training loop, data and plots that the methods and the entry points share."""
