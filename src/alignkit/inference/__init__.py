"""Generation from the command line and Python (`alignkit generate`)."""
