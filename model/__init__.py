"""Training side (torch only): the networks of both papers, the loss, datasets, training."""
