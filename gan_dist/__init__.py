"""gan-dist: distributed GAN training on Ray, PyTorch DDP (through Accelerate) and WebDataset."""

__version__ = "0.1.0"
