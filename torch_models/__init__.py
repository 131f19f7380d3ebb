"""PyTorch implementations of the model families and the torch training adapter."""
