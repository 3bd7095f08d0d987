"""parti family."""
