"""trustfeed.serving."""
