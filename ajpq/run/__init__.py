"""Floor 6, running a search: Ray (evaluators, pool, resources), MLflow (writer, tracking), disk
(run folder, journal) and the driver, report, sweep, submit, sync and export of a run. The only
floor that starts Ray or talks to MLflow."""
