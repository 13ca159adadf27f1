"""Infrastructure every layer may use: metrics tracking, fault injection and fault kinds,
CPU and memory helpers, weight packing, model paths, sample logs."""
