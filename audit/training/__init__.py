"""Subset-model training: models, the CPU batched trainer, GPU trainers, engines."""
