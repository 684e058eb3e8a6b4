"""Batch inference: OpenAI's Files and Batch API, and batches dropped as JSONL files."""
