"""Applications over the aligned model: RAG, chain-of-thought, PAL (sandboxed), ReAct."""
