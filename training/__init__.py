"""trustfeed.training."""
