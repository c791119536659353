"""Answering a question: retrieval, the prompt, the model call and the retrieval-only fallback."""
