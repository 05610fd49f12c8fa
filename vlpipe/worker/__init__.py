"""The worker: ProcessShard reads a shard spec, decodes ahead, runs batched inference, writes."""
