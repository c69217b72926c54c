"""Floor 2, the task: data sets, the model zoo, training and the policy scorer. Plain PyTorch on
top of :mod:`ajpq.core`; no Ray, no MLflow."""
