"""trustfeed.ranker."""
