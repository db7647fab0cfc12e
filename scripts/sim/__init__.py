"""Simulations and measurements of a lake at sizes this machine cannot hold (docs/scaling.md)."""
