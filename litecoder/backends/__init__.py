"""LLM backends: where completions come from."""
