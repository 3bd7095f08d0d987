"""Continuous-time Gaussian diffusion in log-SNR, shared by Imagen and unCLIP."""
