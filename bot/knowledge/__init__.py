"""The knowledge base: reading documents into passages, the search index and its evaluation."""
