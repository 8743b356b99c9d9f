"""Stage 1, tracing: the model as an fx graph, with what every node produces on the example inputs."""
