"""Pure functions over tensors and arrays: classification, distribution, calibration, cartography,
OOD, influence and selection math, and the figures drawn from them. Hooks, the engine and the
offline verbs import these; nothing here reads a run folder or imports the engine.
"""
