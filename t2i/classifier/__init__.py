"""classifier family."""
