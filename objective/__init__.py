"""The thing being optimized: one honestly timed training run of a small MNIST CNN."""
