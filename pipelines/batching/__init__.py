"""Per-partition buffers, the rotation policy and the worker-wide memory budget."""
