"""Offline work over predictions and run folders (metrics, reports); never imports debiaspl.engine."""
