"""imagen family."""
