"""The queue side: the Redis connection, enqueueing, the job functions and the worker."""
