"""The batches domain's pure core: streaming validation of an input file, the line backend
(an OpenAI-compatible endpoint with retries), and OpenAI's output line shapes."""
