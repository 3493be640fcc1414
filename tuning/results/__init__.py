"""What reads a finished (or interrupted) experiment: its trials table and winner (tables.py),
the importance of each hyperparameter (importance.py), the baselines, evaluate_best's report and
plots, and the pyfunc model MLflow serves (serving.py)."""
