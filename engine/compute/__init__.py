"""What the work runs on: the device (CUDA, MPS, CPU) and its free memory, glibc's allocator settings
for big tensors, and the cache that keeps loaded models warm between jobs."""
