"""Text generation and embeddings on the runtime: OpenAI-compatible /v1 endpoints, a job kind
of the one device owner, transformers (and optionally vLLM) backends, the embedded test model."""
