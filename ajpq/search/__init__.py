"""The search: compression env (floor 2), evaluator pool, MLflow tracking and the driver (floor 3)."""
