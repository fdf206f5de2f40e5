"""fmoe: stream Mixture-of-Experts models from SSD; grammar-constrained tool-calling agents."""
__version__ = "0.1.0"
