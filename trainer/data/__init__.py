"""Training data: the generic trajectory folder format, ground-truth synthesis, official dataset reader."""
