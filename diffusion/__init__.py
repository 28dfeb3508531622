"""Diffusion transformers (DiT, Switch-DiT) in diffusers' conventions.

Models here import torch, diffusers and ``kernels`` only: no Ray, no MLflow.
"""
