"""pacs-ai: the command line and the demo that put the node, workers and models together."""
