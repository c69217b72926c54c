"""Floor 1, the compression core: plain PyTorch (no Ray, no MLflow, no RLlib).

Analyze a model (layers, coupling groups), build a joint pruning + mixed-precision policy, apply
it (fake quantization + masks), materialize it (channels removed), cost it, and push it inside a
budget. Usable from a notebook.
"""
