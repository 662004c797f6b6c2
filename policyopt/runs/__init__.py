"""Run directories: resolved config, metrics (TensorBoard + CSV), atomic safetensors checkpoints."""
