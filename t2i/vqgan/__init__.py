"""vqgan family."""
