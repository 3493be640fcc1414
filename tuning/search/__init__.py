"""The search: `python -m tuning.search` (cli.py) drives one `Experiment` (experiment.py) whose
Tuner (tuner.py) runs the trainable (trainable.py) under OptunaSearch (searcher.py), the
intensification stage (stage.py), ASHA (scheduler.py), checkpoint retention (retention.py) and
the progress line (progress.py), on a Ray cluster it starts or joins (cluster.py)."""
