"""`rlhfkit serve`: an OpenAI-compatible HTTP API over an aligned policy (or any causal LM), batching
concurrent requests. ``engine`` loads and generates, ``batching`` runs one generation thread,
``routes`` answers /v1/models, /v1/chat/completions and /v1/completions, ``app`` wires them."""
