"""The search on Ray: the experiment's assembly, the trainable, the searcher over the Optuna study,
ASHA, the trial folders' logger and checkpoint retention, the confirmation's runs, the private Ray."""
