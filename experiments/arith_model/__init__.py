"""In-house GPT-NeoX trained on the paper's arithmetic task (issue #5)."""
