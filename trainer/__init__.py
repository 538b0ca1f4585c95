"""Training backends: the backend registry, the local and Ray Train trainers, bucketing,
curriculum, checkpoints (issues 10-11).
"""
